"""Issue 13 point 1 and issue 8 point 6 (log side): logging never blocks the event loop, drops are counted and
reported, and logged values cannot forge lines or fields."""

from __future__ import annotations

import logging
import re
import threading

import trio
from hypothesis import given
from hypothesis import strategies as st

from tests.wire import b64, connect, node_register, pcm, result_for, start_daemon_process
from trioscheduler import logs

#: Enough jobs that their info lines are many times a pipe's buffer (64 KiB on Linux).
JOBS = 400


async def test_a_stderr_pipe_nobody_reads_does_not_stop_scheduling() -> None:
    """The daemon at its default level, its stderr a pipe this test never reads: every job still gets its
    result, and promptly (each step has its own deadline)."""
    process, urls = await start_daemon_process("--port", "0", "--http-port", "0")
    try:
        session_url, node_url = urls.group(1), urls.group(2)
        async with connect(node_url) as node, connect(session_url) as client:
            await node.send(**node_register("node-LOGPIPE1"))
            await node.recv_type("node_register_ack")
            await client.send(type="session_init", src_lang="zh", tgt_lang="en", audio_format="pcm16")
            sid = (await client.recv_type("session_init_ack"))["session_id"]
            for index in range(JOBS):
                await client.send(type="utterance", session_id=sid, utterance_index=index, audio=b64(pcm(100)),
                                  audio_format="pcm16", sample_rate=16000, trace_id=f"trace-{index}")
                assign = await node.recv_type("job_assign", timeout=5, skip=("node_heartbeat_ack",))
                await node.send(**result_for(assign, node_id="node-LOGPIPE1"))
                result = await client.recv_type("translation_result", timeout=5)
                assert result["utterance_index"] == index
    finally:
        process.kill()
        with trio.fail_after(10):
            await process.wait()


# ----------------------------------------------------------------------------------------------- escaping


_PAIR = re.compile(r'(\w+)=("(?:\\.|[^"\\])*"|[^ "]*)(?: |$)')
_ESCAPE = re.compile(r'\\(x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8}|.)')
_SIMPLE = {"n": "\n", "r": "\r", "t": "\t", '"': '"', "\\": "\\"}


def _unescape(match: re.Match[str]) -> str:
    token = match.group(1)
    return _SIMPLE[token] if len(token) == 1 else chr(int(token[1:], 16))


def parse_fields(line: str) -> tuple[str, dict[str, str]]:
    """A strict logfmt reader: the event, then ``key=value`` pairs that must cover the rest of the line."""
    event, _, rest = line.partition(" ")
    fields: dict[str, str] = {}
    position = 0
    while position < len(rest):
        match = _PAIR.match(rest, position)
        assert match, f"unparsable at {position}: {rest!r}"
        value = match.group(2)
        if value.startswith('"'):
            value = _ESCAPE.sub(_unescape, value[1:-1])
        assert match.group(1) not in fields, f"field {match.group(1)} twice in {line!r}"
        fields[match.group(1)] = value
        position = match.end()
    return event, fields


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logs.LogfmtFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def capture(name: str) -> tuple[logging.Logger, ListHandler]:
    logger = logging.getLogger(f"tests.logs.{name}")
    handler = ListHandler()
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    return logger, handler


def test_a_value_with_a_newline_cannot_forge_a_line_or_a_field() -> None:
    logger, handler = capture("forge")
    forged = "s-1\n2026-01-01T00:00:00.000Z warning trioscheduler.server.node_socket node_quarantined node_id=n-1"
    logs.emit(logger, logging.INFO, "job_created", session_id=forged, node_id='a" job_id=x', trace_id="t\\")
    (line,) = handler.lines
    assert "\n" not in line
    event, fields = parse_fields(line.split(" ", 3)[3])
    assert event == "job_created"
    assert fields == {"session_id": forged, "node_id": 'a" job_id=x', "trace_id": "t\\"}


