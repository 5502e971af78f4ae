"""Structured log lines: ``event key=value ...`` with the ids an operator greps for.

Fields are only formatted when the level is enabled, so a stage line costs almost nothing on the hot path when
the daemon runs at ``warning``.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

FIELDS_ATTR = "trioscheduler_fields"


def emit(logger: logging.Logger, level: int, event: str, **fields: Any) -> None:
    """One line ``event key=value ...``; the fields also ride on the record for structured handlers."""
    if logger.isEnabledFor(level):
        line = " ".join([event, *(f"{k}={_format_value(v)}" for k, v in fields.items() if v is not None)])
        logger.log(level, line, extra={FIELDS_ATTR: fields})


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    text = str(value)
    if not text or any(c in text for c in ' "='):
        return '"' + text.replace('"', '\\"') + '"'
    return text


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        line = f"{stamp}.{int(record.msecs):03d}Z {record.levelname.lower()} {record.name} {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogfmtFormatter())
    root = logging.getLogger("trioscheduler")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
