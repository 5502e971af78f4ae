"""One node socket: a reader that forwards what the node says to the registry, and a writer that drains the
node's outbox (job_assign, job_cancel, acks) onto the socket.

Heartbeats are coalesced in the link's mailbox (see NodeLink): at most one per node waits in the registry's inbox,
so a heartbeat storm cannot crowd out job requests. The node's capability is derived here, within ``[limits]``,
and handed to the registry ready to index.

Guarantees: a socket without a successful node_register within ``limits.handshake_timeout_seconds`` is closed
with HANDSHAKE_TIMEOUT; a node whose outbox (``scheduler.node_outbox_size``) is full is closed with
SLOW_CONSUMER and its jobs fail over; whenever the handler ends, however, the registry is told the node is gone.
Every frame is charged to the socket's ``TokenBucket`` before it is decoded: over ``limits.node_messages_per_second``
it is dropped (RATE_LIMITED), and a debt over ``limits.node_messages_burst`` closes the socket
(CloseCode.RATE_LIMITED), so no node can spend more than its budget of registry turns.
"""

from __future__ import annotations

import collections
import contextlib
import logging
from typing import Any

import trio

from trioscheduler.config import Config
from trioscheduler.logs import emit
from trioscheduler.policy.capability import CAPABILITY_FIELDS, claim_of_heartbeat
from trioscheduler.principal import ANONYMOUS, Principal
from trioscheduler.protocol import messages as m
from trioscheduler.protocol.codec import EncodeError, encode, node_codec
from trioscheduler.protocol.errors import CloseCode, ErrorCode, ProtocolError
from trioscheduler.ratelimit import ACCEPT, REFUSE, TokenBucket, closing_reason, refusal_text
from trioscheduler.registry.actor import Dispatch
from trioscheduler.registry.requests import CloseLink, NodeLink, RegistryClient
from trioscheduler.transport import Transport, TransportClosed

log = logging.getLogger("trioscheduler.server.node_socket")
INFO, WARNING, DEBUG, ERROR = logging.INFO, logging.WARNING, logging.DEBUG, logging.ERROR
#: How long a closing handshake may take before the TCP connection is dropped (a peer that does not read never
#: answers the close frame).
CLOSE_GRACE_SECONDS = 1.0


class NodeOutbox:
    """The node's bounded outbox as the registry sees it; ``send_nowait`` never waits.

    A job_assign with nothing queued ahead of it is written to the socket at once when the socket can take it
    without waiting (``Transport.send_nowait``): the node's writer task is not woken for it. Everything else goes
    into the channel the writer drains, in order. When the channel is full, ``overflowed`` is set (the connection
    then closes with SLOW_CONSUMER) and trio.WouldBlock is raised, so the registry treats the node as lost. It holds
    no reference to the connection (no reference cycle)."""

    __slots__ = ("_channel", "overflowed", "_transport", "backlog", "node_id", "_closed")

    def __init__(self, channel: trio.MemorySendChannel[Any], overflowed: trio.Event, transport: Transport) -> None:
        self._channel = channel
        self.overflowed = overflowed
        self._transport = transport
        #: Items in the channel or in the writer's hands: a job_assign is written at once only when it is 0.
        self.backlog = 0
        #: The node's id once registered (for the job_dispatched line).
        self.node_id: str | None = None
        self._closed = False

    def send_nowait(self, value: Any) -> None:
        if type(value) is Dispatch and not self.backlog and not self._closed and self._write_now(value):
            return
        try:
            self._channel.send_nowait(value)
        except trio.WouldBlock:
            self.overflowed.set()
            raise
        self.backlog += 1

    def _write_now(self, item: Dispatch) -> bool:
        """Write the job_assign now, or return False (the writer then sends it, or fails its job if it cannot be
        encoded). The encoded frame rides on ``item`` either way."""
        try:
            item.payload = encode(item.assign)
        except EncodeError:
            return False
        transport = self._transport
        if not transport.send_nowait(item.payload):
            return False
        if transport.pending:
            self._channel.send_nowait(FLUSH)  # the channel is empty (backlog 0): there is room
            self.backlog += 1
        job_dispatched(item, self.node_id)
        return True

    def stop_writing_now(self) -> None:
        """The connection is closing: nothing more is written by ``send_nowait`` (what it queues is never
        written)."""
        self._closed = True

    def close(self) -> None:
        self._closed = True
        self._channel.close()


