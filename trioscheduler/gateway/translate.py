"""What a gateway request asks for, the job it becomes, and the answer its outcome gives. Pure code.

A request is checked field by field: any fault is a ``ProtocolError`` naming the field (HTTP 400). The job is
built exactly as an ``utterance`` message on ``/ws/session`` would be (server/jobspec.py), so every rule of that
path holds (audio formats, sample rates, languages, pipeline defaults).
"""

from __future__ import annotations

import email.parser
import email.policy
from typing import Any

import attrs
import orjson

from trioscheduler.config import Config
from trioscheduler.ids import random_uuid
from trioscheduler.protocol import messages as m
from trioscheduler.protocol.codec import base64_size
from trioscheduler.protocol.errors import ErrorCode, ProtocolError
from trioscheduler.registry.requests import JobSpec
from trioscheduler.server.jobspec import UTTERANCE_AUDIO_FORMATS, build_job_spec, utterance_index
from trioscheduler.server.session_state import implicit_init, new_session_state

DEFAULT_AUDIO_FORMAT = "pcm16"
DEFAULT_SAMPLE_RATE = 16000
#: Form fields of a multipart request besides ``audio`` (the file part); others are ignored, as the original did.
TEXT_FIELDS = ("src_lang", "tgt_lang", "audio_format", "sample_rate")
#: Longest value of a text field (a language code, a format, a rate).
MAX_TEXT_FIELD_CHARS = 64

#: HTTP status of an error outcome, by code; a code a node reported is a 502 (bad gateway).
STATUS_OF_CODE: dict[str, int] = {
    ErrorCode.INVALID_MESSAGE: 400,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.REQUEST_TOO_LARGE: 413,
    ErrorCode.NO_AVAILABLE_NODE: 503,
    ErrorCode.NODE_UNAVAILABLE: 503,
    ErrorCode.SCHEDULER_BUSY: 503,
    ErrorCode.GATEWAY_BUSY: 503,
    ErrorCode.JOB_TIMEOUT: 504,
    ErrorCode.INTERNAL_ERROR: 500,
}
NODE_ERROR_STATUS = 502


@attrs.frozen
class TranslateRequest:
    audio_b64: str
    src_lang: str
    tgt_lang: str
    audio_format: str = DEFAULT_AUDIO_FORMAT
    sample_rate: int = DEFAULT_SAMPLE_RATE


def _text(fields: dict[str, Any], name: str, default: str | None = None) -> str:
    value = fields.get(name)
    if value is None:
        if default is None:
            raise ProtocolError(f"{name} is required", field=name)
        return default
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_TEXT_FIELD_CHARS \
            or not value.isprintable():
        raise ProtocolError(f"{name} must be a non-empty printable string of at most {MAX_TEXT_FIELD_CHARS} "
                            f"characters", field=name)
    return value.strip()


def _sample_rate(value: Any) -> int:
    if value is None:
        return DEFAULT_SAMPLE_RATE
    if isinstance(value, str) and value.strip().isdigit() and len(value) <= 6:
        value = int(value)
    low, high = m.SAMPLE_RATE_RANGE
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ProtocolError(f"sample_rate must be an integer within {low}..{high}", field="sample_rate")
    return value


def _audio_format(fields: dict[str, Any]) -> str:
    value = _text(fields, "audio_format", DEFAULT_AUDIO_FORMAT).lower()
    if value not in UTTERANCE_AUDIO_FORMATS:
        raise ProtocolError(f"audio_format must be one of {sorted(UTTERANCE_AUDIO_FORMATS)}", field="audio_format")
    return value


def request_of_fields(fields: dict[str, Any]) -> TranslateRequest:
    """Check the fields of a request (JSON values or form texts; ``audio`` already base64); raises ProtocolError."""
    audio = fields.get("audio")
    if not isinstance(audio, str) or not audio:
        raise ProtocolError("audio is required: base64 in JSON, or a multipart file part", field="audio")
    base64_size(audio, "audio")
    return TranslateRequest(
        audio_b64=audio,
        src_lang=_text(fields, "src_lang"),
        tgt_lang=_text(fields, "tgt_lang"),
        audio_format=_audio_format(fields),
        sample_rate=_sample_rate(fields.get("sample_rate")),
    )


def parse_json(body: bytes) -> TranslateRequest:
    try:
        fields = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ProtocolError("the body is not JSON", field="body") from None
    if not isinstance(fields, dict):
        raise ProtocolError("the body must be a JSON object", field="body")
    return request_of_fields(fields)


def parse_multipart(body: bytes, content_type: str) -> TranslateRequest:
    """``multipart/form-data``: the ``audio`` part's bytes (any file name or type) and the text fields."""
    import pybase64

    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1", "replace")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise ProtocolError("the body is not multipart/form-data with a boundary", field="body")
    fields: dict[str, Any] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str) or name in fields:
            continue
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            continue
        if name == "audio":
            fields["audio"] = pybase64.b64encode(payload).decode("ascii") if payload else ""
        elif name in TEXT_FIELDS:
            try:
                fields[name] = payload.decode("utf-8")
            except UnicodeDecodeError:
                raise ProtocolError(f"{name} is not UTF-8 text", field=name) from None
    return request_of_fields(fields)


def parse_body(body: bytes, content_type: str) -> TranslateRequest:
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind == "application/json":
        return parse_json(body)
    if kind == "multipart/form-data":
        return parse_multipart(body, content_type)
    raise ProtocolError("content-type must be application/json or multipart/form-data", field="content-type")


def job_spec(request: TranslateRequest, session_id: str, index: int, now: float, config: Config,
             tenant_id: str | None) -> JobSpec:
    """The job of one gateway utterance, built as the session path builds an ``utterance`` message's job."""
    utterance = m.Utterance(
        audio=request.audio_b64, session_id=m.Id(session_id), utterance_index=m.Count(index), manual_cut=True,
        src_lang=request.src_lang, tgt_lang=request.tgt_lang, audio_format=request.audio_format,  # type: ignore[arg-type]
        sample_rate=m.SampleRate(request.sample_rate),
    )
    init = attrs.evolve(implicit_init(utterance), tenant_id=None if tenant_id is None else m.Id(tenant_id))
    state = new_session_state(init, session_id, random_uuid(), config.segmentation)
    checked = utterance_index(state, utterance)
    return build_job_spec(state, config.segmentation, checked, now, utterance, random_uuid())


def error_body(code: str, message: str, field: str | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        body["field"] = field
    body.update({key: value for key, value in extra.items() if value is not None})
    return body


def answer(outcome: Any, duration_ms: float) -> tuple[int, dict[str, Any]]:
    """The HTTP status and JSON body for an utterance's outcome. ``duration_ms``: request received → outcome."""
    kind = type(outcome)
    duration = round(duration_ms, 3)
    if kind is m.TranslationResult:
        return 200, {"text_asr": outcome.text_asr, "text_translated": outcome.text_translated,
                     "tts_audio": outcome.tts_audio, "tts_format": outcome.tts_format, "duration_ms": duration,
                     "job_id": outcome.job_id, "node_id": outcome.node_id}
    if kind is m.MissingResult:
        # The node heard no speech: an answer with nothing in it, not a failure.
        return 200, {"text_asr": "", "text_translated": "", "tts_audio": "", "tts_format": "pcm16",
                     "duration_ms": duration, "job_id": outcome.job_id, "node_id": None,
                     "missing_reason": outcome.reason}
    code = str(outcome.code)
    status = STATUS_OF_CODE.get(code, NODE_ERROR_STATUS)
    return status, error_body(code, outcome.message, outcome.field, job_id=outcome.job_id)
