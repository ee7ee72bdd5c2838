"""Scan jobs: stored videos scanned by the worker fleet, one job per record of ``clipguard.jobs``.

A :class:`JobRunner` lives inside a stream worker (:class:`consumers.worker.Worker` starts it
when ``jobs_enabled`` is set and the jobs topic exists): a thread of its own with its own
consumer, in the consumer group ``group_id + "-jobs"``, sharing the worker's model (encoder)
and live policy store, with decode processes of its own (``jobs.processes``: a job never
holds a process that live segments wait for). It scans each job with
:meth:`pipeline.scan.Scanner.records`, the code path of ``clipguard scan``, so a job gives the
records a local scan of the same input gives, plus ``job_id`` (``source`` and stream id: the
video's path or URL). One job at a time::

    poll one job, pause the jobs partitions -> status accepted -> decode in the pool
    -> status progress (frames to score) -> encode and judge a batch at a time, publishing
       the records (key = job id) to the scores and flags topics; status progress every second
    -> every record acknowledged -> status done -> acknowledged -> commit the job's offset
    -> resume the partitions

The consumer is polled while the job decodes and between batches (its partitions paused, so it
fetches nothing), which keeps the runner in its group however long a job takes:
``max_poll_interval_ms`` never expires. A record fetched anyway (after a rebalance reassigned a
partition) is sought back to and waits.

What a job may read: jobs run only when ``jobs.allowed_roots`` or ``jobs.allowed_url_hosts``
allows something (:func:`start_jobs`); every input is decoded with those settings'
:class:`~pipeline.decode.InputAccess`, enforced in the decode process (files under the roots,
regular, opened non-blocking; URLs on allowed hosts at public addresses, each redirect checked),
and a job's ``content_type`` may not name a raw bitstream (a raw decoder reads any bytes as
video: only a file's own extension may say it is one).

Failures: a job whose value is not a valid :class:`~pipeline.events.JobRequest` fails with
:class:`InvalidJob`; an input that cannot be decoded (refused, missing, corrupt, unsupported,
over a limit) fails with its :class:`~pipeline.errors.DecodeError` (a decode crash or timeout is
tried once more first); either way the ``failed`` status carries the error class and a generic
reason (:mod:`consumers.jobs.reasons`: never a path, a size or a network detail; the log has
them) and the job is committed: the same request would fail again. Any other error is the
worker's, not the input's (a model failure, memory, no decode process can be started:
:class:`~pipeline.errors.DecodeUnavailable`): the job is logged,
abandoned uncommitted and run again after a backoff (1 s, doubling to 60 s), and the worker
reports not ready (:attr:`JobRunner.healthy`) until a job finishes again. A record or status the
broker does not acknowledge is sent again with backoff until it is, or the runner stops.

Stopping: when the worker is asked to stop, the runner finishes its current job if it can
within ``shutdown_deadline_s``; otherwise it abandons it, uncommitted, and the group's next
owner of the partition runs it again from the start (its records so far are duplicates with
the same flag event ids). A job whose partition is revoked by a rebalance and given to another
member is abandoned the same way. Jobs use the decode limits of ``clipguard scan`` (an input
of up to 2 GiB and one hour, 600 s to decode it) with the worker's ``decode.max_memory_bytes``.

The other end (submitting jobs and following them) is :mod:`consumers.jobs.client`.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import unquote, urlsplit
from urllib.request import url2pathname

from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError, KafkaTimeoutError
from kafka.structs import OffsetAndMetadata
from pydantic import ValidationError

from consumers.jobs.reasons import public_reason
from consumers.rebalance import reporting_listener
from consumers.settings import WorkerSettings
from consumers.unreadable import Skipped, poll_past_unreadable
from consumers.worker.letters import stub_letter
from consumers.worker.outbox import Acked, Outbox, Output
from pipeline.decode import DecodePool, DecodeResult, InputAccess, Limits, Sampling
from pipeline.decode.media import media_kind
from pipeline.decode.options import DEFAULT_HASH_SIDE
from pipeline.errors import (
    ClipguardError,
    DecodeCrash,
    DecodeError,
    DecodeTimeout,
    DecodeUnavailable,
)
from pipeline.events import FlagEvent, JobRequest, JobState, JobStatus, ScoreRecord
from pipeline.models.encoders import ImageEncoder
from pipeline.policies.store import PolicyStore
from pipeline.scan import Scanner, ScanOptions

if TYPE_CHECKING:
    from pipeline.hashes.store import BankSnapshot

__all__ = [
    "InvalidJob",
    "JobRunner",
    "job_options",
    "start_jobs",
]

_log = logging.getLogger(__name__)

_PROGRESS_INTERVAL_S: Final = 1.0  # most time between progress events of a running job
_TICK_S: Final = 0.2  # most time between consumer polls while a job runs
_DECODE_ATTEMPTS: Final = 2  # a decode crash or timeout is tried once more
_REASON_CHARS: Final = 1000
_BACKOFF_S: Final = 1.0  # first wait before a job that met an infrastructure error runs again
_MAX_BACKOFF_S: Final = 60.0
_runner_numbers = itertools.count(1)


class InvalidJob(ClipguardError, ValueError):
    """A job record is not a valid job request (not JSON, a missing or unknown field, a relative
    path, two sampling options...): it fails, and is committed."""


class _Abandoned(Exception):
    """The current job stops unfinished and uncommitted: its partition's owner runs it again."""


