"""The connection layer of a worker node: connect, register, heartbeat, dispatch, reconnect (``/ws/node``).

:class:`NodeAgent` does the protocol's chores and leaves two questions to a subclass: what to register and heartbeat,
and what to do with a ``job_assign`` or a ``job_cancel``. :func:`trioscheduler.node.run` (the node SDK) and the
simulated node :class:`trioscheduler.sim.SimNode` are both built on it. Messages are plain dicts and JSON, not the
scheduler's codec: a node is a foreign peer of the scheduler.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

import attrs
import trio
import trio_websocket
from trio_websocket import ConnectionClosed

from trioscheduler.errors import TrioschedulerError
from trioscheduler.transport import TransportClosed

__all__ = [
    "CONNECTION_CLOSED",
    "DEFAULT_HEARTBEAT_INTERVAL_S",
    "DEFAULT_NODE_URL",
    "RECONNECTABLE",
    "WS_MAX_MESSAGE",
    "WS_RECEIVE_BUFFER",
    "Backoff",
    "MessageConnection",
    "NodeAgent",
    "RegistrationRefused",
    "describe_exception",
]

logger = logging.getLogger(__name__)

DEFAULT_NODE_URL = "ws://127.0.0.1:5010/ws/node"
DEFAULT_HEARTBEAT_INTERVAL_S = 15.0  # what the original node uses when nobody tells it otherwise
WS_RECEIVE_BUFFER = 65536  # trio-websocket's 4 KiB default slows bulk audio down
WS_MAX_MESSAGE = 16 * 2**20  # a job_assign carries a whole utterance of base64 audio


def _dumps(message: Mapping[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False)


class MessageConnection(Protocol):
    """The three calls a node needs from a socket: a ``trio_websocket.WebSocketConnection`` fits, and so does an
    end of ``trioscheduler.transport.memory_transport_pair()`` (socket-free tests)."""

    async def get_message(self) -> str | bytes: ...

    async def send_message(self, message: str) -> None: ...

    async def aclose(self) -> None: ...


#: What "the peer is gone" looks like on each transport a node accepts.
CONNECTION_CLOSED: tuple[type[Exception], ...] = (ConnectionClosed, TransportClosed)


class RegistrationRefused(TrioschedulerError):
    """The scheduler answered ``node_register`` with ``error``, or hung up before ``node_register_ack``."""



# --------------------------------------------------------------------------------------------------------------
# Reconnecting
# --------------------------------------------------------------------------------------------------------------


@attrs.frozen
class Backoff:
    """Delays between reconnects: ``min_s`` doubling up to ``max_s``, each scaled by a random factor within
    ``[1 - jitter, 1]`` so that nodes cut off together do not come back together. It restarts from ``min_s``
    after every registration."""

    min_s: float = attrs.field(default=0.5, validator=attrs.validators.gt(0.0))
    max_s: float = attrs.field(default=30.0, validator=attrs.validators.gt(0.0))
    jitter: float = attrs.field(default=0.5, validator=[attrs.validators.ge(0.0), attrs.validators.le(1.0)])

    def delays(self, rng: random.Random) -> Iterable[float]:
        """The delays of consecutive failed attempts, without end."""
        base = self.min_s
        while True:
            yield base * (1.0 - self.jitter * rng.random())
            base = min(self.max_s, base * 2)


class _Started:
    """``task_status`` for one connection of a reconnecting node: notes whether it registered, and passes only
    the first registration on to the caller's ``task_status``."""

    def __init__(self, outer: trio.TaskStatus[str], already: bool) -> None:
        self.outer = outer
        self.fired = already
        self.registered = False

    def started(self, value: str) -> None:
        self.registered = True
        if not self.fired:
            self.fired = True
            self.outer.started(value)


def describe_exception(exc: BaseException) -> str:
    """One line for a log: what ended a node's connection."""
    if isinstance(exc, TransportClosed):
        return "connection closed"
    if isinstance(exc, ConnectionClosed):
        reason = exc.reason
        return f"connection closed ({getattr(reason, 'code', '?')} {getattr(reason, 'name', '')})".rstrip()
    detail = str(exc) or (f"{type(exc.__cause__).__name__}: {exc.__cause__}" if exc.__cause__ else "")
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__


