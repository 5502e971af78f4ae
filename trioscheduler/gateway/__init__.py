"""The gateway (issue 14): ``POST /v1/speech/translate`` on the HTTP listener and ``WS /v1/stream`` at the door,
for callers that do not speak the session protocol. Each utterance runs as a one-shot job through the registry."""

from trioscheduler.gateway.core import Gateway, caller_principal
from trioscheduler.gateway.rest import TRANSLATE_PATH, handle_translate
from trioscheduler.gateway.stream import STREAM_PATH, serve_stream

__all__ = ["STREAM_PATH", "TRANSLATE_PATH", "Gateway", "caller_principal", "handle_translate", "serve_stream"]