def job_options(
    request: JobRequest,
    *,
    limits: Limits | None = None,
    access: InputAccess | None = None,
    hash_side: int = DEFAULT_HASH_SIDE,
) -> ScanOptions:
    """How a job's input is decoded and sampled: its request's options, else one frame a
    second and ``pad`` (``clipguard scan``'s defaults); ``access``: what it may read; frames
    hashed for hash policies as the worker's streams are (``hash_side``)."""
    if request.keyframes:
        sampling = Sampling(mode="keyframes")
    elif request.scene_change is not None:
        sampling = Sampling(mode="scene", scene_threshold=request.scene_change)
    else:
        sampling = Sampling(mode="fps", fps=request.sample_fps or 1.0)
    return ScanOptions(
        sampling=sampling,
        fit=request.fit,
        limits=limits,
        content_type=request.content_type,
        access=access,
        hash_side=hash_side,
    )


def start_jobs(
    settings: WorkerSettings,
    *,
    encoder: ImageEncoder,
    store: PolicyStore,
    stopping: threading.Event | None = None,
    on_failure: Callable[[], object] | None = None,
    banks: Callable[[], BankSnapshot | None] = lambda: None,
) -> JobRunner | None:
    """Start a :class:`JobRunner` in its thread, with decode processes of its own
    (``jobs.processes``: a long job never holds a process live segments wait for); None
    (logged) when nothing is allowed to jobs, the jobs or job status topic does not exist or
    the broker cannot be reached: the worker goes on without jobs."""
    if not settings.jobs.access().configured:
        _log.info(
            "scan jobs off: set jobs.allowed_roots or jobs.allowed_url_hosts "
            "(CLIPGUARD_JOBS__ALLOWED_ROOTS, CLIPGUARD_JOBS__ALLOWED_URL_HOSTS) to run them"
        )
        return None
    # the limits of `clipguard scan` (an input of up to 2 GiB), the worker's memory cap; sockets
    # in the decode processes only when jobs may fetch URLs
    pool = DecodePool(
        settings.jobs.processes,
        limits=Limits(max_memory=settings.decode.max_memory_bytes),
        network=bool(settings.jobs.access().url_hosts),
        wait=False,  # the processes start while the runner connects
    )
    runner = JobRunner(
        settings,
        encoder=encoder,
        store=store,
        pool=pool,
        stopping=stopping,
        on_failure=on_failure,
        owns_pool=True,
        banks=banks,
    )
    try:
        connected = runner.connect()
    except KafkaError as e:
        _log.warning("scan jobs disabled: cannot connect to Kafka (%s)", e)
        runner.close()
        connected = False
    if not connected:
        pool.close()
        return None
    runner.start()
    return runner


# ------------------------------------------------------------------------------- one job


