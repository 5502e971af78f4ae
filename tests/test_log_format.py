"""Issue 11, point 6: ``--log-format json`` (or ``[logging] format = "json"``) writes one JSON object per line, and
every line of a job carries its ids; the default stays ``event key=value``."""

from __future__ import annotations

import json
import logging
import signal
from typing import Any

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from tests.wire import b64, pcm, registered_node, result_for, session, start_daemon_process
from trioscheduler.logs import JsonFormatter, LogfmtFormatter, configure_logging, emit


def _record(event: str, **fields: Any) -> logging.LogRecord:
    captured: list[logging.LogRecord] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            captured.append(record)

    logger = logging.getLogger("trioscheduler.test_log_format")
    handler = Capture()
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        emit(logger, logging.INFO, event, **fields)
    finally:
        logger.removeHandler(handler)
    return captured[0]


def test_an_emit_line_is_one_json_object_with_its_event_and_fields() -> None:
    record = _record("job_done", session_id="s-1", utterance_index=3, job_id="job-x", elapsed_ms=1.5,
                     code=None, time="spoofed", where=frozenset({"a"}), nan=float("nan"))
    line = JsonFormatter().format(record)
    assert "\n" not in line
    data = json.loads(line)
    assert data["event"] == "job_done" and data["level"] == "info" and data["logger"] == "trioscheduler.test_log_format"
    assert (data["session_id"], data["utterance_index"], data["job_id"], data["elapsed_ms"]) == ("s-1", 3, "job-x", 1.5)
    assert "code" not in data  # None fields are left out, as in the text format
    assert data["field_time"] == "spoofed"  # a field never overwrites a key every line has
    assert data["where"] == "frozenset({'a'})" and data["nan"] == "nan"
    assert data["time"].endswith("Z")


def test_a_plain_line_and_a_traceback_are_kept() -> None:
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        record = logging.LogRecord("trioscheduler.x", logging.ERROR, __file__, 1, "failed %s", ("here",),
                                   exc_info=__import__("sys").exc_info())
    data = json.loads(JsonFormatter().format(record))
    assert data["message"] == "failed here" and "event" not in data
    assert "ValueError: boom" in data["traceback"]


@given(st.dictionaries(st.from_regex(r"[a-z_]{1,12}", fullmatch=True).filter(
           lambda key: key not in ("logger", "level", "event")),  # emit's own parameters
                       st.one_of(st.text(), st.integers(), st.floats(), st.booleans()), max_size=6),
       st.text(min_size=1))
def test_any_fields_make_exactly_one_line_of_valid_json(fields: dict[str, Any], event: str) -> None:
    line = JsonFormatter().format(_record(event, **fields))
    assert "\n" not in line and "\r" not in line
    data = json.loads(line)
    assert data["event"] == event
    for key, value in fields.items():
        written = data["field_" + key if key in ("time", "level", "logger", "event", "message", "traceback")
                       else key]
        if isinstance(value, float) and value != value:
            assert written == "nan"
        elif isinstance(value, float) and value in (float("inf"), float("-inf")):
            assert written in ("inf", "-inf")
        else:
            assert written == value


def test_the_default_format_stays_key_value() -> None:
    sink: list[bytes] = []
    handler = configure_logging("info", sink=sink.append)
    try:
        assert isinstance(handler.formatter, LogfmtFormatter)
    finally:
        handler.close()
    handler = configure_logging("info", sink=sink.append, log_format="json")
    try:
        assert isinstance(handler.formatter, JsonFormatter)
    finally:
        handler.close()
        logging.getLogger("trioscheduler").handlers.clear()


@pytest.mark.parametrize("how", ["flag", "config"])
async def test_the_daemon_logs_json_and_every_job_line_carries_its_ids(how: str) -> None:
    args = ["--port", "0", "--http-port", "0", "--log-level", "debug"]
    env = {}
    if how == "flag":
        args += ["--log-format", "json"]
    else:
        env["TRIOSCHEDULER_LOGGING_FORMAT"] = "json"
    process, urls = await start_daemon_process(*args, env=env)
    session_url, node_url, _ = urls.groups()
    async with registered_node(node_url, "node-JSON1") as (node, _), \
            session(session_url, audio_format="pcm16") as (client, session_id):
        for _ in range(2):
            await client.send(type="audio_chunk", session_id=session_id, payload=b64(pcm(100)), is_final=True)
            assign = await node.recv_type("job_assign", skip=("node_heartbeat_ack",))
            await node.send(**result_for(assign, node_id="node-JSON1"))
            await client.recv_type("translation_result")
    process.send_signal(signal.SIGINT)
    with trio.fail_after(20):
        assert await process.wait() == 0
    assert process.stderr is not None
    stderr = b""
    while chunk := await process.stderr.receive_some():
        stderr += chunk
    lines = [json.loads(line) for line in stderr.decode().splitlines()]  # every line is one JSON object
    job_lines = [line for line in lines if line.get("event", "").startswith("job_")]
    events = {line["event"] for line in job_lines}
    assert {"job_finalized", "job_created", "job_selected", "job_dispatched", "job_result", "job_delivered",
            "job_done"} <= events
    for line in job_lines:
        assert line["session_id"] == session_id and line["utterance_index"] in (0, 1), line
        assert line["trace_id"], line
        if line["event"] != "job_finalized":  # finalized: before the job exists
            assert line["job_id"].startswith("job-"), line
    assert any(line.get("event") == "listening" for line in lines)
