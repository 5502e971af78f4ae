"""Structured log lines (``event key=value ...``, or one JSON object per line with ``logging.format = "json"``)
written by a thread of their own, so no sink can stall the loop.

Guarantees:

* Fields are only formatted when the level is enabled, so a stage line costs almost nothing on the hot path when
  the daemon runs at ``warning``.
* A logged value never breaks its line or forges a field: values with a space, ``"``, ``=``, ``\\`` or any
  character that is not printable (newlines, control characters, Unicode separators) are quoted and escaped.
* Logging never waits for the sink. :class:`QueueingHandler` puts records on a bounded queue that one writer thread
  drains; when the sink is slow or stuck and the queue is full, records are dropped and counted
  (:func:`dropped_records`), and a ``log_records_dropped`` warning goes through the same queue once there is room,
  at most once per reporting interval.
"""

from __future__ import annotations

import json
import logging
import math
import os
import queue
import re
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

FIELDS_ATTR = "trioscheduler_fields"
#: The record attribute that holds an ``emit`` line's event name.
EVENT_ATTR = "trioscheduler_event"
#: The logger every trioscheduler logger descends from; configure_logging installs its handler here.
ROOT_LOGGER = "trioscheduler"
#: Seconds between two ``log_records_dropped`` warnings (one per interval at most, while records are dropped).
DROP_REPORT_INTERVAL_SECONDS = 10.0
#: Records the writer thread formats and hands to the sink in one write.
WRITE_BATCH = 256
#: How often the writer thread looks at the queue when it has emptied it.
WRITE_INTERVAL_SECONDS = 0.05
#: How long process exit waits for queued records to reach the sink before leaving them.
CLOSE_TIMEOUT_SECONDS = 2.0

#: Characters that force quoting of a value that is otherwise printable.
_NEEDS_QUOTES = re.compile(r'[ "=\\]')
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def emit(logger: logging.Logger, level: int, event: str, **fields: Any) -> None:
    """One line ``event key=value ...``; the fields also ride on the record for structured handlers."""
    if logger.isEnabledFor(level):
        emit_fields(logger, level, event, fields)


def emit_fields(logger: logging.Logger, level: int, event: str, fields: dict[str, Any]) -> None:
    """``emit`` for a caller that has checked the level and holds its fields in a dict already (fields that are
    None are left out of the line)."""
    parts = [event]
    append = parts.append
    for key, value in fields.items():
        if value is None:
            continue
        kind = type(value)
        if kind is float:
            append(f"{key}={value:.3f}")
        elif kind is int or (kind is str and value and value.isprintable() and _NEEDS_QUOTES.search(value) is None):
            append(f"{key}={value}")
        else:
            append(f"{key}={_format_value(value)}")
    logger.handle(EmitRecord(logger.name, level, " ".join(parts), event, fields))


class EmitRecord(logging.LogRecord):
    """The record of an ``emit`` line: a LogRecord with every standard attribute, made without the caller lookup
    and path splitting of ``Logger.log`` (no formatter here prints the caller), and with the event and fields."""

    def __init__(self, name: str, level: int, line: str, event: str, fields: dict[str, Any]) -> None:
        created = time.time()
        self.name = name
        self.msg = line
        self.args = None
        self.levelname = logging.getLevelName(level)
        self.levelno = level
        self.pathname = "(unknown file)"
        self.filename = "(unknown file)"
        self.module = "(unknown module)"
        self.exc_info = None
        self.exc_text = None
        self.stack_info = None
        self.lineno = 0
        self.funcName = "(unknown function)"
        self.created = created
        self.msecs = int((created - int(created)) * 1000) + 0.0
        self.relativeCreated = (created - logging._startTime) * 1000  # type: ignore[attr-defined]
        self.thread = None
        self.threadName = None
        self.processName = None
        self.process = None
        setattr(self, EVENT_ATTR, event)
        setattr(self, FIELDS_ATTR, fields)


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    if type(value) is int:
        return str(value)
    text = str(value)
    if text and text.isprintable() and _NEEDS_QUOTES.search(text) is None:
        return text
    return '"' + escape_text(text) + '"'


