"""The review queue fed from live traffic: a reader of the flags topic (``clipguard.flags``)
that puts every incident the workers open and close into the studio's queue
(:class:`~consumers.studio.queue.ReviewQueue`).

It joins no consumer group and commits nothing to Kafka: it reads every partition of the
topic, from the offsets its queue has recorded (from the beginning the first time), and writes
each poll's incidents with the offsets past them in one SQLite transaction. Several studios may
read the same topic; a restarted studio goes on where it stopped. A record that is not a flag
event (too large, not JSON, not the schema) is logged with its ``topic[partition]@offset``,
counted and stepped over. Broker outages are retried with a backoff doubling from 1 s to 30 s;
:attr:`FlagFeed.status` says what it is doing, for the Review page.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Final

from pydantic import ValidationError

from consumers.kafka_auth import client_security
from consumers.studio.incidents import StudioIncident, incident_of
from consumers.studio.queue import ReviewQueue
from pipeline.events import FlagEvent

__all__ = ["MAX_VALUE_BYTES", "FlagFeed"]

_log = logging.getLogger(__name__)

#: A flag event is a few hundred bytes; a larger record value is not read.
MAX_VALUE_BYTES: Final = 64 * 1024
_POLL_MS: Final = 300
_MAX_RECORDS: Final = 1000
_RECHECK_S: Final = 30.0  # how often partitions added to the topic are looked for
_BACKOFF_S: Final = (1.0, 30.0)


class FlagFeed:
    """Reads ``topic`` on ``bootstrap_servers`` into ``queue`` (see the module docstring)."""

    def __init__(self, queue: ReviewQueue, *, bootstrap_servers: str, topic: str) -> None:
        self.queue = queue
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.status = "not started"
        self.read = 0  # flag events read
        self.skipped = 0  # records that were not flag events
        self._consumer: Any = None
        self._partitions: set[int] = set()
        self._checked = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- running --------------------------------------------------------------------------------

    def start(self) -> None:
        """Run in a thread of its own until :meth:`stop`."""
        if self._thread is None:
            self._thread = threading.Thread(target=self.run, name="studio-flag-feed", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def run(self, *, timeout: float | None = None) -> None:
        """Poll until :meth:`stop` (or for ``timeout`` seconds), reconnecting after failures."""
        from kafka.errors import KafkaError

        deadline = None if timeout is None else time.monotonic() + timeout
        backoff = _BACKOFF_S[0]
        try:
            while not self._stop.is_set() and (deadline is None or time.monotonic() < deadline):
                try:
                    self.poll_once()
                    backoff = _BACKOFF_S[0]
                except KafkaError as e:
                    self.status = f"cannot read {self.topic} on {self.bootstrap_servers}: {e}"
                    _log.warning("flag feed: %s; again in %.0f s", self.status, backoff)
                    self._close()
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, _BACKOFF_S[1])
        finally:
            self._close()

    def poll_once(self) -> int:
        """One poll: the flag events read into the queue (0 while the topic is missing)."""
        consumer = self._connect()
        if not self._assign(consumer):
            self._stop.wait(_POLL_MS / 1000)
            return 0
        polled = consumer.poll(timeout_ms=_POLL_MS, max_records=_MAX_RECORDS)
        found: list[StudioIncident] = []
        offsets: dict[int, int] = {}
        for tp, records in polled.items():
            for record in records:
                offsets[tp.partition] = record.offset + 1
                incident = self._incident(tp.partition, record)
                if incident is not None:
                    found.append(incident)
        if offsets:
            total = self.queue.add(found, topic=self.topic, offsets=offsets)
            self.read += len(found)
            self.status = (
                f"reading {self.topic} on {self.bootstrap_servers}: {self.read} flag events "
                f"read, {self.skipped} other records stepped over; {total} incidents queued"
            )
        return len(found)

    # -- helpers ----------------------------------------------------------------------------------

    def _incident(self, partition: int, record: Any) -> StudioIncident | None:
        where = f"{self.topic}[{partition}]@{record.offset}"
        value = record.value
        if value is None or len(value) > MAX_VALUE_BYTES:
            self.skipped += 1
            _log.warning("flag feed: %s is empty or over %d bytes; skipped", where, MAX_VALUE_BYTES)
            return None
        try:
            event = FlagEvent.model_validate_json(value)
        except ValidationError as e:
            self.skipped += 1
            first = e.errors()[0]
            _log.warning("flag feed: %s is not a flag event (%s); skipped", where, first["msg"])
            return None
        return incident_of(event, "flags")

    def _connect(self) -> Any:
        if self._consumer is None:
            from kafka import KafkaConsumer

            self.status = f"connecting to {self.bootstrap_servers}"
            self._consumer = KafkaConsumer(
                bootstrap_servers=self.bootstrap_servers,
                enable_auto_commit=False,
                request_timeout_ms=10_000,
                bootstrap_timeout_ms=10_000,
                client_id="clipguard-studio",
                **client_security(),
            )
            self._partitions = set()
        return self._consumer

    def _assign(self, consumer: Any) -> bool:
        """Whether the topic's partitions are assigned (new ones are looked for now and then)."""
        now = time.monotonic()
        if self._partitions and now - self._checked < _RECHECK_S:
            return True
        self._checked = now
        parts = set(consumer.partitions_for_topic(self.topic) or ())
        if not parts:
            self.status = f"waiting for topic {self.topic} on {self.bootstrap_servers}"
            return False
        if parts != self._partitions:
            from kafka import TopicPartition

            tps = [TopicPartition(self.topic, p) for p in sorted(parts)]
            consumer.assign(tps)
            saved = self.queue.offsets(self.topic)
            for tp in tps:
                if tp.partition in saved:
                    consumer.seek(tp, saved[tp.partition])
                else:
                    consumer.seek_to_beginning(tp)
            self._partitions = parts
            self.status = f"reading {self.topic} on {self.bootstrap_servers}"
        return True

    def _close(self) -> None:
        if self._consumer is not None:
            try:
                self._consumer.close(autocommit=False)
            finally:
                self._consumer = None
                self._partitions = set()
