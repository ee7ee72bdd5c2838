"""Log lines for people (text) or for log pipelines (one JSON object a line).

Every log call of the worker may pass ``extra={"stream": ..., "where": "topic[p]@offset"}``;
the text format appends them as ``stream=... at=...``, the JSON format as fields::

    {"ts": "2026-11-28T13:40:01.123Z", "level": "WARNING", "logger": "consumers.worker",
     "message": "segment sent to the dead-letter topic: ...", "stream": "cam-7",
     "at": "clipguard.segments[2]@118"}
"""

from __future__ import annotations

import json
import logging
import time
from typing import Final, Literal

__all__ = ["JsonFormatter", "TextFormatter", "formatter"]

_CONTEXT: Final = ("stream", "where")
_TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message stream=ID at=topic[p]@offset``."""

    def __init__(self) -> None:
        super().__init__(_TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = [
            f"{'at' if key == 'where' else key}={getattr(record, key)}"
            for key in _CONTEXT
            if getattr(record, key, None) is not None
        ]
        if not context:
            return line
        head, sep, tail = line.partition("\n")  # a traceback stays below the first line
        return f"{head} {' '.join(context)}{sep}{tail}"


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ts (UTC, ms), level, logger, message, stream, at, error."""

    def format(self, record: logging.LogRecord) -> str:
        created = time.gmtime(record.created)
        millis = int(record.msecs)
        out: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", created) + f".{millis:03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in _CONTEXT:
            value = getattr(record, key, None)
            if value is not None:
                out["at" if key == "where" else key] = value
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def formatter(kind: Literal["text", "json"]) -> logging.Formatter:
    """The formatter for ``--log-format``."""
    return JsonFormatter() if kind == "json" else TextFormatter()
