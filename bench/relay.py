"""The bare relay: the transport ceiling for trioscheduler.

A trio-websocket server on 127.0.0.1 with /ws/session and /ws/node that speaks the same protocol subset as the
scheduler and has no scheduling logic:

- session_init -> session_init_ack
- utterance -> job_assign to the next node, round-robin (no capability check, no capacity, no retries)
- audio_chunk: payload appended to the session's buffer; is_final -> job_assign of the whole buffer
- node_register -> node_register_ack; node_heartbeat is parsed and dropped
- job_result -> translation_result to the client that owns the job (looked up by job_id)

    python bench/relay.py --port 0          # prints "LISTENING ws://127.0.0.1:PORT"
"""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import signal
import sys
import time
from functools import partial

import trio
from trio_websocket import ConnectionClosed, WebSocketRequest, serve_websocket

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import HOST, MAX_MESSAGE, RECEIVE_BUFFER

dumps = partial(json.dumps, separators=(",", ":"))
loads = json.loads


b64decode, b64encode = base64.b64decode, base64.b64encode


def use_fast_libraries() -> None:
    """--libs fast: the scheduler's JSON (orjson) and base64 (pybase64) libraries, to show how much of a
    difference between the two is the libraries' and how much the scheduling logic's."""
    global dumps, loads, b64decode, b64encode
    import orjson
    import pybase64

    def dumps(obj) -> str:
        return orjson.dumps(obj).decode()

    loads = orjson.loads
    b64decode, b64encode = pybase64.b64decode, pybase64.b64encode


