"""Hypothesis strategies of hostile connections: what each one sends, in which order, and how it ends.

Frames are valid messages, valid messages with fields mutated (wrong types, huge and deep values, big numbers,
NaN-like text, control characters), random JSON, non-JSON text, binary frames and text frames that are not UTF-8.
Out-of-order traffic comes for free: a connection may skip its session_init / node_register, and a hostile node's
job_result, job_ack or asr_partial names jobs that do not exist.

Hostile nodes claim languages from HOSTILE_LANGUAGES only, never the well-behaved pair (GOOD_SRC→GOOD_TGT), so
they cannot take the well-behaved client's jobs; hostile clients may use either pair (their jobs then reach the
well-behaved node, which is how a hostile ``features`` reaches a node).
"""

from __future__ import annotations

import base64
import enum
import json
from typing import Any

import attrs
from hypothesis import strategies as st

from tests.fuzz import MAX_FRAMES, MAX_HOSTILE_CONNECTIONS
from tests.wire import heartbeat, node_register, pcm

GOOD_SRC = "qa-good"
GOOD_TGT = "qb-good"
HOSTILE_LANGUAGES = ("zh", "en", "ja")
#: Deep values: around orjson's re-encode limit (255) and the issue's 300; the bound is [limits] max_json_depth.
DEPTHS = (31, 32, 33, 64, 254, 255, 256, 300)
#: Below and above the fuzz daemon's max_message_bytes (harness.FUZZ_MAX_MESSAGE_BYTES).
LONG_STRING_SIZES = (1_000, 60_000, 300_000)
#: Languages one hostile registration claims (the default bound is 64; the cost today grows faster than linearly).
CLAIMED_LANGUAGES = (65, 200)
BIG_NUMBERS = (2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**30, 1e308, -1e308, 5e-324)
NAN_LIKE_TEXT = ("NaN", "Infinity", "-Infinity", "1e308", "", " ", "\x00", "\n", "zh\n{\"event\":\"forged\"}",
                 "\u202e", "\ud7ff", "😀" * 8)


class Kind(enum.Enum):
    JSON = "json"  # payload: any JSON-able value, encoded with json.dumps (NaN and Infinity allowed: invalid JSON)
    TEXT = "text"  # payload: str, sent as is
    BINARY = "binary"  # payload: bytes in a binary frame
    BAD_UTF8 = "bad_utf8"  # payload: bytes in a text frame, not valid UTF-8


class Ending(enum.Enum):
    CLOSE = "close"  # a close frame
    RESET = "reset"  # a TCP reset after the last frame
    LINGER = "linger"  # stays open until the example ends, then resets
    HANDSHAKE_RESET = "handshake_reset"  # the upgrade request, then a TCP reset: no frame is ever sent


@attrs.frozen
class Frame:
    kind: Kind
    payload: Any

    def __repr__(self) -> str:
        text = repr(self.payload)
        return f"Frame({self.kind.value}, {text[:200]}{'...' if len(text) > 200 else ''})"


@attrs.frozen
class Hostile:
    endpoint: str  # "session" or "node"
    introduce: dict[str, Any] | None  # a valid session_init / node_register sent first, or none
    frames: tuple[Frame, ...]
    ending: Ending
    reads: bool  # whether it reads its socket at all
    at_once: bool = False  # every frame, and the close frame of a CLOSE ending, in one TCP write


def encode_json(value: Any) -> str:
    return json.dumps(value, allow_nan=True)


def nested(depth: int) -> Any:
    """A value nested ``depth`` deep: lists and objects alternating."""
    value: Any = 0
    for level in range(depth - 1):
        value = [value] if level % 2 else {"d": value}
    return value


