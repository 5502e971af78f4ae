"""trioscheduler: the central scheduler of a real-time speech-translation network, on Trio.

Clients stream speech over ``/ws/session``; worker nodes register over ``/ws/node``; one registry task owns all node,
pool and job state. See docs/architecture.md for the map.
"""

__version__ = "0.1.0"