@dataclass(eq=False)
class _Job:
    tp: Any  # kafka TopicPartition
    offset: int
    job_id: str
    started: float = field(default_factory=time.monotonic)
    uri: str | None = None
    source: str | None = None
    policy_set: str | None = None
    frames_total: int | None = None
    frames_scored: int = 0
    flags: int = 0  # incidents: closed flag events
    result: DecodeResult | None = None  # its facts; the frames are not kept
    last_status: float = 0.0
    last_tick: float = 0.0
    revoked: bool = False  # its partition was revoked; the next assignment decides

    @property
    def where(self) -> str:
        return f"{self.tp.topic}[{self.tp.partition}]@{self.offset}"


def _source(uri: str) -> str:
    """The records' source for a (validated) job URI: the path of a ``file://`` URL, else the
    URI itself (an absolute path, or an http(s) URL)."""
    parts = urlsplit(uri)
    if parts.scheme.lower() == "file":
        return url2pathname(unquote(parts.path))
    return uri


def _parse(value: bytes | None) -> JobRequest:
    if not value:
        raise InvalidJob("the job record has no value")
    try:
        request = JobRequest.model_validate_json(value)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'job'}: {err['msg']}"
            for err in e.errors(include_url=False, include_input=False)
        )
        raise InvalidJob(f"not a valid job request: {problems}") from None
    if request.content_type is not None:
        try:
            kind, _name = media_kind(request.content_type)
        except DecodeError:
            raise InvalidJob("content_type: not a media type this worker decodes") from None
        if kind == "raw":
            raise InvalidJob(
                "content_type: a job may not declare a raw bitstream (only the file's own "
                "extension may say it is one)"
            )
    return request


# ------------------------------------------------------------------------------- the runner


