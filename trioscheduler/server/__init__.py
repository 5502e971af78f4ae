"""The daemon's server side: the listeners, and one task per node or session socket.

``trioscheduler.node`` and ``trioscheduler.client`` are the SDKs a worker node or a client is written against; the
modules here are their counterparts inside the scheduler.
"""
