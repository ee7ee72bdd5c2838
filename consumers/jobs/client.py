"""The other end of scan jobs: submit them, follow their status, collect their records.

:class:`JobClient` submits jobs (one :class:`~pipeline.events.JobRequest` each, under a fresh
job id), follows ``clipguard.job-status`` until every job is done or failed, and collects the
done jobs' records from the scores and flags topics, read from where they ended when the jobs
were submitted to where they end once the last job finished (a job's records are acknowledged
before its ``done``). ``clipguard scan --bootstrap-servers`` is built on it.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError
from pydantic import ValidationError

from consumers.settings import TopicNames
from pipeline.errors import ClipguardError
from pipeline.events import FlagEvent, JobRequest, JobStatus, ScoreRecord

__all__ = ["JobClient", "JobError", "JobOutcome"]

_log = logging.getLogger(__name__)


class JobError(ClipguardError, RuntimeError):
    """Scan jobs could not be submitted or followed (broker unreachable, topics missing)."""


@dataclass(eq=False)
class JobOutcome:
    """One submitted job, as followed: its final status (None: none came in time), its last
    status of any kind, and, for a job done, its records (duplicates from a job run more
    than once dropped)."""

    job_id: str
    request: JobRequest
    final: JobStatus | None = None
    last: JobStatus | None = None
    accepted_at: float | None = None  # the (last) accepted status's time
    scores: list[ScoreRecord] = field(default_factory=list)
    flags: list[FlagEvent] = field(default_factory=list)


class JobClient:
    """Submits scan jobs and follows them until each is done or failed: what
    ``clipguard scan --bootstrap-servers`` runs.

    ``client_config`` is passed to kafka-python's clients (security settings, for example)."""

    def __init__(
        self,
        bootstrap: str,
        *,
        topics: TopicNames | None = None,
        client_config: Mapping[str, Any] | None = None,
        connect_timeout: float = 10.0,
    ) -> None:
        self.bootstrap = bootstrap
        self.topics = topics or TopicNames()
        self._config = {
            "bootstrap_servers": bootstrap.split(","),
            "request_timeout_ms": 30_000,
            "bootstrap_timeout_ms": int(connect_timeout * 1000),
            **(client_config or {}),
        }

    def run(
        self,
        requests: Sequence[JobRequest],
        *,
        timeout: float,
        on_status: Callable[[JobOutcome, JobStatus], object] | None = None,
    ) -> list[JobOutcome]:
        """Submit one job per request, follow the job status topic until every job has a
        final status (or none of them has reported for ``timeout`` seconds), then read the
        done jobs' records from the scores and flags topics. ``on_status`` sees each status
        event of the jobs as it comes. The outcomes are in the order of ``requests``."""
        t = self.topics
        try:
            consumer = KafkaConsumer(**self._config, group_id=None, enable_auto_commit=False)
        except KafkaError as e:
            raise JobError(f"cannot connect to Kafka at {self.bootstrap}: {e}") from e
        producer: Any = None
        try:
            found = consumer.topics()
            missing = [n for n in (t.jobs, t.job_status, t.scores, t.flags) if n not in found]
            if missing:
                raise JobError(
                    f"topics missing on {self.bootstrap}: {', '.join(missing)} (are the workers "
                    "set up there?)"
                )
            status_tps = _partitions(consumer, t.job_status, TopicPartition)
            record_tps = [
                *_partitions(consumer, t.scores, TopicPartition),
                *_partitions(consumer, t.flags, TopicPartition),
            ]
            consumer.assign([*status_tps, *record_tps])
            for tp, offset in consumer.end_offsets([*status_tps, *record_tps]).items():
                consumer.seek(tp, offset)  # only what happens from now on
            producer = KafkaProducer(**self._config, acks="all", linger_ms=5)
            jobs = {uuid.uuid4().hex: JobOutcome("", r) for r in requests}
            for job_id, job in jobs.items():
                job.job_id = job_id
            self._submit(producer, jobs)
            self._follow(consumer, jobs, status_tps, record_tps, timeout, on_status)
        except KafkaError as e:
            raise JobError(f"following scan jobs on {self.bootstrap} failed: {e}") from e
        finally:
            consumer.close(autocommit=False)
            if producer is not None:
                producer.close(timeout=5)
        for job in jobs.values():
            if job.final is None or job.final.state != "done":
                job.scores, job.flags = [], []
                continue
            job.scores = list({(r.seq, r.frame_index, r.tile): r for r in job.scores}.values())
            job.flags = list({(f.event_id, f.state): f for f in job.flags}.values())
        return list(jobs.values())

    def _submit(self, producer: Any, jobs: Mapping[str, JobOutcome]) -> None:
        futures = [
            producer.send(self.topics.jobs, key=job_id.encode(), value=job.request.to_json())
            for job_id, job in jobs.items()
        ]
        producer.flush(timeout=30)
        for future in futures:
            future.get(timeout=30)
        _log.info("submitted %d scan jobs to %s", len(futures), self.topics.jobs)

    def _follow(
        self,
        consumer: Any,
        jobs: Mapping[str, JobOutcome],
        status_tps: Sequence[Any],
        record_tps: Sequence[Any],
        timeout: float,
        on_status: Callable[[JobOutcome, JobStatus], object] | None,
    ) -> None:
        t = self.topics
        keys = {job_id.encode(): job for job_id, job in jobs.items()}
        last_heard = time.monotonic()
        ends: dict[Any, int] | None = None  # the records topics' ends once every job is final
        while True:
            for tp, batch in consumer.poll(timeout_ms=200).items():
                for record in batch:
                    job = keys.get(record.key) if record.key is not None else None
                    if job is None or record.value is None:
                        continue  # another job's or stream's record
                    try:
                        if tp.topic == t.job_status:
                            status = JobStatus.model_validate_json(record.value)
                        elif tp.topic == t.scores:
                            job.scores.append(ScoreRecord.model_validate_json(record.value))
                            continue
                        else:
                            job.flags.append(FlagEvent.model_validate_json(record.value))
                            continue
                    except ValidationError as e:
                        _log.warning(
                            "%s[%d]@%d: not a valid record: %s",
                            tp.topic,
                            tp.partition,
                            record.offset,
                            e,
                        )
                        continue
                    last_heard = time.monotonic()
                    if job.final is not None:
                        continue  # a job run again after it finished (a commit that failed)
                    job.last = status
                    if status.state == "accepted":  # (again, after an abandoned run: the
                        job.accepted_at = status.at  # records of both are deduplicated)
                    if status.state in ("done", "failed"):
                        job.final = status
                    if on_status is not None:
                        on_status(job, status)
            if ends is None and all(job.final is not None for job in jobs.values()):
                # the done jobs' records were acknowledged before their status: read to here
                ends = consumer.end_offsets(list(record_tps))
            if ends is not None and all(consumer.position(tp) >= end for tp, end in ends.items()):
                return
            if ends is None and time.monotonic() - last_heard > timeout:
                waiting = sum(job.final is None for job in jobs.values())
                _log.warning(
                    "%d of %d jobs unfinished: no status for %.0f s (they may still finish)",
                    waiting,
                    len(jobs),
                    timeout,
                )
                ends = consumer.end_offsets(list(record_tps))
                timeout = float("inf")


def _partitions(consumer: Any, topic: str, make: Callable[[str, int], Any]) -> list[Any]:
    return [make(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
