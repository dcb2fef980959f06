"""Logging: one line per event on standard error, as key=value pairs a log shipper can parse
(`text`, the default) or as one JSON object per line (`json`).

A record may carry `fields` (extra={"fields": {...}}): the request log line does
(api/observing.py). They become keys of the JSON object, or key=value pairs after the message.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

_FORMAT = "ts=%(asctime)s level=%(levelname)s logger=%(name)s msg=%(message)r"


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields: dict[str, Any] = getattr(record, "fields", None) or {}
        if not fields:
            return line
        head, newline, rest = line.partition("\n")  # a traceback stays after the fields
        pairs = " ".join(f"{key}={_text(value)}" for key, value in fields.items())
        return f"{head} {pairs}{newline}{rest}"


class JSONFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, the record's fields, and exc (the
    traceback, as one string) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        line.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def _text(value: object) -> str:
    if value is None:
        return "-"
    text = str(value)
    if text and all(c.isalnum() or c in "._:/+=@-" for c in text):
        return text
    return json.dumps(text, ensure_ascii=False)


def configure_logging(level: str, log_format: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger("depot_api")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
