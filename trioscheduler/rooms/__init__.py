"""Rooms (issue 14 point 1): members of a room hear each other's utterances translated into their own language.

``owner`` is the one task that owns every room; ``policy`` the pure rules; ``delivery`` the per-listener ordered
delivery of outcomes; ``session_side`` a session socket's part; ``codes`` the ``room_error`` codes.
"""
