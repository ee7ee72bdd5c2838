"""Dead letters that always fit: sized with their headers, trimmed, or replaced by a stub.

A dead letter carries the failed record's key, value and headers plus the ``clipguard.*``
headers that say why it failed. The producer refuses a record larger than its
``max_request_size`` (Apache Kafka also refuses one over the topic's ``max.message.bytes``),
and such a refusal is not transient: sending the same record again fails the same way. So
:func:`fit_letter` sizes the whole record (key, value, every header) before it is sent and
trims it until it fits, in this order: the value, then the original headers, then the key,
each drop named in a header. :func:`stub_letter` is what the outbox sends instead of an
output the broker refused for good (:data:`PERMANENT_ERRORS`): a small record naming what was
dropped and why.
"""

from __future__ import annotations

from typing import Final

from consumers.worker.outbox import PERMANENT_ERRORS, Output
from pipeline.events import DLQ_ERROR_CLASS, DLQ_ERROR_MESSAGE, DLQ_ORIGINAL_TOPIC

__all__ = [
    "DLQ_DROPPED_TOPIC",
    "DLQ_HEADERS_DROPPED",
    "DLQ_KEY_DROPPED",
    "DLQ_VALUE_DROPPED",
    "PERMANENT_ERRORS",
    "fit_letter",
    "record_size",
    "stub_letter",
]

#: A dead letter whose original value was too large to republish says how large it was here.
DLQ_VALUE_DROPPED: Final = "clipguard.value.dropped"
#: ... and how many original headers were dropped (their total bytes after a slash).
DLQ_HEADERS_DROPPED: Final = "clipguard.headers.dropped"
#: ... and how long the original key was, when even that had to go.
DLQ_KEY_DROPPED: Final = "clipguard.key.dropped"
#: A stub dead letter names the topic of the output the broker refused.
DLQ_DROPPED_TOPIC: Final = "clipguard.dropped.topic"

_PER_RECORD: Final = 64  # record and batch framing, generously
_PER_HEADER: Final = 10  # varint lengths of a header's key and value
_OURS: Final = "clipguard."


def record_size(key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]) -> int:
    """An upper bound of the bytes one record takes in a produce request."""
    size = _PER_RECORD + len(key or b"") + len(value or b"")
    for name, data in headers:
        size += _PER_HEADER + len(name.encode("utf-8", "replace")) + len(data or b"")
    return size


def fit_letter(
    key: bytes | None,
    value: bytes | None,
    headers: list[tuple[str, bytes]],
    *,
    limit: int,
) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]:
    """The dead letter's key, value and headers trimmed to fit in ``limit`` bytes (see the
    module docstring); what had to go is named in ``clipguard.*`` headers."""
    if record_size(key, value, headers) <= limit:
        return key, value, headers
    headers = [*headers, (DLQ_VALUE_DROPPED, str(len(value or b"")).encode())]
    value = b""
    if record_size(key, value, headers) <= limit:
        return key, value, headers
    theirs = [(n, v) for n, v in headers if not n.startswith(_OURS)]
    ours = [(n, v[:1000]) for n, v in headers if n.startswith(_OURS)]
    dropped = sum(len(n) + len(v or b"") for n, v in theirs)
    headers = [*ours, (DLQ_HEADERS_DROPPED, f"{len(theirs)}/{dropped}".encode())]
    if record_size(key, value, headers) <= limit:
        return key, value, headers
    return None, value, [*headers, (DLQ_KEY_DROPPED, str(len(key or b"")).encode())]


def stub_letter(dlq: str, output: Output, error: BaseException, *, limit: int) -> Output:
    """What is sent to ``dlq`` in place of ``output``, which the broker refused for good: its
    key (if it fits), no value, and headers naming the topic, the error and the sizes."""
    size = record_size(output.key, output.value, output.headers)
    reason = f"the broker refused a {output.topic} record of about {size} bytes: {error}"
    headers = [
        (DLQ_ERROR_CLASS, type(error).__name__.encode()),
        (DLQ_ERROR_MESSAGE, reason[:1000].encode(errors="replace")),
        (DLQ_DROPPED_TOPIC, output.topic.encode()),
        (DLQ_VALUE_DROPPED, str(len(output.value or b"")).encode()),
    ]
    original = [(n, v) for n, v in output.headers if n == DLQ_ORIGINAL_TOPIC or n.startswith(_OURS)]
    headers += [(n, v[:1000]) for n, v in original if n not in dict(headers)]
    key, _value, headers = fit_letter(output.key, b"", headers, limit=limit)
    return Output(dlq, key, b"", headers, stub=True)
