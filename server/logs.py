"""Structured logs: one line per event, JSON or key=value.

Use :func:`log_event` (``log_event(log, "model_ready", model="x", seconds=1.2)``). Events
are things that happen rarely (start-up, load, provider choice, drain, failures); the hot
path (each request, each batch) never logs, it reports to telemetry instead.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_RESERVED = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO,
              **fields: Any) -> None:
    """Log one event with structured fields (cheap no-op when the level is disabled)."""
    if logger.isEnabledFor(level):
        logger.log(level, event, extra={"fields": fields})


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = dict(getattr(record, "fields", None) or {})
    for key, value in record.__dict__.items():  # plain `extra=` keys too
        if key not in _RESERVED and key != "fields":
            fields.setdefault(key, value)
    if record.exc_info and record.exc_info[0] is not None:
        fields["error"] = f"{record.exc_info[0].__name__}: {record.exc_info[1]}"
    return fields


def _timestamp(record: logging.LogRecord) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{seconds}.{int(record.msecs):03d}Z"


class JsonFormatter(logging.Formatter):
    """``{"ts": ..., "level": ..., "logger": ..., "event": ..., **fields}`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        line = {"ts": _timestamp(record), "level": record.levelname.lower(),
                "logger": record.name, "event": record.getMessage()}
        line.update(_fields(record))
        return json.dumps(line, default=str, ensure_ascii=False)


def _kv_value(value: Any) -> str:
    text = str(value)
    if not text or any(c in text for c in ' "=\n\t'):
        return json.dumps(text, ensure_ascii=False)
    return text


class KeyValueFormatter(logging.Formatter):
    """``ts=... level=... logger=... event=... key=value ...`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        parts = {"ts": _timestamp(record), "level": record.levelname.lower(),
                 "logger": record.name, "event": record.getMessage()}
        parts.update(_fields(record))
        return " ".join(f"{key}={_kv_value(value)}" for key, value in parts.items())


def configure_logging(fmt: str = "json", level: str = "INFO") -> None:
    """Route the ``rnnserve`` logger tree (and warnings from libraries) to stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("rnnserve").setLevel(level)