class JobRunner:
    """Runs scan jobs from ``settings.topics.jobs``; see the module docstring.

    :meth:`connect`, then :meth:`start` (a thread) or :meth:`run` (this thread); :meth:`stop`
    from any thread. ``stopping`` is the worker's own stop event: the runner starts its
    shutdown deadline when either is set."""

    def __init__(
        self,
        settings: WorkerSettings,
        *,
        encoder: ImageEncoder,
        store: PolicyStore,
        pool: DecodePool,
        stopping: threading.Event | None = None,
        on_failure: Callable[[], object] | None = None,
        owns_pool: bool = False,
        banks: Callable[[], BankSnapshot | None] = lambda: None,
    ) -> None:
        self.settings = settings
        self._owns_pool = owns_pool  # closed when the runner ends
        self._on_failure = on_failure
        self.failed = False  # the runner's thread died: no more jobs here
        self.troubled = False  # the last job met an infrastructure error: backing off
        self._backoff = _BACKOFF_S
        self.encoder = encoder
        self.store = store
        self.banks = banks  # the worker's bank store's snapshot, for hash policies
        self.pool = pool
        self.group_id = settings.group_id + "-jobs"
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}-{next(_runner_numbers)}"
        self.jobs_committed = 0  # jobs finished (done or failed) and committed
        self.joined = False  # the consumer has had partitions assigned at least once
        self._stop = threading.Event()
        self._stopping = stopping if stopping is not None else threading.Event()
        self._deadline: float | None = None
        self._rebalances: queue.SimpleQueue[tuple[str, set[Any]]] = queue.SimpleQueue()
        self._consumer: Any = None
        self._acks: queue.SimpleQueue[Acked] = queue.SimpleQueue()
        self._producer: Any = None
        self._thread: threading.Thread | None = None
        self._weights: str | None = None
        self._access = settings.jobs.access()

    # -- life cycle -------------------------------------------------------------------------

    def connect(self) -> bool:
        """Connect and subscribe; False (logged, clients closed) when the jobs or job status
        topic does not exist."""
        s = self.settings
        self._producer = KafkaProducer(
            **s.producer_config(), client_id="clipguard-jobs", linger_ms=5
        )
        self._outbox = Outbox(
            self._producer,
            post=self._acks.put,
            backoff_ms=s.retry_backoff_ms,
            on_retry=self._publish_failed,
            permanent=lambda _owner, output, error: stub_letter(
                s.topics.dlq, output, error, limit=s.max_request_size // 2
            ),
        )
        self._consumer = KafkaConsumer(
            **{**s.consumer_config(), "group_id": self.group_id}, client_id="clipguard-jobs"
        )
        topics = self._consumer.topics()
        missing = [t for t in (s.topics.jobs, s.topics.job_status) if t not in topics]
        if missing:
            _log.warning(
                "scan jobs disabled: topic %s missing on %s (the worker runs without jobs)",
                " and ".join(missing),
                s.bootstrap_servers,
            )
            self.close()
            return False
        self._consumer.subscribe([s.topics.jobs], listener=reporting_listener(self._rebalances))
        _log.info("scan jobs from %s (group %s)", s.topics.jobs, self.group_id)
        return True

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="clipguard-jobs", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop: the current job is finished or abandoned within the shutdown deadline (counted
        from the first stop request), then the runner leaves its group."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.settings.shutdown_deadline_s + 15)
            if self._thread.is_alive():
                _log.warning("the job runner did not stop in time")

    def close(self) -> None:
        for name, client in (("consumer", self._consumer), ("producer", self._producer)):
            if client is None:
                continue
            try:
                if name == "consumer":
                    client.close(autocommit=False)  # leaves the group
                else:
                    client.close(timeout=5)
            except Exception as e:  # closing must not hide why we stopped
                _log.warning("closing the job runner's %s: %s", name, e)
        self._consumer = self._producer = None

    def run(self) -> None:
        """Take jobs one at a time until stopped."""
        try:
            self._weights = self.encoder.model.fingerprint()
            while not self._stopped():
                records, skipped = poll_past_unreadable(
                    self._consumer, timeout_ms=200, max_records=1
                )
                self._apply_rebalances(None)
                for record in skipped:
                    self._unreadable(record)
                for tp, batch in records.items():
                    for record in batch:
                        self._run_job(tp, record)
        except Exception:  # the worker's streams must outlive a broken job runner
            _log.exception("the job runner failed: no more scan jobs here (streams go on)")
            if self._on_failure is not None:
                self._on_failure()
            self.failed = True
        finally:
            self.close()
            if self._owns_pool:
                self.pool.close()

    def _unreadable(self, skipped: Skipped) -> None:
        """A job record the client could not read: failed (its id is its place) and
        committed, like any job that is no job request."""
        job = _Job(skipped.tp, skipped.offset, skipped.where)
        self._fail(job, skipped.error)
        self._settle(job, wait=True)
        self._commit(job)

    @property
    def healthy(self) -> bool:
        """Alive, and its last job did not meet an infrastructure error."""
        return not self.failed and not self.troubled

    def _stopped(self) -> bool:
        return self._stop.is_set() or self._stopping.is_set()

    # -- one job ----------------------------------------------------------------------------

    def _run_job(self, tp: Any, record: Any) -> None:
        self._consumer.pause(*self._consumer.assignment())
        key = record.key.decode("utf-8", "replace") if record.key else ""
        job = _Job(tp, record.offset, key or f"{tp.topic}[{tp.partition}]@{record.offset}")
        try:
            try:
                self._scan(job, _parse(record.value))
            except DecodeUnavailable as e:  # no decode process could be started: the machine's
                self.troubled = True
                raise _Abandoned(f"{e}; it is tried again in {self._backoff:.0f} s") from e
            except (DecodeError, InvalidJob) as e:
                self._fail(job, e)
            except _Abandoned:
                raise
            except KafkaError as e:  # the broker, not the job: try the job again later
                raise _Abandoned(f"Kafka: {e}") from e
            except Exception as e:  # the worker, not the input (a model failure, out of memory)
                _log.exception("job %s (%s) failed unexpectedly", job.job_id, job.where)
                self.troubled = True
                raise _Abandoned(
                    f"{type(e).__name__}: an infrastructure error, not the input's; it is tried "
                    f"again in {self._backoff:.0f} s"
                ) from e
            self._settle(job, wait=True)  # every record and the final status acknowledged
            self._commit(job)
            self.troubled, self._backoff = False, _BACKOFF_S
        except _Abandoned as e:
            _log.warning(
                "job %s (%s) abandoned, not committed (%s): the partition's owner runs it again",
                job.job_id,
                job.where,
                e,
            )
            self._outbox.forget(job)
            if self._consumer is not None and job.tp in self._consumer.assignment():
                self._consumer.seek(job.tp, job.offset)  # still ours: it comes back next
            if self.troubled and not self._stopped():  # back off before trying it again
                with contextlib.suppress(_Abandoned):
                    self._sleep(job, self._backoff)
                self._backoff = min(self._backoff * 2, _MAX_BACKOFF_S)
        finally:
            if self._consumer is not None and not self._stopped():
                self._consumer.resume(*self._consumer.assignment())

    def _scan(self, job: _Job, request: JobRequest) -> None:
        job.uri = request.uri
        job.source = _source(request.uri)
        policies = self.store.current  # one set for the whole job
        job.policy_set = policies.id
        limits = Limits(max_memory=self.settings.decode.max_memory_bytes)
        scanner = Scanner(
            self.encoder,
            policies,
            pool=self.pool,
            options=job_options(
                request,
                limits=limits,
                access=self._access,
                hash_side=self.settings.decode.hash_side,
            ),
            banks=self.banks(),  # one snapshot for the whole job, as the policies
        )
        self._status(job, "accepted")
        _log.info("job %s (%s): %s", job.job_id, job.where, job.source)
        for attempt in range(1, _DECODE_ATTEMPTS + 1):
            try:
                for record in scanner.records(
                    job.source,
                    heartbeat=lambda: self._tick(job),
                    heartbeat_s=_TICK_S,
                    decoded=lambda result: self._decoded(job, result),
                ):
                    self._publish(job, record)
                break
            except (DecodeCrash, DecodeTimeout) as e:
                if attempt == _DECODE_ATTEMPTS or job.result is not None:
                    raise
                _log.warning("job %s: decode failed (%s), trying once more", job.job_id, e)
        self._settle(job, wait=True)  # the records are on their topics before "done" says so
        result = job.result
        assert result is not None
        self._status(
            job,
            "done",
            duration=None if result.duration is None else round(result.duration, 3),
            width=result.width,
            height=result.height,
            codec=result.codec,
            frames_decoded=result.frames_decoded,
            decode_errors=result.decode_errors,
            first_decode_error=result.first_error,
        )
        _log.info(
            "job %s done: %d frames scored, %d incidents, %.1f s",
            job.job_id,
            job.frames_scored,
            job.flags,
            time.monotonic() - job.started,
        )

    def _decoded(self, job: _Job, result: DecodeResult) -> None:
        job.result = result
        job.frames_total = len({f.index for f in result.frames})
        self._status(job, "progress")

    def _publish(self, job: _Job, record: ScoreRecord | FlagEvent) -> None:
        s = self.settings
        record = record.model_copy(update={"job_id": job.job_id})
        if isinstance(record, ScoreRecord):
            job.frames_scored += record.tile == 0
            self._send(job, s.topics.scores, record.to_json())
        else:
            job.flags += record.state == "closed"
            self._send(job, s.topics.flags, record.to_json())
        now = time.monotonic()
        if now - job.last_tick >= _TICK_S:
            self._tick(job)
            self._settle(job, wait=False)
        if now - job.last_status >= _PROGRESS_INTERVAL_S:
            self._status(job, "progress")

    def _fail(self, job: _Job, error: BaseException) -> None:
        """The detail to the log, the error class and a generic reason to the status."""
        _log.warning(
            "job %s (%s) failed: %s: %s",
            job.job_id,
            job.where,
            type(error).__name__,
            str(error)[:_REASON_CHARS],
        )
        reason = public_reason(error, own_reason=InvalidJob)[:_REASON_CHARS]
        self._status(job, "failed", error_class=type(error).__name__, reason=reason)

    def _status(self, job: _Job, state: JobState, **facts: Any) -> None:
        status = JobStatus(
            job_id=job.job_id,
            state=state,
            at=round(time.time(), 3),
            worker=self.worker_id,
            uri=job.uri,
            source=job.source,
            model=self.encoder.model.name,
            weights_sha256=self._weights,
            policy_set=job.policy_set,
            frames_total=job.frames_total,
            frames_scored=job.frames_scored,
            flags=job.flags,
            **facts,
        )
        self._send(job, self.settings.topics.job_status, status.to_json())
        job.last_status = time.monotonic()

    # -- Kafka ------------------------------------------------------------------------------

    def _send(self, job: _Job, topic: str, value: bytes) -> None:
        self._outbox.publish(job, [Output(topic, job.job_id.encode(), value)])

    def _settle(self, job: _Job, *, wait: bool) -> None:
        """Take the acknowledgements so far and send failed records again (with backoff);
        with ``wait``, until every record of the job is acknowledged."""
        while True:
            while True:
                try:
                    self._outbox.acked(self._acks.get_nowait())
                except queue.Empty:
                    break
            self._outbox.retry_due()
            if not wait or self._outbox.pending(job) == 0:
                return
            with contextlib.suppress(KafkaTimeoutError):  # not all yet: poll, look again
                self._producer.flush(timeout=_TICK_S)
            self._tick(job)

    def _publish_failed(
        self, owner: object, output: Output, error: BaseException, backoff: float
    ) -> None:
        _log.error(
            "job %s: publishing to %s failed (attempt %d, again in %.1f s): %s",
            getattr(owner, "job_id", "?"),
            output.topic,
            output.attempts,
            backoff,
            error,
        )

    def _sleep(self, job: _Job, seconds: float) -> None:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            time.sleep(min(left, _TICK_S))
            self._tick(job)

    def _tick(self, job: _Job) -> None:
        """While a job runs: keep the consumer in its group (poll, nothing fetched), follow
        rebalances, and give up on the job when the shutdown deadline has passed."""
        now = time.monotonic()
        job.last_tick = now
        if self._deadline is None and self._stopped():
            self._deadline = now + self.settings.shutdown_deadline_s
            _log.info(
                "stopping: finishing job %s within %.0f s",
                job.job_id,
                self.settings.shutdown_deadline_s,
            )
        if self._deadline is not None and now > self._deadline:
            raise _Abandoned("the shutdown deadline passed")
        records, skipped = poll_past_unreadable(self._consumer, timeout_ms=0, max_records=1)
        for tp, batch in records.items():  # fetched after a rebalance reset the pause
            if batch:
                self._consumer.seek(tp, batch[0].offset)
        for record in skipped:  # taken up in its turn, after this job
            self._consumer.seek(record.tp, record.offset)
        self._consumer.pause(*self._consumer.assignment())
        self._apply_rebalances(job)

    def _apply_rebalances(self, job: _Job | None) -> None:
        while True:
            try:
                what, tps = self._rebalances.get_nowait()
            except queue.Empty:
                return
            _log.debug("jobs partitions %s: %s", what, ", ".join(sorted(map(str, tps))) or "none")
            if what == "assigned":
                self.joined = True
                if job is not None and job.revoked:
                    if job.tp not in tps:
                        raise _Abandoned(
                            f"{job.tp.topic}[{job.tp.partition}] went to another member"
                        )
                    job.revoked = False  # ours again: finish it
            elif job is not None and job.tp in tps:
                if what == "lost":
                    raise _Abandoned(f"{job.tp.topic}[{job.tp.partition}] was lost")
                job.revoked = True

    def _commit(self, job: _Job) -> None:
        while job.revoked:  # a rebalance is deciding who owns the job's partition
            self._sleep(job, _TICK_S)
        try:
            self._consumer.commit({job.tp: OffsetAndMetadata(job.offset + 1, "", -1)})
        except KafkaError as e:
            _log.warning(
                "job %s: commit failed (%s): the partition's owner runs it again", job.job_id, e
            )
            return
        self.jobs_committed += 1
        if job.tp in self._consumer.assignment():
            # a rebalance that gave the partition back reset its position to the job
            self._consumer.seek(job.tp, job.offset + 1)
