"""Dead letters that fit, and outputs the broker refuses for good (no broker: the outbox's
transport is a fake the test acknowledges or fails by hand; the broker-level run is in
tests/test_hostile_records.py)."""

from __future__ import annotations

from typing import Any

from kafka.errors import MessageSizeTooLargeError
from kafka.future import Future

from consumers.worker.letters import (
    DLQ_DROPPED_TOPIC,
    DLQ_HEADERS_DROPPED,
    DLQ_KEY_DROPPED,
    DLQ_VALUE_DROPPED,
    fit_letter,
    record_size,
    stub_letter,
)
from consumers.worker.outbox import Acked, Outbox, Output
from pipeline.events import DLQ_ERROR_CLASS, DLQ_ORIGINAL_OFFSET


def test_a_letter_is_sized_with_its_headers_and_trimmed_in_order() -> None:
    ours = [(DLQ_ERROR_CLASS, b"InvalidMedia"), (DLQ_ORIGINAL_OFFSET, b"7")]
    big = [("x-big", b"h" * 5000), *ours]
    # fits: unchanged
    assert fit_letter(b"k", b"v" * 100, big, limit=10_000) == (b"k", b"v" * 100, big)
    # the headers alone are over the limit a value check would have allowed
    key, value, headers = fit_letter(b"k", b"v" * 3000, big, limit=6000)
    assert value == b"" and dict(headers)[DLQ_VALUE_DROPPED] == b"3000"
    assert dict(headers)["x-big"] and record_size(key, value, headers) <= 6000
    key, value, headers = fit_letter(b"k", b"v" * 3000, big, limit=1000)
    names = dict(headers)
    assert "x-big" not in names and names[DLQ_HEADERS_DROPPED] == b"1/5005"
    assert names[DLQ_ERROR_CLASS] == b"InvalidMedia" and names[DLQ_ORIGINAL_OFFSET] == b"7"
    assert key == b"k" and record_size(key, value, headers) <= 1000
    key, value, headers = fit_letter(b"k" * 4000, b"", big, limit=1000)
    assert key is None and dict(headers)[DLQ_KEY_DROPPED] == b"4000"


class _Producer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, Any, Future]] = []

    def send(self, topic: str, **kw: Any) -> Future:
        future = Future()
        self.sent.append((topic, kw, future))
        return future


def test_a_refused_output_is_replaced_by_a_stub_and_never_retried() -> None:
    producer = _Producer()
    events: list[Acked] = []
    retried: list[object] = []
    outbox = Outbox(
        producer,  # type: ignore[arg-type]
        post=events.append,
        backoff_ms=0,
        on_retry=lambda *a: retried.append(a),
        permanent=lambda owner, out, e: stub_letter("dlq", out, e, limit=2000),
    )
    owner = object()
    letter = Output("dlq", b"cam", b"v" * 10_000, [(DLQ_ORIGINAL_OFFSET, b"9")])
    assert outbox.publish(owner, [letter]) is False
    producer.sent[0][2].failure(MessageSizeTooLargeError("too large"))
    assert outbox.acked(events.pop()) is False and not retried
    topic, kw, future = producer.sent[1]  # the stub went out in its place
    headers = dict(kw["headers"])
    assert topic == "dlq" and kw["value"] == b"" and kw["key"] == b"cam"
    assert headers[DLQ_DROPPED_TOPIC] == b"dlq" and headers[DLQ_VALUE_DROPPED] == b"10000"
    assert headers[DLQ_ERROR_CLASS] == b"MessageSizeTooLargeError"
    assert headers[DLQ_ORIGINAL_OFFSET] == b"9"
    # the stub refused as well: dropped, and the owner completes all the same
    future.failure(MessageSizeTooLargeError("still too large"))
    assert outbox.acked(events.pop()) is True and len(producer.sent) == 2 and not retried
    # a transient error is still retried
    outbox.publish(owner, [Output("scores", None, b"1")])
    producer.sent[2][2].failure(RuntimeError("broker away"))
    assert outbox.acked(events.pop()) is False and len(retried) == 1
