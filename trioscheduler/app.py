"""The scheduler without its listeners: the registry task plus one handler per connection kind.

Any transport can feed it (the door's WebSocket, trioscheduler/server/websocket.py; in-memory pairs for tests).
An unexpected exception in a connection is logged and counted and ends that connection only. A node runs in its
own nursery; a session is its handler task plus, while it has something to write, a writer in the one nursery
``run`` holds for all sessions.
"""

from __future__ import annotations

import collections
import itertools
import logging
import random
from typing import TYPE_CHECKING, Any

import attrs
import trio

from trioscheduler.auth import Credentials
from trioscheduler.config import Config
from trioscheduler.drain import DrainControl
from trioscheduler.logs import emit
from trioscheduler.principal import ANONYMOUS, Principal
from trioscheduler.protocol.errors import CloseCode
from trioscheduler.registry.actor import Registry
from trioscheduler.registry.requests import RegistryClient, open_registry_channel
from trioscheduler.rooms.owner import open_rooms
from trioscheduler.server.node_socket import NodeConnection
from trioscheduler.server.session_socket import SessionConnection, SessionMetrics
from trioscheduler.session_directory import SessionDirectory
from trioscheduler.transport import Transport

if TYPE_CHECKING:
    from trioscheduler.gateway import Gateway

log = logging.getLogger("trioscheduler")


@attrs.define
class EdgeMetrics:
    """What the door (server/listener.py) saw: WebSocket connections open now, and events by name (refusals, handshake
    timeouts, connection errors)."""

    #: WebSocket connections (sessions and nodes) past the door's capacity check and not yet closed.
    open: int = 0
    counters: collections.Counter[str] = attrs.field(factory=collections.Counter)


class Scheduler:
    def __init__(self, config: Config, *, rng: random.Random | None = None) -> None:
        self.config = config
        #: The digests of ``[auth]`` (nothing in clear), for the HTTP API's admin guard.
        self.credentials = Credentials.from_config(config.auth)
        send, receive = open_registry_channel(config.scheduler.registry_inbox_size)
        self.registry = Registry(config, receive, rng=rng)
        self.client = RegistryClient(send, self.registry.notices)
        self.sessions = SessionMetrics()
        #: Session ids of all session sockets, and sessions per tenant.
        self.session_directory = SessionDirectory(config.limits)
        #: The room owner task (run beside the registry) and the client the sessions reach it through.
        self.room_owner, self.rooms = open_rooms(config.rooms)
        self.connections_crashed = 0
        self.edge = EdgeMetrics()
        self._conn_ids = itertools.count(1)
        self.nodes_connected = 0
        #: Counters of the node sockets (their message budget), shared by all of them.
        self.node_counters: collections.Counter[str] = collections.Counter()
        self._session_tasks: trio.Nursery | None = None
        #: The REST/stream gateway when serve() runs one (its counters join the stats).
        self.gateway: Gateway | None = None
        #: Whole-scheduler drain (trioscheduler/drain.py); /ready reads it, the door and the sessions obey it.
        self.drain = DrainControl(config.server.drain_timeout_seconds)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The registry task; everything else talks to it through ``self.client``. Also the nursery the sessions'
        writers run in while they have work (one nursery, not one per session: an idle session costs less)."""
        async with trio.open_nursery() as session_tasks:
            self._session_tasks = session_tasks
            await session_tasks.start(self.room_owner.run)
            try:
                await self.registry.run(task_status=task_status)
            finally:
                self._session_tasks = None

    async def handle_session(self, transport: Transport, principal: Principal = ANONYMOUS) -> None:
        # The try is here rather than in a shared wrapper coroutine: a suspended coroutine frame is ~250 bytes
        # for every idle session, for as long as its socket is open.
        try:
            tasks = self._session_tasks
            if tasks is not None:
                await SessionConnection(transport, self.client, self.config, self.sessions, tasks, principal,
                                        self.session_directory, self.rooms, drain=self.drain).run()
                return
            async with trio.open_nursery() as tasks:  # before run() (tests that hold the registry back)
                await SessionConnection(transport, self.client, self.config, self.sessions, tasks, principal,
                                        self.session_directory, self.rooms, drain=self.drain).run()
                tasks.cancel_scope.cancel()
        except Exception:
            await self._crashed("session", transport)

    async def handle_node(self, transport: Transport, principal: Principal = ANONYMOUS) -> None:
        self.nodes_connected += 1
        try:
            await NodeConnection(transport, self.client, self.config, next(self._conn_ids), principal,
                                 self.node_counters).run()
        except Exception:
            await self._crashed("node", transport)
        finally:
            self.nodes_connected -= 1

    async def _crashed(self, kind: str, transport: Transport) -> None:
        """Called in the ``except`` of a handler: log and count the crash, close that connection only."""
        self.connections_crashed += 1
        log.exception("%s connection from %s crashed; closing it", kind, transport.peer)
        with trio.CancelScope(shield=True), trio.move_on_after(1):
            await transport.aclose(CloseCode.INTERNAL_ERROR, "internal error")

    async def stats(self, timeout: float = 5.0) -> dict[str, Any] | None:
        snapshot = await self.client.snapshot(timeout)
        if snapshot is None:
            return None
        snapshot["sessions"] = {"active": self.sessions.active, "counters": dict(self.sessions.counters)}
        snapshot["node_connections"] = self.nodes_connected
        snapshot["node_sockets"] = {"counters": dict(self.node_counters)}
        snapshot["connections_crashed"] = self.connections_crashed
        snapshot["edge"] = {"open": self.edge.open, "counters": dict(self.edge.counters)}
        snapshot["draining"] = self.drain.draining
        if self.gateway is not None:
            snapshot["gateway"] = {"running": self.gateway.running, "counters": dict(self.gateway.counters)}
        snapshot["rooms"] = self.room_owner.snapshot()
        return snapshot


def log_listening(what: str, url: str) -> None:
    emit(log, logging.INFO, "listening", endpoint=what, url=url)
