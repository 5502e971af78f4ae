"""The scheduler's side of one WebSocket: websockets' sans-I/O protocol over the socket the door accepted.

``open_upgrade`` answers the request head the door read; ``ServerWebSocket`` is the ``Transport`` of the open
connection. Guarantees:

- Messages, not frames: fragmented messages are reassembled; text arrives as ``str`` (UTF-8 checked: invalid → close
  1007), binary as ``bytes``. A message over ``max_message_bytes`` (bytes on the wire) is refused at the header of
  the frame that takes it over, before its payload is read (close 1009); a protocol error closes with 1002. After
  such a refusal the close frame goes out, then the socket is half-closed and what the peer still sends is read and
  dropped (at most ``REFUSAL_LINGER_SECONDS`` and ``REFUSAL_LINGER_BYTES``) before it closes, so the close frame is
  not lost to a TCP reset.
- Pings are answered; a close frame from the peer is answered and ends the connection; EOF or a reset ends it.
  Every way a connection ends reaches its user as ``TransportClosed``; ``aclose`` never raises.
- One reader at a time (``trio.BusyResourceError`` otherwise). Writes are serialised: frames (a message, a pong, the
  close frame) go out whole and in order, never interleaved. A send cancelled after part of its frame went out
  breaks the connection (the socket closes, the next send raises ``TransportClosed``); a send cancelled before its
  frame's first byte leaves the frame queued for the next write. Pongs queue behind a blocked write up to
  ``MAX_QUEUED_FRAMES`` (plus those of one read); then the reader waits for the write and the peer is not read.
- On a plain TCP socket a read or write the kernel can serve at once costs no task switch: the socket is read and
  written without blocking, and the task waits (``wait_readable`` / ``wait_writable``) only when it must. Each
  ``get_message`` and ``send_message`` still checks for cancellation first, and at least one in every
  ``FAIR_OPERATIONS`` consecutive operations that did not wait is a full checkpoint, so a peer that floods its socket
  cannot starve the other tasks. Over TLS the stream's own ``receive_some`` / ``send_all`` carry the bytes.
- ``send_nowait`` is for a task that must never wait (the registry hands a node its job this way): it writes the
  frame at once, or writes nothing and queues nothing (False, the caller then goes through the connection's
  writer), or writes its first part and leaves the rest ``pending`` for the connection's writer to ``flush``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct

import attrs
import trio
from websockets.datastructures import Headers
from websockets.frames import BINARY, CONT, TEXT, Frame
from websockets.http11 import Request
from websockets.protocol import OPEN, State
from websockets.server import ServerProtocol

from trioscheduler.protocol.errors import CloseCode
from trioscheduler.transport import TransportClosed

#: At most this many consecutive ``get_message`` / ``send_message`` calls that did not have to wait run without a
#: full checkpoint (a task switch); the next one takes it.
FAIR_OPERATIONS = 16
#: Frames the reader may leave queued (pongs, mostly) while another task holds the write lock; past it the reader
#: waits for the write, so a peer that sends pings but does not read is no longer read (TCP back-pressure).
MAX_QUEUED_FRAMES = 16
#: After a refused frame, how long and how much of what the peer still sends is read and dropped before closing.
REFUSAL_LINGER_SECONDS = 1.0
REFUSAL_LINGER_BYTES = 1 << 20
#: How long ``aclose`` waits for the peer's answer to our close frame before it closes the socket.
CLOSE_REPLY_SECONDS = 2.0
#: A close frame's payload is at most 125 bytes: the code (2) and the reason.
_MAX_CLOSE_REASON_BYTES = 123
_HEAD_END = b"\r\n\r\n"


class _ProtocolLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """websockets' per-connection log without its info lines ("connection open", "connection closed"): the door
    logs and counts connections itself. Warnings and errors go through."""

    def isEnabledFor(self, level: int) -> bool:
        return level >= logging.WARNING and self.logger.isEnabledFor(level)


_PROTOCOL_LOG = _ProtocolLog(logging.getLogger("trioscheduler.server.websocket"))  # stateless, shared


@attrs.frozen
class Upgrade:
    """An accepted upgrade: the protocol (open once ``response`` is sent), the 101 answer, and the bytes the peer
    sent after its request head."""

    protocol: ServerProtocol
    response: bytes
    rest: bytes


def open_upgrade(head: bytes, max_message_bytes: int) -> Upgrade | None:
    """websockets' 101 answer to the request ``head`` (as the door read it, possibly followed by frames), or None if
    it is not a WebSocket upgrade request. No extension and no subprotocol is negotiated; the answer names no
    server."""
    end = head.find(_HEAD_END)
    if end < 0:
        return None
    end += len(_HEAD_END)
    protocol = ServerProtocol(max_size=max_message_bytes, logger=_PROTOCOL_LOG)
    protocol.receive_data(head[:end])
    events = protocol.events_received()
    if len(events) != 1 or not isinstance(events[0], Request):
        return None
    request = events[0]
    response = protocol.accept(request)
    if response.status_code != 101:
        return None
    protocol.send_response(response)
    request.headers = Headers()  # the parser keeps the request for the connection's life; its headers are spent
    return Upgrade(protocol, b"".join(protocol.data_to_send()), head[end:])


def _text_header(size: int) -> bytes:
    """The header of one unmasked final text frame of ``size`` payload bytes (a server's frames are not masked)."""
    if size < 126:
        return bytes((0x81, size))
    if size < 65536:
        return struct.pack("!BBH", 0x81, 126, size)
    return struct.pack("!BBQ", 0x81, 127, size)


def _text_frame(payload: bytes) -> bytes:
    """One unmasked final text frame."""
    return _text_header(len(payload)) + payload


def _close_reason(reason: str) -> str:
    """``reason`` cut (at a character boundary) to what fits in a close frame."""
    encoded = reason.encode()
    if len(encoded) <= _MAX_CLOSE_REASON_BYTES:
        return reason
    return encoded[:_MAX_CLOSE_REASON_BYTES].decode("utf-8", "ignore")


class ServerWebSocket:
    """The ``Transport`` of one open server WebSocket; see the module docstring for its guarantees."""

    __slots__ = ("peer", "_stream", "_socket", "_protocol", "_receive_size", "_frames", "_parts", "_text",
                 "_outgoing", "_write_lock", "_quiet", "_reading", "_reader_left", "_local_close", "_refused",
                 "_broken", "_closed")

    def __init__(self, stream: trio.abc.Stream, protocol: ServerProtocol, peer: str, receive_size: int,
                 rest: bytes = b"") -> None:
        self.peer = peer
        self._stream = stream
        #: The TCP socket read and written without blocking; None over TLS (the stream carries the bytes).
        self._socket: trio.socket.SocketType | None = stream.socket if type(stream) is trio.SocketStream else None
        self._protocol = protocol
        self._receive_size = receive_size
        #: Frames parsed and not yet handled, last first.
        self._frames: list[Frame] = []
        #: The parts of a fragmented message so far (None between messages), and whether it is text.
        self._parts: list[bytes] | None = None
        self._text = False
        #: Frames to write, in order; b"" stands for the half-close, a memoryview for the rest of a frame that
        #: ``send_nowait`` began.
        self._outgoing: list[bytes | memoryview] = []
        self._write_lock = trio.Lock()
        #: Consecutive operations that did not wait (see FAIR_OPERATIONS).
        self._quiet = 0
        self._reading = False
        #: Set when a reader leaves, for an aclose waiting to read the peer's close reply itself.
        self._reader_left: trio.Event | None = None
        self._local_close = False
        self._refused = False
        self._broken = False
        self._closed = False
        if rest:
            self._feed(rest)

    # Reading.

    async def get_message(self) -> str | bytes:
        if self._quiet >= FAIR_OPERATIONS:
            self._quiet = 0
            await trio.lowlevel.checkpoint()
        else:
            await trio.lowlevel.checkpoint_if_cancelled()
        if self._reading:
            raise trio.BusyResourceError("another task is reading this WebSocket")
        self._reading = True
        try:
            frames = self._frames
            while True:
                while frames:
                    message = self._message_of(frames.pop())
                    if message is not None:
                        self._quiet += 1
                        return message
                if self._closed or self._broken or self._local_close or self._protocol.state is not OPEN:
                    await self._flush_if_free()
                    raise TransportClosed
                self._feed(await self._receive())
                if self._outgoing:
                    await self._flush_if_free()
        finally:
            self._reading = False
            if self._reader_left is not None:
                self._reader_left.set()

    def _message_of(self, frame: Frame) -> str | bytes | None:
        """The message ``frame`` completes, or None (a part kept, a control frame, a refusal)."""
        opcode = frame.opcode
        data: bytes = frame.data  # type: ignore[assignment]  # bytes: unmasking made a copy
        # The protocol's parser keeps its last frame until the next one arrives: without its payload, an idle
        # connection does not hold on to the last message it received.
        frame.data = b""
        if opcode is TEXT or opcode is BINARY:
            if not frame.fin:
                self._parts = [data]
                self._text = opcode is TEXT
                return None
            if opcode is BINARY:
                return data
        elif opcode is CONT:
            parts = self._parts
            assert parts is not None  # the protocol refuses a continuation outside a message
            parts.append(data)
            if not frame.fin:
                return None
            self._parts = None
            data = b"".join(parts)
            if not self._text:
                return data
        else:
            return None  # ping (answered by the protocol), pong, close (handled by the protocol)
        try:
            return data.decode()
        except UnicodeDecodeError as exc:
            self._refuse(CloseCode.INVALID_PAYLOAD, f"invalid UTF-8 at position {exc.start}")
            return None

    def _refuse(self, code: int, reason: str) -> None:
        self._protocol.fail(code, reason)
        self._refused = True
        self._frames.clear()
        self._parts = None
        self._outgoing += self._protocol.data_to_send()

    def _feed(self, data: bytes) -> None:
        """Hand ``data`` (b"" for EOF) to the protocol; its frames go to ``_frames``, what it wants written (a pong,
        a close frame, the half-close) to ``_outgoing``."""
        protocol = self._protocol
        if data:
            protocol.receive_data(data)
        else:
            protocol.receive_eof()
        events = protocol.events_received()
        if events:
            if self._local_close:
                pass  # we are closing: what the peer sent meanwhile is dropped
            elif len(events) == 1:
                self._frames.insert(0, events[0])  # type: ignore[arg-type]
            else:
                self._frames[:0] = reversed(events)  # type: ignore[arg-type]
        writes = protocol.data_to_send()
        if writes:
            self._outgoing += writes
        exc = protocol.parser_exc
        if exc is not None and not isinstance(exc, EOFError):
            self._refused = True  # 1002 or 1009: the protocol wrote the close frame

    async def _receive(self) -> bytes:
        """The next bytes from the peer; b"" at EOF, after a reset or once the socket is closed."""
        sock = self._socket
        if sock is None:
            try:
                data = await self._stream.receive_some(self._receive_size)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return b""
            self._quiet = 0
            return bytes(data)
        while True:
            try:
                return os.read(sock.fileno(), self._receive_size)
            except BlockingIOError:
                pass
            except OSError:
                return b""
            try:
                await trio.lowlevel.wait_readable(sock)
            except (trio.ClosedResourceError, OSError):
                return b""
            self._quiet = 0

    # Writing.

    async def send_message(self, message: str | bytes) -> None:
        """Send ``message`` as one text frame: a str, or bytes that are already UTF-8 text (sent as they are)."""
        if self._quiet >= FAIR_OPERATIONS:
            self._quiet = 0
            await trio.lowlevel.checkpoint()
        else:
            await trio.lowlevel.checkpoint_if_cancelled()
        if self._closed or self._broken or self._local_close or self._protocol.state is not OPEN:
            raise TransportClosed
        payload = message.encode() if isinstance(message, str) else message
        if not self.send_nowait(payload):
            if self._broken:
                raise TransportClosed
            self._outgoing.append(_text_frame(payload))
        if self._outgoing:
            await self._flush()
        self._quiet += 1

    def send_nowait(self, message: bytes) -> bool:
        """Write ``message`` (UTF-8 text) as one text frame now if that needs no wait, or return False having
        written and queued nothing: over TLS, while another write holds the socket or frames wait to be written,
        once the connection is closing or broken, or when the kernel has no room for its first byte. If the
        kernel takes only part of the frame, the rest is queued, True is returned and ``pending`` is true: the
        caller must then have ``flush`` awaited (by the connection's writer). Never waits; not a checkpoint."""
        sock = self._socket
        if (sock is None or self._outgoing or self._write_lock.locked() or self._closed or self._broken
                or self._local_close or self._protocol.state is not OPEN):
            return False
        header = _text_header(len(message))
        try:
            sent = os.writev(sock.fileno(), (header, message))
        except BlockingIOError:
            return False
        except OSError:
            self._break()
            return False
        if sent < len(header) + len(message):
            # The rest of a frame begun: a memoryview, so a write of it that is cancelled breaks the connection.
            self._outgoing.append(memoryview(header + message)[sent:])
        return True

    @property
    def pending(self) -> bool:
        """Whether bytes wait to be written (what ``send_nowait`` could not write at once, a pong)."""
        return bool(self._outgoing)

    async def flush(self) -> None:
        """Write whatever waits (``pending``); raises TransportClosed if the connection broke."""
        await self._flush()

    async def _flush(self) -> None:
        """Write everything queued, holding the write lock; raises TransportClosed if the connection broke."""
        lock = self._write_lock
        try:
            lock.acquire_nowait()
        except trio.WouldBlock:
            await lock.acquire()
        try:
            await self._write_queued()
        finally:
            lock.release()
        if self._broken:
            raise TransportClosed

    async def _flush_if_free(self) -> None:
        """Write what is queued unless another task is writing (its write takes what is queued too) and fewer than
        MAX_QUEUED_FRAMES frames wait."""
        if self._write_lock.locked() and len(self._outgoing) <= MAX_QUEUED_FRAMES:
            return
        with contextlib.suppress(TransportClosed):
            await self._flush()

    async def _write_queued(self) -> None:
        outgoing = self._outgoing
        while outgoing and not self._broken:
            chunk = outgoing[0]
            if chunk:
                if not await self._write(chunk):
                    return  # broken: _break emptied the queue
            else:
                await self._send_eof()
            del outgoing[0]

    async def _write(self, chunk: bytes | memoryview) -> bool:
        """Write one frame whole and return True; on failure (then False), or when cancelled after part of it went
        out, the connection breaks."""
        sock = self._socket
        if sock is None:
            try:
                await self._stream.send_all(chunk)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._break()
                return False
            except BaseException:
                self._break()  # cancelled: how much of the frame went out is unknown
                raise
            self._quiet = 0
            return True
        sent = 0
        size = len(chunk)
        view: memoryview | None = None
        try:
            while True:
                try:
                    sent += os.write(sock.fileno(), chunk if view is None else view[sent:])
                except BlockingIOError:
                    pass
                except OSError:
                    self._break()
                    return False
                if sent == size:
                    return True
                if view is None:
                    view = memoryview(chunk)
                try:
                    await trio.lowlevel.wait_writable(sock)
                except (trio.ClosedResourceError, OSError):
                    self._break()
                    return False
                self._quiet = 0
        except BaseException:
            if sent or type(chunk) is memoryview:
                self._break()  # cancelled mid-frame: the rest of the frame can never follow
            raise

    async def _send_eof(self) -> None:
        sock = self._socket
        try:
            if sock is not None:
                sock.shutdown(socket.SHUT_WR)
            elif isinstance(self._stream, trio.abc.HalfCloseableStream):
                await self._stream.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass

    def _break(self) -> None:
        """The byte stream can no longer carry frames: nothing more is written, and a plain socket closes now."""
        self._broken = True
        self._outgoing.clear()
        if self._socket is not None:
            self._socket.close()

    # Closing.

    async def aclose(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Send a close frame with ``code`` and ``reason`` (unless one was sent or received already), wait a moment
        for the peer's answer (or linger after a refusal), then close the socket. Idempotent; never raises."""
        if self._closed:
            return
        try:
            protocol = self._protocol
            if protocol.state is OPEN and not self._broken:
                protocol.send_close(int(code), _close_reason(reason))
                self._local_close = True
                self._frames.clear()
                self._parts = None
                self._outgoing += protocol.data_to_send()
            await self._flush()
            if self._refused:
                await self._linger()
            elif self._local_close:
                await self._await_close_reply()
        except Exception:  # a peer gone mid-close is that peer's; closing never fails the caller
            pass
        finally:
            self._closed = True
            if self._socket is not None:
                self._socket.close()
            else:
                await trio.aclose_forcefully(self._stream)

    async def _await_close_reply(self) -> None:
        """Read (and drop) until the peer answers our close frame or goes, within CLOSE_REPLY_SECONDS; a reader
        already waiting on the socket reads it instead."""
        protocol = self._protocol
        with trio.move_on_after(CLOSE_REPLY_SECONDS):
            while not self._broken and protocol.close_rcvd is None and protocol.state is not State.CLOSED:
                if self._reading:
                    left = self._reader_left = trio.Event()
                    await left.wait()
                    continue
                self._reading = True
                try:
                    self._feed(await self._receive())
                finally:
                    self._reading = False
                    if self._reader_left is not None:
                        self._reader_left.set()  # another aclose may be waiting to read
                if self._outgoing:
                    await self._flush_if_free()

    async def _linger(self) -> None:
        """After a refusal (the close frame and the half-close sent): read and drop what the peer still sends."""
        dropped = 0
        with trio.move_on_after(REFUSAL_LINGER_SECONDS):
            while dropped < REFUSAL_LINGER_BYTES and not self._reading:
                chunk = await self._receive()
                if not chunk:
                    break
                dropped += len(chunk)