def test_a_free_form_message_stays_on_one_line() -> None:
    logger, handler = capture("message")
    logger.warning("connection from %s closed", "peer\r\nerror forged=1")
    (line,) = handler.lines
    assert line.endswith("connection from peer\\r\\nerror forged=1 closed")


@given(st.dictionaries(st.sampled_from(["session_id", "node_id", "job_id", "trace_id", "reason"]),
                       st.text(), max_size=5))
def test_any_text_values_round_trip_on_one_printable_line(values: dict[str, str]) -> None:
    logger, handler = capture("roundtrip")
    logs.emit(logger, logging.INFO, "event", **values)
    (line,) = handler.lines
    assert line.isprintable()
    event, fields = parse_fields(line.split(" ", 3)[3])
    assert event == "event" and fields == values


# ----------------------------------------------------------------------------------------------- the queue


#: A deadline for the writer thread, so a bug fails the test instead of hanging it.
WAIT_SECONDS = 10.0


class GateSink:
    """A sink that blocks while its gate is closed, like a pipe nobody reads."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.lines: list[str] = []
        self.written = threading.Condition()

    def __call__(self, data: bytes) -> None:
        self.entered.set()
        assert self.gate.wait(WAIT_SECONDS)
        with self.written:
            self.lines.extend(data.decode().splitlines(keepends=True))
            self.written.notify_all()

    def wait_for(self, count: int) -> list[str]:
        with self.written:
            assert self.written.wait_for(lambda: len(self.lines) >= count, WAIT_SECONDS), self.lines
            return list(self.lines)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_stuck_sink_drops_and_counts_records_and_reports_them_at_most_once_per_interval() -> None:
    sink, clock = GateSink(), FakeClock()
    handler = logs.QueueingHandler(sink, capacity=5, report_interval=10.0, clock=clock)
    logger = logging.getLogger("tests.logs.queue")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        logs.emit(logger, logging.INFO, "first", index=0)
        assert sink.entered.wait(WAIT_SECONDS)  # the writer is now stuck in the sink with "first"
        for index in range(1, 50):
            logs.emit(logger, logging.INFO, "record", index=index)  # returns at once: 5 queued, 44 dropped
        assert handler.dropped == 44
        sink.gate.set()
        lines = sink.wait_for(7)
        assert [line.split(" ")[3] for line in lines[:6]] == ["first", *["record"] * 5]
        assert lines[6].split(" ", 1)[1] == "warning trioscheduler.logs log_records_dropped dropped=44 total=44\n"

        sink.gate.clear()
        sink.entered.clear()
        logs.emit(logger, logging.INFO, "second", index=0)
        assert sink.entered.wait(WAIT_SECONDS)
        for index in range(1, 10):
            logs.emit(logger, logging.INFO, "record", index=index)
        assert handler.dropped == 48
        sink.gate.set()
        lines = sink.wait_for(13)
        assert not any("log_records_dropped" in line for line in lines[7:])  # within the interval: no report

        clock.now += 10.0
        logs.emit(logger, logging.INFO, "third", index=0)
        lines = sink.wait_for(15)
        assert "third" in lines[13]
        assert "log_records_dropped dropped=4 total=48" in lines[14]
    finally:
        sink.gate.set()
        handler.close()
    assert len(sink.lines) == 15


def test_configure_logging_installs_one_queueing_handler_and_counts_its_drops() -> None:
    sink = GateSink()
    sink.gate.set()
    root = logging.getLogger("trioscheduler")
    saved = root.handlers[:], root.level, root.propagate
    handler = logs.configure_logging("info", queue_records=3, sink=sink)
    try:
        assert logging.getLogger("trioscheduler").handlers == [handler]
        assert logs.dropped_records() == 0
        logs.emit(logging.getLogger("trioscheduler.server.session_socket"), logging.INFO, "hello", session_id="s-1")
        assert sink.wait_for(1)[0].endswith(" info trioscheduler.server.session_socket hello session_id=s-1\n")
    finally:
        handler.close()
        root.handlers[:], root.level, root.propagate = saved
