"""The Celery alternative: what a Python team would build instead of trioscheduler (issue 4, point 3b).

Redis is both broker and result backend ($BENCH_REDIS_URL, e.g. redis://127.0.0.1:PORT/0; loopback only).
The task takes the same 33 KB utterance dict the WebSocket clients send and returns a ~300 B dict like a
translation_result. Worker (started by bench/run.py, cwd=bench/):

    celery -A celery_app worker -P threads -c 4 --loglevel=WARNING --without-gossip --without-mingle --without-heartbeat

Needs `celery[redis]` (plain `celery redis` lacks `packaging` for kombu 5.7's Redis transport).
"""

from __future__ import annotations

import os

from celery import Celery

URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
assert URL.startswith(("redis://127.0.0.1", "redis://localhost")), "the bench only talks to loopback"

app = Celery("bench", broker=URL, backend=URL)
app.conf.update(
    worker_prefetch_multiplier=1,
    task_acks_late=True,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_expires=600,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)

TTS_AUDIO = "UklGRiQAAABXQVZFZm10IBAAAAABAAEAgD4AAAB9AAACABAAZGF0YQAAAAA=" * 2


@app.task(name="bench.translate")
def translate(utt: dict) -> dict:
    return {
        "type": "translation_result",
        "session_id": utt.get("session_id"),
        "utterance_index": utt.get("utterance_index"),
        "job_id": f"job-{utt.get('session_id')}-{utt.get('utterance_index')}",
        "text_asr": "你好世界",
        "text_translated": "hello world",
        "tts_audio": TTS_AUDIO,
        "tts_format": "pcm16",
        "trace_id": utt.get("trace_id"),
    }
