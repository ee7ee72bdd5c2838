"""Records the Kafka client cannot read: found, stepped over, reported.

kafka-python parses each fetched record batch inside ``poll()``. A record it cannot parse (a
header key that is not UTF-8, a record whose structure is corrupt) makes ``poll()`` raise
:class:`~kafka.errors.CorruptRecordError` every time it is called, at the same position: a
consumer that lets the error escape restarts into the same record and its partition never
moves again. :func:`poll_past_unreadable` polls, and when the client raises over a record it
finds the partition, takes the record's offset (the partition's position: every record before
it was returned) and seeks one past it, so the next poll goes on; the caller dead-letters or
fails what it skipped (its partition and offset: nothing else of it can be read) and commits
past it.

kafka-python parses a batch from its first record, so the records after an unreadable one in
the same batch (written by the same producer in one request) cannot be read either: each of
them is stepped over the same way, one poll at a time, and reported with its own offset.

The partition whose records raised is read from the client's fetcher (``_next_partition_records``
in kafka-python 3.0; the error does not carry it). Where that attribute is missing the error
is raised as it was: a consumer cannot guess which partition to step over.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from kafka.errors import CorruptRecordError
from kafka.structs import TopicPartition

from pipeline.errors import ClipguardError

__all__ = ["Skipped", "UnreadableRecord", "find_unreadable", "poll_past_unreadable"]

_log = logging.getLogger(__name__)


class UnreadableRecord(ClipguardError, ValueError):
    """A record the Kafka client could not parse: only its partition and offset are known."""


@dataclass(frozen=True)
class Skipped:
    """A record stepped over: where it was and why it could not be read."""

    tp: TopicPartition
    offset: int
    error: UnreadableRecord

    @property
    def where(self) -> str:
        return f"{self.tp.topic}[{self.tp.partition}]@{self.offset}"


def find_unreadable(consumer: Any) -> TopicPartition | None:
    """The partition whose records made the consumer's last ``poll()`` raise, if the client
    says (see the module docstring); None when it cannot be told."""
    fetcher = getattr(consumer, "_fetcher", None)
    part = getattr(fetcher, "_next_partition_records", None)
    tp = getattr(part, "topic_partition", None)
    if isinstance(tp, TopicPartition):
        return tp
    meta = getattr(fetcher, "_next_in_line_exception_metadata", None)
    tp = getattr(meta, "partition", None)
    return tp if isinstance(tp, TopicPartition) else None


def poll_past_unreadable(
    consumer: Any, *, timeout_ms: int, max_records: int
) -> tuple[dict[TopicPartition, list[Any]], list[Skipped]]:
    """``consumer.poll(...)``, stepping over a record the client cannot read.

    Returns the records polled and the records stepped over (at most one a call: the consumer
    is sought past it, and the next call goes on). Raises the client's error when the
    partition cannot be told."""
    try:
        return consumer.poll(timeout_ms=timeout_ms, max_records=max_records), []
    except CorruptRecordError as e:
        tp = find_unreadable(consumer)
        if tp is None or tp not in consumer.assignment():
            raise
        offset = int(consumer.position(tp))
        consumer.seek(tp, offset + 1)
        skipped = Skipped(tp, offset, UnreadableRecord(f"the Kafka client cannot read it: {e}"))
        _log.error("unreadable record %s stepped over: %s", skipped.where, e)
        return {}, [skipped]