# ------------------------------------------------------------------------------------------------ values

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.sampled_from(BIG_NUMBERS),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12), st.sampled_from(NAN_LIKE_TEXT),
)
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)
hostile_values = st.one_of(
    json_values,
    st.sampled_from(BIG_NUMBERS),
    st.sampled_from(NAN_LIKE_TEXT),
    st.sampled_from(DEPTHS).map(nested),
    st.sampled_from(LONG_STRING_SIZES).map(lambda n: "x" * n),
    st.sampled_from(LONG_STRING_SIZES).map(lambda n: ["zh"] * (n // 6)),
    st.sampled_from(LONG_STRING_SIZES).map(lambda n: {f"k{i}": i for i in range(n // 12)}),
)


def _audio_b64() -> str:
    return base64.b64encode(pcm(100)).decode()


# ------------------------------------------------------------------------------------------------ messages

def session_init(src: str, tgt: str) -> dict[str, Any]:
    return {"type": "session_init", "client_version": "fuzz", "platform": "web", "src_lang": src, "tgt_lang": tgt,
            "audio_format": "pcm16", "sample_rate": 16000, "features": {"speaker": "fuzz"}}


pairs = st.sampled_from([("zh", "en"), (GOOD_SRC, GOOD_TGT)])
session_templates = st.one_of(
    pairs.map(lambda p: session_init(*p)),
    st.builds(lambda final: {"type": "audio_chunk", "payload": _audio_b64(), "is_final": final}, st.booleans()),
    st.builds(lambda index, p: {"type": "utterance", "utterance_index": index, "audio": _audio_b64(),
                                "audio_format": "pcm16", "sample_rate": 16000, "src_lang": p[0], "tgt_lang": p[1],
                                "features": {"speaker": "fuzz"}},
              st.integers(0, 3), pairs),
    st.sampled_from([{"type": "client_heartbeat", "timestamp": 1}, {"type": "tts_started"},
                     {"type": "tts_play_ended"}, {"type": "session_close", "reason": "fuzz"}]),
)


def hostile_register(node_id: str | None) -> dict[str, Any]:
    return node_register(node_id, languages=HOSTILE_LANGUAGES, capacity=2)


node_ids = st.one_of(st.none(), st.text(min_size=1, max_size=12).map(lambda s: f"hostile-{s}"))
job_ids = st.one_of(st.text(max_size=12), st.just("job-unknown"))
def hostile_register_claiming(count: int) -> dict[str, Any]:
    """A registration claiming ``count`` distinct languages: past [limits] max_node_languages (64) at 65."""
    return node_register(None, languages=tuple(f"x{i}" for i in range(count)), capacity=2)


node_templates = st.one_of(
    node_ids.map(hostile_register),
    st.sampled_from(CLAIMED_LANGUAGES).map(hostile_register_claiming),
    st.just(heartbeat("hostile", languages=HOSTILE_LANGUAGES)),
    st.builds(lambda job_id, index: {"type": "job_result", "job_id": job_id, "attempt_id": 1, "node_id": "hostile",
                                     "session_id": "s-unknown", "utterance_index": index, "success": True,
                                     "text_asr": "a", "text_translated": "t", "extra": {"k": 1}},
              job_ids, st.integers(0, 3)),
    st.builds(lambda job_id, kind: {"type": kind, "job_id": job_id, "attempt_id": 1},
              job_ids, st.sampled_from(["job_ack", "job_started"])),
    st.builds(lambda job_id: {"type": "asr_partial", "job_id": job_id, "text": "p", "is_final": False}, job_ids),
    st.just({"type": "node_error", "code": "X", "message": "fuzz"}),
)


@st.composite
def mutated(draw: st.DrawFn, templates: st.SearchStrategy[dict[str, Any]]) -> dict[str, Any]:
    """A valid message with up to three fields replaced by hostile values, removed, or added."""
    message = dict(draw(templates))
    for _ in range(draw(st.integers(1, 3))):
        keys = sorted(message)
        how = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        if how == "add" or not keys:
            message[draw(st.sampled_from(["extra", "features", "trace_id", "session_id", "node_id"]))] = draw(
                hostile_values)
        elif how == "delete":
            message.pop(draw(st.sampled_from(keys)))
        else:
            message[draw(st.sampled_from(keys))] = draw(hostile_values)
    return message


@st.composite
def at_the_edge(draw: st.DrawFn, templates: st.SearchStrategy[dict[str, Any]]) -> dict[str, Any]:
    """A valid message with one field pushed to the edge of its own kind: a number beyond 64 bits or a float
    too big for any integer, an object or list nested past the depth bound, a string that is long, empty, NaN-like
    or carries control characters."""
    message = dict(draw(templates))
    key = draw(st.sampled_from(sorted(message)))
    value = message[key]
    if isinstance(value, bool) or value is None:
        message[key] = draw(json_values)
    elif isinstance(value, (int, float)):
        message[key] = draw(st.sampled_from(BIG_NUMBERS))
    elif isinstance(value, (dict, list)):
        message[key] = nested(draw(st.sampled_from(DEPTHS)))
    else:
        message[key] = draw(st.sampled_from(NAN_LIKE_TEXT) | st.sampled_from(LONG_STRING_SIZES).map(
            lambda n: "x" * n))
    return message


def frames(templates: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[Frame]:
    return st.one_of(
        templates.map(lambda message: Frame(Kind.JSON, message)),
        mutated(templates).map(lambda message: Frame(Kind.JSON, message)),
        at_the_edge(templates).map(lambda message: Frame(Kind.JSON, message)),
        json_values.map(lambda value: Frame(Kind.JSON, value)),
        st.text(max_size=40).map(lambda text: Frame(Kind.TEXT, text)),
        st.binary(max_size=64).map(lambda data: Frame(Kind.BINARY, data)),
        st.sampled_from([b"\xff", b"\xc3", b'{"type": "\xed\xa0\x80"}', b"\x80abc", b"ok\xf8"]).map(
            lambda data: Frame(Kind.BAD_UTF8, data)),
    )


@st.composite
def hostile_connections(draw: st.DrawFn, endpoints: tuple[str, ...] = ("session", "node"),
                        endings: tuple[Ending, ...] = tuple(Ending)) -> Hostile:
    endpoint = draw(st.sampled_from(endpoints))
    ending = draw(st.sampled_from(endings))
    if ending is Ending.HANDSHAKE_RESET:
        return Hostile(endpoint, None, (), ending, False)
    templates = session_templates if endpoint == "session" else node_templates
    introductions = pairs.map(lambda p: session_init(*p)) if endpoint == "session" else node_ids.map(
        hostile_register)
    return Hostile(
        endpoint=endpoint,
        introduce=draw(st.none() | introductions),
        frames=tuple(draw(st.lists(frames(templates), max_size=MAX_FRAMES))),
        ending=ending,
        reads=draw(st.booleans()),
        at_once=draw(st.booleans()),
    )


def hostile_plans(endpoints: tuple[str, ...] = ("session", "node"),
                  endings: tuple[Ending, ...] = tuple(Ending)) -> st.SearchStrategy[list[Hostile]]:
    """One example: up to MAX_HOSTILE_CONNECTIONS hostile connections, all at once."""
    return st.lists(hostile_connections(endpoints, endings), min_size=1, max_size=MAX_HOSTILE_CONNECTIONS)


#: Every ending but the aborted handshake (which has tests of its own).
CONNECTED_ENDINGS = (Ending.CLOSE, Ending.RESET, Ending.LINGER)