#: Outbox item: write what the socket still holds of a frame begun by ``NodeOutbox.send_nowait``.
FLUSH = "flush"


def job_dispatched(item: Dispatch, node_id: str | None) -> None:
    """The job_assign of ``item`` is written: its stage is stamped (and logged at debug)."""
    assign = item.assign
    now = trio.current_time()
    item.stages.dispatched(now, assign.attempt_id)
    if log.isEnabledFor(DEBUG):
        emit(log, DEBUG, "job_dispatched", session_id=assign.session_id, utterance_index=assign.utterance_index,
             job_id=assign.job_id, node_id=node_id, trace_id=assign.trace_id, attempt_id=assign.attempt_id,
             elapsed_ms=round((now - item.finalized_at) * 1000.0, 3))


class NodeConnection:
    def __init__(self, transport: Transport, registry: RegistryClient, config: Config, conn_id: int,
                 principal: Principal = ANONYMOUS, counters: collections.Counter[str] | None = None) -> None:
        self._transport = transport
        #: The scheduler's node-socket counters (``Scheduler.node_counters``), shared by every node socket.
        self._counters: collections.Counter[str] = counters if counters is not None else collections.Counter()
        self._bucket = TokenBucket(config.limits.node_messages_per_second, config.limits.node_messages_burst,
                                   trio.current_time())
        #: Who this socket acts as (set by the door; ANONYMOUS when authentication is off).
        self._principal = principal
        self._registry = registry
        self._config = config
        self._codec = node_codec(config.limits)
        outbox_send, self._outbox = trio.open_memory_channel[Any](config.scheduler.node_outbox_size)
        #: Set by _request_close, or by the outbox when it overflows (then _closing is still None).
        self._close_requested = trio.Event()
        self._outbox_port = NodeOutbox(outbox_send, self._close_requested, transport)
        self._link = NodeLink(conn_id, self._outbox_port, transport.peer, principal.credential)
        self._node_id: str | None = None
        self._registered = trio.Event()
        self._heartbeat_waiting = trio.Event()
        self._close_reason = "socket_closed"
        #: The close code and the reason sent in the close frame, once this side decided to close.
        self._closing: tuple[CloseCode, str] | None = None
        #: The capability part of the last heartbeat as sent: when a heartbeat repeats it, only liveness and load
        #: change, and the capability lists are not decoded again. Storms are mostly such repeats.
        self._last_capability: tuple[Any, ...] | None = None
        #: Frames this connection had refused by its message budget.
        self._bucket_refusals = 0

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._writer, nursery)
                nursery.start_soon(self._forward_coalesced_heartbeats)
                nursery.start_soon(self._handshake_deadline)
                nursery.start_soon(self._close_when_requested, nursery.cancel_scope)
                try:
                    await self._reader()
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            self._link.outbox.close()
            # Always, registered or not: a registration the registry has not applied yet is refused after this.
            self._registry.node_gone_nowait(self._link, self._close_reason)
            with trio.CancelScope(shield=True):
                if self._closing is not None:
                    code, reason = self._closing
                    emit(log, WARNING, "node_connection_closing", node_id=self._node_id, reason=self._close_reason,
                         close_code=int(code), peer=self._transport.peer)
                    with trio.move_on_after(CLOSE_GRACE_SECONDS):
                        await self._transport.aclose(code, reason)
            if self._node_id is not None:
                emit(log, INFO, "node_disconnected", node_id=self._node_id, reason=self._close_reason,
                     peer=self._transport.peer)

    def _request_close(self, code: CloseCode, reason: str, wire_reason: str) -> None:
        """Close the socket with ``code``: the connection's tasks are cancelled (a writer blocked on a peer that
        does not read included), then the close frame is sent. The first request wins."""
        if self._closing is None:
            self._closing = (code, wire_reason)
            self._close_reason = reason
        self._outbox_port.stop_writing_now()
        self._close_requested.set()

    async def _close_when_requested(self, tasks: trio.CancelScope) -> None:
        await self._close_requested.wait()
        if self._closing is None:  # the outbox overflowed
            self._request_close(CloseCode.SLOW_CONSUMER, "slow_consumer",
                                f"outbox full ({self._config.scheduler.node_outbox_size} messages): read your socket")
        tasks.cancel()

    async def _handshake_deadline(self) -> None:
        timeout = self._config.limits.handshake_timeout_seconds
        with trio.move_on_after(timeout):
            await self._registered.wait()
            return
        emit(log, WARNING, "node_handshake_timeout", peer=self._transport.peer, timeout_s=timeout)
        self._request_close(CloseCode.HANDSHAKE_TIMEOUT, "handshake_timeout",
                            f"no node_register within {timeout:g} s")

    async def _reader(self) -> None:
        while True:
            try:
                frame = await self._transport.get_message()
            except TransportClosed:
                return
            received_at = trio.current_time()
            verdict = self._bucket.take(received_at)
            if verdict != ACCEPT:
                if verdict == REFUSE:
                    self._rate_limited()
                    continue
                self._rate_limit_close()
                return
            try:
                message = self._decode(frame)
                await self._handle(message, received_at)
            except ProtocolError as exc:
                emit(log, WARNING, "node_message_rejected", node_id=self._node_id, code=exc.code,
                     error=exc.message, peer=self._transport.peer)
                self._send(exc.to_message())

    def _rate_limited(self) -> None:
        """The frame came over ``limits.node_messages_per_second``: it is dropped unread and the node told so. The
        first refusal on a connection is logged (the counter has them all)."""
        limits = self._config.limits
        self._counters["node_messages_rate_limited"] += 1
        if self._bucket_refusals == 0:
            emit(log, WARNING, "node_rate_limited", node_id=self._node_id, peer=self._transport.peer,
                 why=f"more than limits.node_messages_per_second ({limits.node_messages_per_second:g}); "
                     "its messages are dropped until it slows down")
        self._bucket_refusals += 1
        self._send(ProtocolError(
            refusal_text(limits.node_messages_per_second, limits.node_messages_burst), code=ErrorCode.RATE_LIMITED,
        ).to_message())

    def _rate_limit_close(self) -> None:
        limits = self._config.limits
        self._counters["nodes_closed_rate_limited"] += 1
        emit(log, WARNING, "node_rate_limited_closing", node_id=self._node_id, peer=self._transport.peer,
             refused=self._bucket_refusals,
             why=closing_reason("limits.node_messages_per_second", limits.node_messages_per_second,
                                "limits.node_messages_burst", limits.node_messages_burst, int(CloseCode.RATE_LIMITED)))
        self._request_close(CloseCode.RATE_LIMITED, "rate_limited", "rate limited")

    def _decode(self, frame: str | bytes) -> Any:
        data = self._codec.parse(frame)
        if data.get("type") != "node_heartbeat":
            return self._codec.structure_typed(data)
        capability = tuple(map(data.get, CAPABILITY_FIELDS))
        if capability == self._last_capability and self._node_id is not None:
            # Only liveness and load changed: the rest is decoded as strictly as any message (a bad
            # resource_usage is an error naming its field), just without the capability lists.
            return self._codec.structure_typed({k: v for k, v in data.items() if k not in CAPABILITY_FIELDS})
        message = self._codec.structure_typed(data)
        self._last_capability = capability
        return message

    async def _handle(self, message: Any, received_at: float) -> None:
        if isinstance(message, m.NodeRegister):
            answer = await self._registry.register(self._link, message, self._config.limits)
            if isinstance(answer, ProtocolError):
                if answer.code == ErrorCode.NODE_ID_IN_USE:
                    # The error, then the close, in that order through the outbox.
                    emit(log, WARNING, "node_message_rejected", node_id=message.node_id, code=answer.code,
                         error=answer.message, peer=self._transport.peer)
                    self._send(answer.to_message())
                    self._send(CloseLink("node_id_in_use", CloseCode.NODE_ID_IN_USE))
                    return
                raise answer
            if answer is None:
                raise ProtocolError("registration failed inside the scheduler", code=ErrorCode.INTERNAL_ERROR)
            self._node_id = self._outbox_port.node_id = answer
            self._last_capability = None  # the next heartbeat is compared with this registration
            self._registered.set()
            return
        if self._node_id is None:
            self._last_capability = None
            raise ProtocolError(f"{message.TYPE} before node_register: register first", field="type")
        if isinstance(message, m.NodeHeartbeat):
            try:
                claim, refused = claim_of_heartbeat(self._link.claim, message, self._config.limits), None
            except ProtocolError as exc:
                claim, refused = None, exc
            if not self._registry.post_heartbeat(self._link, message, received_at, claim):
                self._heartbeat_waiting.set()  # the inbox is full: the forwarder waits for room
            if refused is not None:
                self._last_capability = None  # a repeat of a refused claim is checked (and refused) again
                raise refused
        elif isinstance(message, m.JobResult):
            await self._registry.result(self._link, message)
        elif isinstance(message, m.AsrPartialIn):
            await self._registry.partial(self._link, message)
        elif isinstance(message, (m.JobAck, m.JobStarted)):
            emit(log, DEBUG, f"node_{message.TYPE}", node_id=self._node_id, job_id=message.job_id,
                 attempt_id=message.attempt_id)
            await self._registry.accepted(self._link, message.job_id, message.attempt_id)
        else:  # node_error, error
            emit(log, WARNING, "node_reported_error", node_id=self._node_id, code=message.code,
                 error=message.message)

    async def _forward_coalesced_heartbeats(self) -> None:
        while True:
            await self._heartbeat_waiting.wait()
            self._heartbeat_waiting = trio.Event()
            await self._registry.notify_heartbeat(self._link)

    def _send(self, message: Any) -> None:
        """Best effort: an answer that does not fit in the outbox is dropped (the outbox's overflow closes the
        connection as a slow consumer)."""
        with contextlib.suppress(trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            self._link.outbox.send_nowait(message)

    async def _unencodable_assign(self, assign: m.JobAssign, exc: EncodeError) -> None:
        """A job_assign that cannot be encoded fails that job (as if the node had answered INTERNAL_ERROR, so it
        fails over and ends in an error for its utterance), never this connection."""
        emit(log, ERROR, "message_unencodable", kind=assign.TYPE, node_id=self._node_id, job_id=assign.job_id,
             session_id=assign.session_id, utterance_index=assign.utterance_index, error=str(exc))
        await self._registry.result(self._link, m.JobResult(
            job_id=m.Id(assign.job_id), success=False, attempt_id=m.Count(assign.attempt_id),
            error=m.ResultError(code=m.Code(ErrorCode.INTERNAL_ERROR), message="job_assign could not be encoded")))

    async def _writer(self, nursery: trio.Nursery) -> None:
        """Drains the outbox: everything queued is written in one go (the transport takes its own checkpoints, at
        least one per FAIR_OPERATIONS writes), so a node whose socket fell behind catches up as fast as the socket
        allows, not one frame per pass of the run loop."""
        outbox = self._outbox_port
        receive_nowait = self._outbox.receive_nowait
        try:
            async for item in self._outbox:
                while True:
                    try:
                        if type(item) is CloseLink:
                            self._request_close(item.code, item.reason, item.reason)
                            return
                        await self._write(item)
                    finally:
                        outbox.backlog -= 1
                    try:
                        item = receive_nowait()
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
        except TransportClosed:
            pass
        nursery.cancel_scope.cancel()

    async def _write(self, item: Any) -> None:
        if type(item) is Dispatch:
            payload = item.payload
            if payload is None:
                try:
                    payload = encode(item.assign)
                except EncodeError as exc:
                    await self._unencodable_assign(item.assign, exc)
                    return
            await self._transport.send_message(payload)
            job_dispatched(item, self._node_id)
        elif item is FLUSH:
            await self._transport.flush()
        else:
            try:
                payload = encode(item)
            except EncodeError as exc:
                emit(log, ERROR, "message_unencodable", kind=item.TYPE, node_id=self._node_id, error=str(exc))
                return
            await self._transport.send_message(payload)