class Relay:
    def __init__(self) -> None:
        self.nodes: list = []  # [(node_id, ws)]
        self.rr = 0
        self.jobs: dict[str, tuple] = {}  # job_id -> (client ws, session_id, utterance_index, trace_id)
        self.job_seq = itertools.count(1)
        self.session_seq = itertools.count(1)
        self.node_seq = itertools.count(1)
        self.heartbeats = 0
        self.jobs_done = 0

    def pick(self):
        if not self.nodes:
            return None
        self.rr = (self.rr + 1) % len(self.nodes)
        return self.nodes[self.rr]

    async def handler(self, request: WebSocketRequest) -> None:
        path = request.path
        if path.startswith("/ws/session"):
            ws = await request.accept()
            await self.session(ws)
        elif path.startswith("/ws/node"):
            ws = await request.accept()
            await self.node(ws)
        else:
            await request.reject(404)

    async def dispatch(self, ws, session_id, index, src, tgt, audio_b64, audio_format, sample_rate, trace_id):
        node = self.pick()
        if node is None:
            await ws.send_message(dumps({"type": "error", "code": "NO_AVAILABLE_NODE", "message": "no node"}))
            return
        job_id = f"job-{next(self.job_seq)}"
        self.jobs[job_id] = (ws, session_id, index, trace_id)
        assign = {
            "type": "job_assign",
            "job_id": job_id,
            "attempt_id": 1,
            "session_id": session_id,
            "utterance_index": index,
            "src_lang": src,
            "tgt_lang": tgt,
            "pipeline": {"use_asr": True, "use_nmt": True, "use_tts": True},
            "audio": audio_b64,
            "audio_format": audio_format,
            "sample_rate": sample_rate,
            "trace_id": trace_id,
        }
        try:
            await node[1].send_message(dumps(assign))
        except ConnectionClosed:
            self.jobs.pop(job_id, None)
            await ws.send_message(dumps({"type": "error", "code": "NODE_UNAVAILABLE", "message": "node gone"}))

    async def session(self, ws) -> None:
        # per-socket session state: session_id -> [src, tgt, buffer, next_index, trace_id]
        sessions: dict[str, list] = {}
        try:
            while True:
                raw = await ws.get_message()
                try:
                    msg = loads(raw)
                    mtype = msg["type"]
                except (ValueError, KeyError, TypeError):
                    await ws.send_message(dumps({"type": "error", "code": "INVALID_MESSAGE", "message": "bad"}))
                    continue
                if mtype == "utterance":
                    sid = msg["session_id"]
                    await self.dispatch(
                        ws, sid, msg["utterance_index"], msg["src_lang"], msg["tgt_lang"], msg["audio"],
                        msg.get("audio_format", "pcm16"), msg.get("sample_rate", 16000), msg.get("trace_id", sid),
                    )
                elif mtype == "audio_chunk":
                    st = sessions.get(msg["session_id"])
                    if st is None:
                        await ws.send_message(dumps({"type": "error", "code": "INVALID_SESSION", "message": "?"}))
                        continue
                    payload = msg.get("payload")
                    if payload:
                        st[2] += b64decode(payload)
                    if msg.get("is_final") and st[2]:
                        audio = b64encode(bytes(st[2])).decode("ascii")
                        st[2] = bytearray()
                        index = st[3]
                        st[3] += 1
                        await self.dispatch(ws, msg["session_id"], index, st[0], st[1], audio, "pcm16", 16000, st[4])
                elif mtype == "session_init":
                    sid = f"s-{next(self.session_seq):08X}"
                    trace = msg.get("trace_id") or f"t-{sid}"
                    sessions[sid] = [msg.get("src_lang", "zh"), msg.get("tgt_lang", "en"), bytearray(), 0, trace]
                    await ws.send_message(dumps({
                        "type": "session_init_ack", "session_id": sid, "message": "session created",
                        "trace_id": trace, "protocol_version": "1.0", "use_binary_frame": False,
                        "negotiated_audio_format": msg.get("audio_format", "pcm16"),
                        "negotiated_sample_rate": msg.get("sample_rate", 16000), "negotiated_channel_count": 1,
                    }))
                elif mtype == "client_heartbeat":
                    await ws.send_message(dumps({"type": "server_heartbeat", "session_id": msg.get("session_id"),
                                                 "timestamp": int(time.time() * 1000)}))
                elif mtype == "session_close":
                    sessions.pop(msg.get("session_id"), None)
                    await ws.send_message(dumps({"type": "session_close_ack", "session_id": msg.get("session_id")}))
        except ConnectionClosed:
            pass

    async def node(self, ws) -> None:
        entry = None
        try:
            raw = await ws.get_message()
            msg = loads(raw)
            if msg.get("type") != "node_register":
                await ws.aclose(1008, "node_register expected")
                return
            node_id = msg.get("node_id") or f"node-{next(self.node_seq):08X}"
            await ws.send_message(dumps({"type": "node_register_ack", "node_id": node_id, "message": "registered",
                                         "status": "ready", "heartbeat_interval_seconds": 15}))
            entry = (node_id, ws)
            self.nodes.append(entry)
            while True:
                raw = await ws.get_message()
                msg = loads(raw)
                mtype = msg.get("type")
                if mtype == "job_result":
                    owner = self.jobs.pop(msg.get("job_id"), None)
                    if owner is None:
                        continue
                    cws, sid, index, trace = owner
                    self.jobs_done += 1
                    out = {
                        "type": "translation_result",
                        "session_id": sid,
                        "utterance_index": index,
                        "job_id": msg["job_id"],
                        "text_asr": msg.get("text_asr", ""),
                        "text_translated": msg.get("text_translated", ""),
                        "tts_audio": msg.get("tts_audio", ""),
                        "tts_format": msg.get("tts_format", "pcm16"),
                        "trace_id": trace,
                    }
                    # per message: a bare try costs the baseline nothing, a suppress() would build a context manager
                    try:  # noqa: SIM105
                        await cws.send_message(dumps(out))
                    except ConnectionClosed:
                        pass
                elif mtype == "node_heartbeat":
                    self.heartbeats += 1
        except ConnectionClosed:
            pass
        finally:
            if entry is not None:
                self.nodes.remove(entry)


async def main(port: int, max_seconds: float) -> None:
    relay = Relay()
    with trio.move_on_after(max_seconds), trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as sigs:
        async with trio.open_nursery() as nursery:
            server = await nursery.start(partial(
                serve_websocket, relay.handler, HOST, port, None,
                receive_buffer_size=RECEIVE_BUFFER, max_message_size=MAX_MESSAGE,
            ))
            print(f"LISTENING ws://{HOST}:{server.port}", flush=True)
            async for _ in sigs:
                break
            nursery.cancel_scope.cancel()
    print(f"relay done: jobs={relay.jobs_done} heartbeats={relay.heartbeats}", flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--max-seconds", type=float, default=3600.0, help="exit by itself after this long")
    ap.add_argument("--libs", choices=("stdlib", "fast"), default="stdlib",
                    help="JSON and base64: stdlib (like the reference relay) or fast (orjson + pybase64, as the "
                         "scheduler)")
    a = ap.parse_args()
    if a.libs == "fast":
        use_fast_libraries()
    trio.run(main, a.port, a.max_seconds)
