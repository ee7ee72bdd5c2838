"""The outbox: output records sent to Kafka, acknowledgements tracked per owner, failed sends
retried with backoff.

An owner (a segment, a scan job: any object hashed by identity) publishes a group of outputs
with :meth:`Outbox.publish` and is complete once every one is acknowledged. kafka-python
acknowledges on its IO thread, so the outbox never acts there: each acknowledgement (or
failure) is handed to ``post`` as an :class:`Acked` event, and the owner's thread passes it
back to :meth:`Outbox.acked`, which
says when the owner is complete or schedules the failed output again (exponential backoff,
capped). :meth:`Outbox.retry_due` sends what is due. A refusal that sending again cannot cure
(:data:`PERMANENT_ERRORS`: the record is too large, or invalid) is never retried: the owner's
``permanent`` policy gives the output to send in its place (a stub dead letter) or None to
drop it; either way the owner completes. An owner whose work was dropped (its
partition went away) is :meth:`forgotten <Outbox.forget>`: its acknowledgements and retries
are ignored from then on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from kafka import KafkaProducer
from kafka.errors import (
    CorruptRecordError,
    InvalidRecordError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
)

__all__ = ["PERMANENT_ERRORS", "Acked", "Outbox", "Output"]

#: Producer errors that sending the same record again cannot cure.
PERMANENT_ERRORS: Final = (
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    InvalidRecordError,
    CorruptRecordError,
)

_log = logging.getLogger(__name__)
_MAX_BACKOFF_S: Final = 5.0


@dataclass(eq=False)
class Output:
    """One record to publish."""

    topic: str
    key: bytes | None
    value: bytes | None  # None: a tombstone
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    partition: int | None = None
    attempts: int = 0
    stub: bool = False  # sent in place of an output the broker refused for good


@dataclass(frozen=True, eq=False)
class Acked:
    """The broker acknowledged ``output`` of ``owner`` (``error`` None) or refused it."""

    owner: object
    output: Output
    error: BaseException | None


class Outbox:
    """Publishes outputs through ``producer`` on behalf of owners; see the module docstring.

    ``on_retry(owner, output, error, backoff_s)`` is told of every failed send before it is
    retried (for metrics and logs with the owner's context); ``permanent(owner, output,
    error)`` decides what replaces an output refused for good (None: nothing; without it such
    an output is dropped)."""

    def __init__(
        self,
        producer: KafkaProducer,
        *,
        post: Callable[[Acked], object],
        backoff_ms: float,
        on_retry: Callable[[object, Output, BaseException, float], object] | None = None,
        permanent: Callable[[object, Output, BaseException], Output | None] | None = None,
    ) -> None:
        self._permanent = permanent
        self._producer = producer
        self._post = post
        self._backoff_s = backoff_ms / 1000
        self._on_retry = on_retry
        self._pending: dict[object, int] = {}  # owner -> outputs not yet acknowledged
        self._retry: list[tuple[float, object, Output]] = []

    def publish(self, owner: object, outputs: Sequence[Output]) -> bool:
        """Send ``outputs`` for ``owner``; True when there is nothing to wait for (none)."""
        if not outputs:
            return True
        self._pending[owner] = self._pending.get(owner, 0) + len(outputs)
        for output in outputs:
            self._send(owner, output)
        return False

    def pending(self, owner: object) -> int:
        """Outputs of ``owner`` not acknowledged yet."""
        return self._pending.get(owner, 0)

    def forget(self, owner: object) -> None:
        """Stop tracking ``owner``: its acknowledgements and retries are ignored."""
        self._pending.pop(owner, None)
        self._retry = [r for r in self._retry if r[1] is not owner]

    def acked(self, ack: Acked) -> bool:
        """Take an acknowledgement; True when it completes its owner's outputs."""
        key = ack.owner
        if key not in self._pending:
            return False  # forgotten
        if ack.error is not None and isinstance(ack.error, PERMANENT_ERRORS):
            output = ack.output
            instead = None
            if self._permanent is not None and not output.stub:
                instead = self._permanent(ack.owner, output, ack.error)
            _log.error(
                "%s record refused for good (%s): %s",
                output.topic,
                ack.error,
                f"sending {instead.topic} stub instead" if instead is not None else "dropped",
            )
            if instead is not None:
                self._send(ack.owner, instead)
                return False
        elif ack.error is not None:
            output = ack.output
            backoff = min(_MAX_BACKOFF_S, self._backoff_s * 2 ** (output.attempts - 1))
            if self._on_retry is not None:
                self._on_retry(ack.owner, output, ack.error, backoff)
            self._retry.append((time.monotonic() + backoff, ack.owner, output))
            return False
        self._pending[key] -= 1
        if self._pending[key] > 0:
            return False
        del self._pending[key]
        return True

    def retry_due(self) -> None:
        """Send again the failed outputs whose backoff has passed."""
        if not self._retry:
            return
        now = time.monotonic()
        due = [r for r in self._retry if r[0] <= now]
        self._retry = [r for r in self._retry if r[0] > now]
        for _, owner, output in due:
            if owner in self._pending:
                self._send(owner, output)

    def next_retry(self) -> float | None:
        """When the next retry is due (``time.monotonic()``), if any is waiting."""
        return min((r[0] for r in self._retry), default=None)

    def _send(self, owner: object, output: Output) -> None:
        output.attempts += 1
        try:
            future: Any = self._producer.send(
                output.topic,
                key=output.key,
                value=output.value,
                headers=output.headers,
                partition=output.partition,
            )
        except Exception as e:  # buffer full, too large, closed: retried like a failed ack
            self._post(Acked(owner, output, e))
            return
        future.add_callback(lambda _meta: self._post(Acked(owner, output, None)))
        future.add_errback(lambda exc: self._post(Acked(owner, output, exc)))
