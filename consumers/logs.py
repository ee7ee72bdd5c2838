"""Log lines for people (text) or for log pipelines (one JSON object a line).

Every log call of the worker may pass ``extra={"stream": ..., "where": "topic[p]@offset"}``;
the text format appends them as ``stream=... at=...``, the JSON format as fields::

    {"ts": "2026-11-28T13:40:01.123Z", "level": "WARNING", "logger": "consumers.worker",
     "message": "segment sent to the dead-letter topic: ...", "stream": "cam-7",
     "at": "clipguard.segments[2]@118"}

Stream ids, job ids and URIs come from Kafka records: a newline in one would forge a log line
in the text format. Both formats cap every text argument of a message at 2000 characters and
every context field at 256, and the text format writes control characters (and the Unicode line and
paragraph separators) as escapes, so one record is one line.
"""

from __future__ import annotations

import json
import logging
import time
import unicodedata
from typing import Any, Final, Literal

__all__ = ["JsonFormatter", "TextFormatter", "escape_controls", "formatter"]

_CONTEXT: Final = ("stream", "where")
_TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_MAX_ARG: Final = 2000  # characters of one message argument in a log line
_MAX_FIELD: Final = 256  # characters of one context field (stream id, where)


def escape_controls(text: str) -> str:
    """``text`` with control characters (and U+2028, U+2029) written as escapes."""
    if text.isprintable():
        return text
    return "".join(
        ch
        if ch.isprintable() or (ch == " ")
        else (
            ch.encode("unicode_escape").decode("ascii")
            if unicodedata.category(ch) in ("Cc", "Zl", "Zp", "Cf", "Cs", "Co", "Cn")
            else ch
        )
        for ch in text
    )


def _cap(value: object, limit: int = _MAX_ARG) -> object:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]}...(+{len(value) - limit} chars)"
    return value


def _message(record: logging.LogRecord) -> str:
    """The record's message with every text argument capped."""
    args: Any = record.args
    if isinstance(args, tuple):
        args = tuple(_cap(a) for a in args)
    elif isinstance(args, dict):
        args = {k: _cap(v) for k, v in args.items()}
    msg = str(record.msg)
    if args:
        try:
            msg = msg % args
        except (TypeError, ValueError):
            msg = f"{msg} {args!r}"
    return msg


def _context(record: logging.LogRecord) -> list[tuple[str, str]]:
    return [
        ("at" if key == "where" else key, str(_cap(str(getattr(record, key)), _MAX_FIELD)))
        for key in _CONTEXT
        if getattr(record, key, None) is not None
    ]


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message stream=ID at=topic[p]@offset``."""

    def __init__(self) -> None:
        super().__init__(_TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(_message(record))
        line = super().formatMessage(record)
        context = [f"{key}={escape_controls(value)}" for key, value in _context(record)]
        return f"{line} {' '.join(context)}" if context else line


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ts (UTC, ms), level, logger, message, stream, at, error."""

    def format(self, record: logging.LogRecord) -> str:
        created = time.gmtime(record.created)
        millis = int(record.msecs)
        out: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", created) + f".{millis:03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": _message(record),
        }
        for key, value in _context(record):
            out[key] = value
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def formatter(kind: Literal["text", "json"]) -> logging.Formatter:
    """The formatter for ``--log-format``."""
    return JsonFormatter() if kind == "json" else TextFormatter()
