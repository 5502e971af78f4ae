"""One node socket: a reader that forwards what the node says to the registry, and a writer that drains the
node's outbox (job_assign, job_cancel, acks) onto the socket.

Heartbeats are coalesced in the link's mailbox (see NodeLink): at most one per node waits in the registry's inbox,
so a heartbeat storm cannot crowd out job requests (the field report's lock contention, impossible by construction).
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from trioscheduler.config import Config
from trioscheduler.logs import emit
from trioscheduler.protocol import messages as m
from trioscheduler.protocol.codec import NODE_CODEC, encode
from trioscheduler.protocol.errors import ErrorCode, ProtocolError
from trioscheduler.registry.actor import CAPABILITY_FIELDS, Dispatch
from trioscheduler.registry.requests import CloseLink, NodeLink, RegistryClient
from trioscheduler.transport import Transport, TransportClosed

log = logging.getLogger("trioscheduler.node")
INFO, WARNING, DEBUG = logging.INFO, logging.WARNING, logging.DEBUG


class NodeConnection:
    def __init__(self, transport: Transport, registry: RegistryClient, config: Config, conn_id: int) -> None:
        self._transport = transport
        self._registry = registry
        self._config = config
        outbox_send, self._outbox = trio.open_memory_channel[Any](config.scheduler.node_outbox_size)
        self._link = NodeLink(conn_id, outbox_send, transport.peer)
        self._node_id: str | None = None
        self._heartbeat_waiting = trio.Event()
        self._close_reason = "socket_closed"
        #: The capability part of the last heartbeat as sent: when a heartbeat repeats it, only liveness and load
        #: change, and the full (strict, ~40 µs) decode is skipped. Storms are mostly such repeats.
        self._last_capability: tuple[Any, ...] | None = None

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._writer, nursery)
                nursery.start_soon(self._forward_coalesced_heartbeats)
                try:
                    await self._reader()
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            self._link.outbox.close()
            if self._node_id is not None:
                self._registry.node_gone_nowait(self._link, self._close_reason)
                emit(log, INFO, "node_disconnected", node_id=self._node_id, reason=self._close_reason,
                     peer=self._transport.peer)

    async def _reader(self) -> None:
        while True:
            try:
                frame = await self._transport.get_message()
            except TransportClosed:
                return
            received_at = trio.current_time()
            try:
                message = self._decode(frame)
                await self._handle(message, received_at)
            except ProtocolError as exc:
                emit(log, WARNING, "node_message_rejected", node_id=self._node_id, code=exc.code,
                     error=exc.message, peer=self._transport.peer)
                self._send(exc.to_message())

    def _decode(self, frame: str | bytes) -> Any:
        data = NODE_CODEC.parse(frame)
        if data.get("type") != "node_heartbeat":
            return NODE_CODEC.structure_typed(data)
        capability = tuple(map(data.get, CAPABILITY_FIELDS))
        if capability == self._last_capability and self._node_id is not None:
            # Only liveness and load changed: the rest is decoded as strictly as any message (a bad
            # resource_usage is an error naming its field), just without the capability lists.
            return NODE_CODEC.structure_typed({k: v for k, v in data.items() if k not in CAPABILITY_FIELDS})
        message = NODE_CODEC.structure_typed(data)
        self._last_capability = capability
        return message

    async def _handle(self, message: Any, received_at: float) -> None:
        if isinstance(message, m.NodeRegister):
            answer = await self._registry.register(self._link, message)
            if isinstance(answer, ProtocolError):
                raise answer
            if answer is None:
                raise ProtocolError("registration failed inside the scheduler", code=ErrorCode.INTERNAL_ERROR)
            self._node_id = answer
            return
        if self._node_id is None:
            raise ProtocolError(f"{message.TYPE} before node_register: register first", field="type")
        if isinstance(message, m.NodeHeartbeat):
            if not self._registry.post_heartbeat(self._link, message, received_at):
                self._heartbeat_waiting.set()  # the inbox is full: the forwarder waits for room
        elif isinstance(message, m.JobResult):
            await self._registry.result(self._link, message)
        elif isinstance(message, m.AsrPartialIn):
            await self._registry.partial(self._link, message)
        elif isinstance(message, (m.JobAck, m.JobStarted)):
            emit(log, DEBUG, f"node_{message.TYPE}", node_id=self._node_id, job_id=message.job_id,
                 attempt_id=message.attempt_id)
        else:  # node_error, error
            emit(log, WARNING, "node_reported_error", node_id=self._node_id, code=message.code,
                 error=message.message)

    async def _forward_coalesced_heartbeats(self) -> None:
        while True:
            await self._heartbeat_waiting.wait()
            self._heartbeat_waiting = trio.Event()
            await self._registry.notify_heartbeat(self._link)

    def _send(self, message: Any) -> None:
        try:
            self._link.outbox.send_nowait(message)
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def _writer(self, nursery: trio.Nursery) -> None:
        try:
            async for item in self._outbox:
                if type(item) is Dispatch:
                    await self._transport.send_message(encode(item.assign))
                    if log.isEnabledFor(INFO):
                        assign = item.assign
                        emit(log, INFO, "job_dispatched", session_id=assign.session_id,
                             utterance_index=assign.utterance_index, job_id=assign.job_id,
                             node_id=self._node_id, trace_id=assign.trace_id, attempt_id=assign.attempt_id,
                             elapsed_ms=round((trio.current_time() - item.finalized_at) * 1000.0, 3))
                elif type(item) is CloseLink:
                    self._close_reason = item.reason
                    emit(log, WARNING, "node_connection_closing", node_id=self._node_id, reason=item.reason)
                    await self._transport.aclose()
                    break
                else:
                    await self._transport.send_message(encode(item))
        except TransportClosed:
            pass
        nursery.cancel_scope.cancel()
