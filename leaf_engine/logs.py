"""Structured logs: one JSON object per line on stdout, in the shape Cloud Logging parses.

Cloud Run / Cloud Functions turn a JSON line into a LogEntry: ``severity`` and ``message`` are recognised,
every other key lands in ``jsonPayload`` and can be filtered on (``jsonPayload.request_id="..."``).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

LOGGER_NAME = "leaf"
CONTEXT_KEYS = ("request_id", "region", "period", "item_id", "object", "event_id", "state")

MAX_LINE_CHARS = 64_000
"""Longest log line written; Cloud Logging caps an entry at 256 KB and hostile values can be megabytes."""
FIELD_CHARS = 4_000
"""Longest excerpt of one field of an over-long entry."""

_SEVERITY = {
    logging.DEBUG: "DEBUG",
    logging.INFO: "INFO",
    logging.WARNING: "WARNING",
    logging.ERROR: "ERROR",
    logging.CRITICAL: "CRITICAL",
}


class JsonFormatter(logging.Formatter):
    """Formats a record as a Cloud Logging structured entry (severity, message, time, context fields)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "severity": _SEVERITY.get(record.levelno, "DEFAULT"),
            "message": record.getMessage(),
            "time": datetime.fromtimestamp(record.created, UTC).isoformat().replace("+00:00", "Z"),
            "logger": record.name,
        }
        fields = getattr(record, "fields", None) or {}
        entry.update({k: v for k, v in fields.items() if v is not None})
        if record.exc_info:
            entry["stack_trace"] = self.formatException(record.exc_info)
        try:
            line = json.dumps(entry, default=str, ensure_ascii=False)
        except (ValueError, TypeError, RecursionError) as e:  # a field that cannot be JSON must not lose the line
            line = json.dumps({**{k: entry[k] for k in ("severity", "time", "logger")},
                               "message": str(entry["message"]), "log_error": f"{type(e).__name__}: {e}"},
                              default=str, ensure_ascii=False)
        if len(line) > MAX_LINE_CHARS:  # keep the entry parseable: shrink its fields, not the JSON text
            entry = {k: (_clip(v, FIELD_CHARS) if k not in ("severity", "time", "logger") else v)
                     for k, v in entry.items()}
            entry["truncated"] = True
            line = json.dumps(entry, default=str, ensure_ascii=False)
        # Lone surrogates (from hostile input) cannot be written as UTF-8: escape them instead of losing the line.
        return line.encode("utf-8", "backslashreplace").decode("utf-8")


def _clip(value: Any, limit: int) -> Any:
    from .decoding import clip

    return clip(value, limit)


def setup_json_logging(level: int = logging.INFO, stream: Any = None) -> logging.Logger:
    """Route the ``leaf`` logger to JSON lines on ``stream`` (stdout). Safe to call more than once."""
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(level)
    logger.propagate = False
    target = stream or sys.stdout
    for h in logger.handlers:
        if getattr(h, "_leaf_json", False) and getattr(h, "stream", None) is target:
            return logger
    handler = logging.StreamHandler(target)
    handler.setFormatter(JsonFormatter())
    handler._leaf_json = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    return logger


def log(level: int, message: str, **fields: Any) -> None:
    """Log ``message`` with context fields (request_id, region, period, ...) on the ``leaf`` logger."""
    logging.getLogger(LOGGER_NAME).log(level, message, extra={"fields": fields})


def info(message: str, **fields: Any) -> None:
    log(logging.INFO, message, **fields)


def warning(message: str, **fields: Any) -> None:
    log(logging.WARNING, message, **fields)


def error(message: str, **fields: Any) -> None:
    log(logging.ERROR, message, **fields)
