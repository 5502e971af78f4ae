"""Simulated worker nodes and clients, speaking the lingua wire protocol from the outside.

They let the demo, the examples and the tests drive the scheduler end to end without GPUs or browsers: the node
answers jobs with deterministic text (:func:`expected_texts`) and seeded misbehaviour, or (``mode="original"``)
like the original system's node agent, which leaves some jobs unanswered by design
(:mod:`trioscheduler.sim.original`); the client streams a WAV in 200 ms chunks and measures per-utterance latency.
Both run over any :class:`MessageConnection`: a trio-websocket connection, or an end of
``trioscheduler.transport.memory_transport_pair()`` for socket-free tests.
"""

from trioscheduler.sim.client import (
    DEFAULT_SESSION_URL,
    Pcm16Audio,
    ReceivedPartial,
    SessionReport,
    SimClient,
    SimClientError,
    UtteranceResult,
    chunk_rms,
    default_wav_path,
    iter_chunks,
    read_wav,
)
from trioscheduler.sim.node import (
    CONNECTION_CLOSED,
    DEFAULT_NODE_URL,
    MODES,
    MessageConnection,
    SimNode,
    SimNodeBehaviour,
    SimNodeError,
    SimNodeStats,
    abort_connection,
    audio_hash,
    expected_texts,
    expected_turn_texts,
    fake_tts_pcm16,
    original_duration_estimate_ms,
)

__all__ = [
    "CONNECTION_CLOSED",
    "DEFAULT_NODE_URL",
    "DEFAULT_SESSION_URL",
    "MODES",
    "MessageConnection",
    "Pcm16Audio",
    "ReceivedPartial",
    "SessionReport",
    "SimClient",
    "SimClientError",
    "SimNode",
    "SimNodeBehaviour",
    "SimNodeError",
    "SimNodeStats",
    "UtteranceResult",
    "abort_connection",
    "audio_hash",
    "chunk_rms",
    "default_wav_path",
    "expected_texts",
    "expected_turn_texts",
    "fake_tts_pcm16",
    "iter_chunks",
    "original_duration_estimate_ms",
    "read_wav",
]
