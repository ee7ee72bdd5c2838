"""The frame store sink: ``clipguard.embeddings`` to Parquet, in batches, committed after.

A :class:`StoreSink` is one member of a consumer group (``clipguard-store-sink`` by default;
more processes share the partitions). It reads ``frames`` records (one segment's frames as
Arrow) and ``policy-set`` snapshots (:mod:`pipeline.store.records`), keeps each partition's
frames in a buffer, and when the buffers hold ``batch_rows`` frames or the oldest is
``max_wait_s`` old, writes each partition's buffer as files named after the partition and
the offset range (``p0003-00000000000000001200-00000000000000001279``), put in place whole and
flushed to disk, and only then commits the offsets past them. A sink killed at any point
loses nothing (the uncommitted records are read again); what it wrote before dying may be
written again in a differently cut batch, so a frame can be stored twice, under the same
``frame_id``: readers deduplicate on it (backtests and searches do). A record that is not a
valid frames record is logged with its ``topic[partition]@offset`` and skipped.

Partitions taken away in a rebalance drop their buffers (the next owner reads them again);
the rebalance listener only records what happened: nothing is committed from it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Final

import pyarrow as pa
from kafka import KafkaConsumer
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata, TopicPartition

from pipeline.errors import StoreError
from pipeline.store.policysets import read_snapshot
from pipeline.store.records import KIND_HEADER, KIND_POLICY_SET, read_frames_value
from pipeline.store.writer import StoreWriter

__all__ = ["DEFAULT_GROUP", "SinkStats", "StoreSink", "file_name"]

_log = logging.getLogger(__name__)

DEFAULT_GROUP: Final = "clipguard-store-sink"


def file_name(partition: int, first: int, last: int) -> str:
    """The files of a partition's offsets ``first..last``: a replay of the same range gives
    the same name, so it overwrites."""
    return f"p{partition:04d}-{first:020d}-{last:020d}"


@dataclass
class _Buffer:
    tables: list[pa.Table] = field(default_factory=list)
    first: int = -1
    last: int = -1
    rows: int = 0
    since: float = 0.0


@dataclass
class SinkStats:
    """What a sink did."""

    records: int = 0
    frames: int = 0
    files: int = 0
    snapshots: int = 0
    skipped: int = 0
    commits: int = 0


class StoreSink:
    """Consumes the embeddings topic into the store at ``writer`` (see the module docstring)."""

    def __init__(
        self,
        writer: StoreWriter,
        *,
        bootstrap_servers: str,
        topic: str = "clipguard.embeddings",
        group_id: str = DEFAULT_GROUP,
        batch_rows: int = 50_000,
        max_wait_s: float = 10.0,
        consumer_config: dict[str, Any] | None = None,
    ) -> None:
        if batch_rows < 1 or max_wait_s <= 0:
            raise StoreError("batch_rows must be >= 1 and max_wait_s > 0")
        self.writer = writer
        self.topic = topic
        self.batch_rows = batch_rows
        self.max_wait_s = max_wait_s
        self.stats = SinkStats()
        self._buffers: dict[TopicPartition, _Buffer] = {}
        self._stop = False
        config = {
            "bootstrap_servers": bootstrap_servers.split(","),
            "group_id": group_id,
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            "max_poll_interval_ms": 10_000,  # see DESIGN.md: group joins on Tansu
            "session_timeout_ms": 10_000,
            "max_partition_fetch_bytes": 64 * 1024 * 1024,
            "fetch_max_bytes": 64 * 1024 * 1024,
            **(consumer_config or {}),
        }
        self._consumer = KafkaConsumer(**config)

    def stop(self) -> None:
        """Finish the current step, flush, commit and return from :meth:`run`."""
        self._stop = True

    def run(self, *, timeout: float | None = None, idle_s: float | None = None) -> SinkStats:
        """Consume until :meth:`stop`, ``timeout`` seconds, or ``idle_s`` seconds without a
        record while owning partitions (then flush); the stats."""
        self._consumer.subscribe([self.topic])
        started = last_record = time.monotonic()
        try:
            while not self._stop:
                now = time.monotonic()
                if timeout is not None and now - started > timeout:
                    break
                if idle_s is not None and now - last_record > idle_s:
                    break
                polled = self._consumer.poll(timeout_ms=200)
                if not self._consumer.assignment():
                    last_record = time.monotonic()  # idle only counts once partitions are ours
                self._drop_revoked()
                for tp, records in polled.items():
                    last_record = time.monotonic()
                    for record in records:
                        self._take(tp, record)
                if self._due():
                    self.flush()
            self.flush()
        finally:
            self._consumer.close(autocommit=False)
        return self.stats

    def _take(self, tp: TopicPartition, record: Any) -> None:
        self.stats.records += 1
        where = f"{tp.topic}[{tp.partition}]@{record.offset}"
        kind = dict(record.headers or []).get(KIND_HEADER)
        buffer = self._buffers.setdefault(tp, _Buffer())
        if buffer.first < 0:
            buffer.first, buffer.since = record.offset, time.monotonic()
        buffer.last = record.offset
        try:
            if kind == KIND_POLICY_SET:
                stored = read_snapshot(record.value or b"", where=where)
                if self.writer.write_snapshot(stored.id, record.value):
                    self.stats.snapshots += 1
                return
            table = read_frames_value(record.value or b"", where=where)
        except StoreError as e:
            _log.warning("skipped: %s", e)
            self.stats.skipped += 1
            return
        buffer.tables.append(table)
        buffer.rows += table.num_rows

    def _due(self) -> bool:
        rows = sum(b.rows for b in self._buffers.values())
        if rows >= self.batch_rows:
            return True
        oldest = min((b.since for b in self._buffers.values() if b.first >= 0), default=None)
        return oldest is not None and time.monotonic() - oldest >= self.max_wait_s

    def flush(self) -> None:
        """Write every partition's buffer, then commit past it."""
        offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        for tp, buffer in list(self._buffers.items()):
            if buffer.first < 0:
                continue
            if buffer.tables:
                table = pa.concat_tables(buffer.tables)
                name = file_name(tp.partition, buffer.first, buffer.last)
                written = self.writer.write(table, name)
                self.stats.files += len(written)
                self.stats.frames += table.num_rows
            offsets[tp] = OffsetAndMetadata(buffer.last + 1, "", -1)
            self._buffers[tp] = _Buffer()
        if not offsets:
            return
        try:
            self._consumer.commit(offsets)  # only once the files are durably in place
        except KafkaError as e:  # e.g. a rebalance took the partitions: their next owner
            _log.warning("commit failed, the records will be read again: %s", e)  # rereads
            return
        self.stats.commits += 1

    def _drop_revoked(self) -> None:
        owned = self._consumer.assignment()
        for tp in [tp for tp in self._buffers if tp not in owned]:
            del self._buffers[tp]  # not committed: the partition's next owner reads it again