def escape_text(text: str) -> str:
    """``text`` with ``"`` and ``\\`` backslash-escaped and every non-printable character written as an escape
    (``\\n``, ``\\r``, ``\\t``, ``\\xNN``, ``\\uNNNN``, ``\\UNNNNNNNN``), so it fits on one line between quotes."""
    out: list[str] = []
    for char in text:
        escaped = _ESCAPES.get(char)
        if escaped is not None:
            out.append(escaped)
        elif char.isprintable():
            out.append(char)
        else:
            code = ord(char)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
    return "".join(out)


def _one_line(text: str) -> str:
    """A free-form message on one line: non-printable characters escaped, everything else as it is."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else escape_text(char) for char in text)


class LogfmtFormatter(logging.Formatter):
    """``<UTC time> <level> <logger> <message>``; a traceback, if any, follows on its own lines."""

    def __init__(self) -> None:
        super().__init__()
        #: The second last formatted and its text: the lines of one second share their date and time.
        self._second = -1
        self._stamp = ""

    def format(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second:
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        line = (f"{self._stamp}.{int(record.msecs):03d}Z {record.levelname.lower()} {record.name} "
                f"{_one_line(record.getMessage())}")
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line += "\n" + record.exc_text
        return line


#: Keys every JSON line has; a field of the same name is written with a ``field_`` prefix instead.
JSON_RESERVED_KEYS = frozenset({"time", "level", "logger", "event", "message", "traceback"})


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (UTC, ISO 8601), ``level``, ``logger``, then for an ``emit`` line its
    ``event`` and every field (a value JSON cannot hold is written as its ``str``), for any other line its
    ``message``; ``traceback`` when there is one. JSON escapes every control character, so a line is one line."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        data: dict[str, Any] = {"time": f"{stamp}.{int(record.msecs):03d}Z", "level": record.levelname.lower(),
                                "logger": record.name}
        event = getattr(record, EVENT_ATTR, None)
        fields = getattr(record, FIELDS_ATTR, None)
        if event is not None:
            data["event"] = event
        else:
            data["message"] = record.getMessage()
        if fields:
            for key, value in fields.items():
                if value is not None:
                    data[f"field_{key}" if key in JSON_RESERVED_KEYS else key] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            data["traceback"] = record.exc_text
        try:
            return json.dumps(data, ensure_ascii=False, default=str, allow_nan=False)
        except ValueError:  # NaN or an infinity somewhere: JSON has neither, so write those as strings
            return json.dumps(_strings_for_non_finite(data), ensure_ascii=False, default=str, allow_nan=False)


def _strings_for_non_finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _strings_for_non_finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strings_for_non_finite(v) for v in value]
    return value


#: ``logging.format`` → the formatter of the writer thread.
FORMATTERS: dict[str, type[logging.Formatter]] = {"text": LogfmtFormatter, "json": JsonFormatter}

Sink = Callable[[bytes], None]


def fd_sink(fd: int) -> Sink:
    """Writes to a duplicate of ``fd`` with ``os.write``: the writer thread holds no lock of ``sys.stderr`` while
    the sink blocks, so nothing else in the process (not even interpreter exit) can be stuck behind it."""
    own_fd = os.dup(fd)

    def write(data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(own_fd, view):]

    return write


def stream_sink(stream: Any) -> Sink:
    """Writes to a text stream (for streams without a file descriptor)."""

    def write(data: bytes) -> None:
        stream.write(data.decode("utf-8", "replace"))
        stream.flush()

    return write


class QueueingHandler(logging.Handler):
    """Hands records to a writer thread over a queue of at most ``capacity`` records and never waits for it.

    On the caller's thread a record is only made self-contained (a message with arguments is rendered, a traceback
    is rendered and released); the formatter and the sink run on the writer thread. A record that finds the queue
    full is dropped and counted in :attr:`dropped`.
    """

    def __init__(self, sink: Sink, capacity: int, *, formatter: logging.Formatter | None = None,
                 report_interval: float = DROP_REPORT_INTERVAL_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.setFormatter(formatter or LogfmtFormatter())
        self.capacity = capacity
        self.report_interval = report_interval
        self._full_drops = 0  # written by the emitting thread only
        self._sink_failures = 0  # written by the writer thread only
        self._sink = sink
        self._clock = clock
        self._queue: queue.SimpleQueue[logging.LogRecord | None] = queue.SimpleQueue()
        self._reported = 0
        self._last_report = -math.inf
        self._closed = False
        self._thread = threading.Thread(target=self._write_records, name="trioscheduler-log-writer", daemon=True)
        self._thread.start()

    @property
    def dropped(self) -> int:
        """Records lost since this handler was made: the queue was full, or the sink raised."""
        return self._full_drops + self._sink_failures

    def handle(self, record: logging.LogRecord) -> bool:
        """``Handler.handle`` without its lock: ``emit`` is safe from any thread as it is (one queue put)."""
        if not self.filter(record):
            return False
        self.emit(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        if self._queue.qsize() >= self.capacity:
            self._full_drops += 1
            return
        if record.args:
            record.msg = record.getMessage()
            record.args = None
        if record.exc_info:
            assert self.formatter is not None
            record.exc_text = self.formatter.formatException(record.exc_info)
            record.exc_info = None
        self._queue.put(record)

    def close(self) -> None:
        """Stop the writer after what is queued, waiting at most CLOSE_TIMEOUT_SECONDS (a stuck sink is left)."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            self._thread.join(CLOSE_TIMEOUT_SECONDS)
        super().close()

    def _write_records(self) -> None:
        """The writer thread: every WRITE_INTERVAL_SECONDS it takes what is queued, WRITE_BATCH records per sink
        call, and reports drops; it ends at the close marker. It never waits on the queue, so a record put by the
        loop wakes no thread."""
        formatter = self.formatter
        assert formatter is not None
        get = self._queue.get_nowait
        while True:
            batch: list[logging.LogRecord] = []
            stop = False
            while len(batch) < WRITE_BATCH:
                try:
                    record = get()
                except queue.Empty:
                    break
                if record is None:
                    stop = True
                    break
                batch.append(record)
            if batch:
                try:
                    self._sink("".join([formatter.format(record) + "\n" for record in batch])
                               .encode("utf-8", "replace"))
                except Exception:  # a sink that fails loses its lines, never the writer
                    self._sink_failures += len(batch)
            if stop:
                return
            self._report_drops()
            if len(batch) < WRITE_BATCH:
                time.sleep(WRITE_INTERVAL_SECONDS)

    def _report_drops(self) -> None:
        dropped = self.dropped
        if dropped == self._reported or self._clock() - self._last_report < self.report_interval:
            return
        if self._queue.qsize() >= self.capacity:
            return  # no room yet: the next record written makes some
        self._last_report = self._clock()
        self._queue.put(_drop_record(dropped - self._reported, dropped))
        self._reported = dropped