#: What ends one connection attempt of a reconnecting node without ending the node.
RECONNECTABLE: tuple[type[Exception], ...] = (
    OSError, trio_websocket.HandshakeError, RegistrationRefused, ConnectionClosed, TransportClosed,
)


# --------------------------------------------------------------------------------------------------------------
# The connection layer
# --------------------------------------------------------------------------------------------------------------


class NodeAgent:
    """Connect, register, heartbeat, dispatch ``job_assign``/``job_cancel``, reconnect. Subclasses say what they
    register and heartbeat (:meth:`register_message`, :meth:`heartbeat_message`) and what a job does
    (:meth:`on_job_assign`, :meth:`on_job_cancel`); they own the attributes ``node_id`` (sent in node_register
    when set, replaced by the ack's) and ``heartbeat_interval_s`` (set from the ack)."""

    node_id: str | None
    heartbeat_interval_s: float
    #: Sent as ``Authorization: Bearer <token>`` on the WebSocket handshake when set.
    token: str | None = None
    #: Raised when registration fails; a subclass may name its own subclass of RegistrationRefused.
    refused: type[RegistrationRefused] = RegistrationRefused

    # ---- what a subclass says --------------------------------------------------------------------------------

    def register_message(self) -> dict[str, Any]:
        raise NotImplementedError

    def heartbeat_message(self) -> dict[str, Any]:
        raise NotImplementedError

    def heartbeat_period(self) -> float:
        """Seconds between heartbeats on the current connection."""
        return self.heartbeat_interval_s

    async def on_job_assign(self, conn: MessageConnection, message: dict[str, Any], nursery: trio.Nursery) -> bool:
        """Take one ``job_assign``; start its work in ``nursery`` (the connection's). False ends the connection."""
        raise NotImplementedError

    def on_job_cancel(self, message: dict[str, Any]) -> None:
        """A ``job_cancel`` arrived."""

    def on_registered(self, node_id: str) -> None:
        """The scheduler acknowledged this connection's registration."""

    def on_heartbeat_sent(self) -> None:
        """One heartbeat went out."""

    def on_connection_end(self) -> None:
        """The connection ended; the jobs started in its nursery are cancelled already."""

    def on_connected(self, conn: MessageConnection | None) -> None:
        """``conn`` is the connection in use now (None: none)."""

    # ---- sending and receiving -------------------------------------------------------------------------------

    async def send(self, conn: MessageConnection, message: dict[str, Any], *, swallow_closed: bool = True) -> bool:
        """Send one message; False if the connection is gone (the receive loop notices and ends the connection)."""
        try:
            await conn.send_message(_dumps(message))
        except CONNECTION_CLOSED:
            if not swallow_closed:
                raise
            return False
        return True

    async def receive(self, conn: MessageConnection) -> dict[str, Any] | None:
        """One decoded message, or None for frames the protocol says to ignore (binary, bad JSON, not an object)."""
        raw = await conn.get_message()
        if isinstance(raw, bytes):
            logger.warning("node %s: ignoring a binary frame", self.node_id)
            return None
        try:
            message = json.loads(raw)
        except ValueError:
            logger.warning("node %s: ignoring a frame that is not JSON", self.node_id)
            return None
        if not isinstance(message, dict):
            logger.warning("node %s: ignoring a JSON frame that is not an object", self.node_id)
            return None
        return message

    # ---- one connection --------------------------------------------------------------------------------------

    def handshake_headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"Authorization", f"Bearer {self.token}".encode())] if self.token else []

    async def run_once(
        self, url: str = DEFAULT_NODE_URL, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Connect once and serve until the connection ends; ``task_status.started(node_id)`` once registered."""
        async with trio_websocket.open_websocket_url(
            url, receive_buffer_size=WS_RECEIVE_BUFFER, max_message_size=WS_MAX_MESSAGE,
            extra_headers=self.handshake_headers(),
        ) as ws:
            await self.serve(ws, task_status=task_status)

    async def serve(
        self, conn: MessageConnection, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Register on ``conn``, then heartbeat and answer jobs until the peer closes (returns normally).

        Raises :attr:`refused` if the scheduler answers the registration with ``error`` or closes first.
        Jobs still running when the connection ends are cancelled, as they would be by a node that lost its socket.
        """
        node_id = await self._register(conn)
        task_status.started(node_id)
        self.on_connected(conn)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._heartbeat_loop, conn)
                try:
                    await self._receive_loop(conn, nursery)
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            self.on_connected(None)
            self.on_connection_end()

    async def _register(self, conn: MessageConnection) -> str:
        try:
            await self.send(conn, self.register_message(), swallow_closed=False)
            while True:
                message = await self.receive(conn)
                if message is None:
                    continue
                kind = message.get("type")
                if kind == "node_register_ack":
                    break
                if kind == "error":
                    raise self.refused(f"registration refused: {message.get('code')}: {message.get('message')}")
                logger.debug("node %s: ignoring %s before node_register_ack", self.node_id, kind)
        except CONNECTION_CLOSED as exc:
            raise self.refused(f"connection closed before node_register_ack ({describe_exception(exc)})") from exc
        node_id = message.get("node_id") or self.node_id
        if not isinstance(node_id, str) or not node_id:
            raise self.refused("node_register_ack without node_id")
        self.node_id = node_id
        interval = message.get("heartbeat_interval_seconds")
        if isinstance(interval, (int, float)) and not isinstance(interval, bool) and 0 < interval < math.inf:
            self.heartbeat_interval_s = float(interval)
        self.on_registered(node_id)
        return node_id

    async def _heartbeat_loop(self, conn: MessageConnection) -> None:
        interval = self.heartbeat_period()
        next_at = trio.current_time()
        while True:  # one right after the ack, as the original node does, then on a fixed grid
            if not await self.send(conn, self.heartbeat_message()):
                return
            self.on_heartbeat_sent()
            next_at += interval
            await trio.sleep_until(next_at)

    async def _receive_loop(self, conn: MessageConnection, nursery: trio.Nursery) -> None:
        while True:
            try:
                message = await self.receive(conn)
            except CONNECTION_CLOSED:
                return
            if message is None:
                continue
            kind = message.get("type")
            if kind == "job_assign":
                if not await self.on_job_assign(conn, message, nursery):
                    return
            elif kind == "job_cancel":
                self.on_job_cancel(message)
            elif kind == "node_control" and message.get("command") == "shutdown":
                logger.info("node %s: shutdown requested (%s)", self.node_id, message.get("reason"))
                await conn.aclose()
                return
            elif kind == "error":
                logger.warning(
                    "node %s: scheduler error %s: %s", self.node_id, message.get("code"), message.get("message")
                )
            else:
                logger.debug("node %s: ignoring %s", self.node_id, kind)

    # ---- reconnecting ----------------------------------------------------------------------------------------

    async def run_forever(
        self,
        url: str = DEFAULT_NODE_URL,
        *,
        backoff: Backoff | None = None,
        rng: random.Random | None = None,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve, and reconnect under the same node_id whenever the connection ends or cannot be made, waiting
        per ``backoff`` (restarted after each registration). ``task_status`` fires on the first registration."""
        backoff = backoff if backoff is not None else Backoff()
        rng = rng if rng is not None else random.Random()
        delays = iter(backoff.delays(rng))
        fired = False
        while True:
            status = _Started(task_status, fired)
            try:
                await self.run_once(url, task_status=status)  # type: ignore[arg-type]
            except RECONNECTABLE as exc:
                what = describe_exception(exc)
            else:
                what = "connection ended"
            fired = status.fired
            if status.registered:
                delays = iter(backoff.delays(rng))
            delay = next(delays)
            logger.warning("node %s: %s; reconnecting in %.2f s", self.node_id, what, delay)
            await trio.sleep(delay)