def _drop_record(since_last: int, total: int) -> logging.LogRecord:
    record = logging.LogRecord(f"{ROOT_LOGGER}.logs", logging.WARNING, __file__, 0,
                               f"log_records_dropped dropped={since_last} total={total}", None, None)
    setattr(record, FIELDS_ATTR, {"dropped": since_last, "total": total})
    return record


def _default_sink() -> Sink:
    try:
        return fd_sink(sys.stderr.fileno())
    except (AttributeError, OSError, ValueError):
        return stream_sink(sys.stderr)


def configure_logging(level: str, *, queue_records: int = 10_000, sink: Sink | None = None,
                      log_format: str = "text") -> QueueingHandler:
    """Route every ``trioscheduler`` logger through one :class:`QueueingHandler` (replacing any earlier one) that
    writes to ``sink`` (default: the process's stderr) and holds at most ``queue_records`` records, formatted as
    ``log_format`` ("text" or "json", see FORMATTERS)."""
    # Records carry nothing the formatter does not print: no caller lookup (a stack walk per record), no thread
    # or process names (the logging HOWTO's "Optimization" list).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    root = logging.getLogger(ROOT_LOGGER)
    for old in root.handlers:
        old.close()
    handler = QueueingHandler(sink or _default_sink(), queue_records, formatter=FORMATTERS[log_format]())
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    return handler


def dropped_records() -> int:
    """Log records dropped so far because the sink could not keep up (0 when logging was not configured)."""
    for handler in logging.getLogger(ROOT_LOGGER).handlers:
        if isinstance(handler, QueueingHandler):
            return handler.dropped
    return 0
