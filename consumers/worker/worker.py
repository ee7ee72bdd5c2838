"""The stream worker: start-up, the poll loop, event dispatch, rebalances and backpressure.

One :class:`Worker` is one member of the consumer group. Its threads::

    main thread     poll Kafka, accept segments, act on the other threads' events, judge
                    each stream's segments in order (streams), publish (outbox), commit
                    (offsets), pause/resume, apply rebalances, drain on SIGTERM; the only
                    thread that touches the consumer or the worker's state
    decode pool     sandboxed child processes decode segments (decoding); a finished decode
                    hands its frames straight to the encoder
    encoder         frames of every stream share batches (batching)
    policy watcher  re-reads the policy files and hash banks every ``policy_reload_interval_s``
                    and swaps in new ones in one assignment (a broken edit keeps the last good)
    producer IO     kafka-python's sender; acknowledgements come back as events

A segment's life: accepted -> decoding -> encoding -> judged in stream order -> outputs
published -> all acknowledged -> its stream's state checkpoint published and acknowledged ->
done. A partition's offset is committed up to its first segment that is not done, so an input
is committed only after every output it caused is acknowledged (at-least-once). Flag events
carry deterministic ids, so a replay after a crash publishes the same ids again.

Failures: a segment that cannot be decoded (invalid, unsupported, over a limit) or whose
headers are missing or malformed goes to the dead-letter topic once, with the error in its
headers, and is committed. A decode crash or timeout is retried once first. A failed encoder
batch, or a decode that found no decode process, is the machine's fault, not the segment's:
its segments wait and are encoded (decoded) again, never dead-lettered nor committed meanwhile,
and the worker is not ready (:mod:`recovery`). A
failed publish is retried with backoff until it succeeds or the worker stops (its input is then
not committed, and the next owner replays it).

Rebalances: kafka-python runs the rebalance listener on its IO thread, so the listener only
queues what happened; the main loop drops the in-flight work of revoked or lost partitions
(their outputs so far are duplicates the next owner may publish again with the same ids) and
commits only partitions it still owns. Every newly assigned partition starts from the group's
committed offset, paused or not as the worker is now (kafka-python 3 keeps the position and the
paused flag of a partition a rebalance revoked and gave straight back: both are set again).
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from kafka import KafkaConsumer, KafkaProducer
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata, TopicPartition
from prometheus_client import CollectorRegistry

from consumers.rebalance import reporting_listener
from consumers.settings import WorkerSettings
from consumers.unreadable import Skipped, poll_past_unreadable
from consumers.worker.batching import BatchEncoder, EncodeWork
from consumers.worker.checkpoints import Checkpoint, read_checkpoints
from consumers.worker.decoding import SegmentDecoder
from consumers.worker.embeddings import EmbeddingsOut
from consumers.worker.events import Acked, DecodeFailed, Encoded, EncodeFailed, Event
from consumers.worker.letters import stub_letter
from consumers.worker.offsets import OffsetLedger
from consumers.worker.outbox import Outbox, Output
from consumers.worker.recovery import DecodeRecovery, EncodeRetries
from consumers.worker.segments import HeaderError, Segment, check_media, parse_headers
from consumers.worker.startup import (
    WorkerBanks,
    WorkerError,
    check_topics,
    default_encoder,
    encoder_threads,
    reach,
)
from consumers.worker.streams import Stream, Streams, Verdict
from pipeline.decode import DecodeOptions, DecodePool
from pipeline.errors import InvalidMedia, LimitExceeded
from pipeline.metrics import Metrics, MetricsServer, start_http_server
from pipeline.models.base import ImageTextModel
from pipeline.models.encoders import ImageEncoder
from pipeline.policies.compile import PolicyCompiler
from pipeline.policies.judge import Judge
from pipeline.policies.store import PolicyStore

if TYPE_CHECKING:
    from consumers.jobs import JobRunner

__all__ = ["Worker", "WorkerError", "encoder_threads"]

_log = logging.getLogger(__name__)

_LAG_INTERVAL_S: Final = 1.0
_COMMIT_INTERVAL_S: Final = 0.05
_BUSY_POLL_S: Final = 0.05  # with work in flight, poll Kafka this often...
_EVENT_WAIT_S: Final = 0.01  # ...and wait this long for the other threads between polls


class Worker:
    """A stream worker built from ``settings``; :meth:`run` blocks until :meth:`stop`.

    ``registry`` is the Prometheus registry of its metrics (a fresh one by default), so tests
    can run several workers in one process; ``encoder(model, max_batch_size)`` makes the encode
    stage (tests pass one that fails on purpose)."""

    def __init__(
        self,
        settings: WorkerSettings,
        *,
        registry: CollectorRegistry | None = None,
        encoder: Callable[[ImageTextModel, int], ImageEncoder] | None = None,
    ) -> None:
        self.settings = settings
        self._make_encoder = encoder or self._default_encoder
        self.metrics = Metrics(registry if registry is not None else CollectorRegistry())
        self.metrics.ready.set_function(lambda: 1.0 if self.ready else 0.0)  # as /readyz says
        self._stop = threading.Event()
        self._stop_reason = ""
        self._events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self._early: list[Event] = []  # events taken while waiting
        self._rebalances: queue.SimpleQueue[tuple[str, set[TopicPartition]]] = queue.SimpleQueue()
        self._ledger: OffsetLedger[TopicPartition, Segment] = OffsetLedger()
        self._checkpoints: dict[TopicPartition, dict[str, Checkpoint]] = {}
        self._verdicts: dict[Segment, Verdict] = {}  # published, not yet acknowledged
        self._paused = self._joined = self._loaded = False
        self._server: MetricsServer | None = None
        self._consumer: KafkaConsumer | None = None
        self._producer: KafkaProducer | None = None
        self._pool: DecodePool | None = None
        self._encode_retries = EncodeRetries(settings.retry_backoff_ms / 1000)
        self._redecode = DecodeRecovery(
            settings.retry_backoff_ms / 1000, self.metrics.retries.labels(stage="decode")
        )
        self._batcher: BatchEncoder | None = None
        self._watcher: threading.Thread | None = None
        self._threads_stop = threading.Event()
        self._jobs: JobRunner | None = None  # scan jobs, when they run in this worker
        self._until: tuple[float | None, int | None] = (None, None)  # run(timeout=, count=)
        self._rewind: dict[TopicPartition, int] = {}  # revoked -> first offset dropped there
        self._rewound: set[TopicPartition] = set()  # sought back in this loop iteration
        self._last_lag = self._last_commit = self._last_poll = 0.0
        self._reload_errors_seen = 0
        self.banks = WorkerBanks(())  # hash banks, when settings.banks names some (_load)
        self.segments_done = 0  # for tests, the demo and benches: segments fully handled
        self.pauses = 0  # times consumption paused for backpressure
        self.first_arrival: float | None = None  # time.monotonic() of the first segment
        self.last_done: float | None = None  # ... and of the latest one done
        #: seconds from each segment's arrival (consumed) to its outputs being acknowledged,
        #: and from its producer timestamp to then (wall clock); the latest 100 000
        self.latencies: deque[float] = deque(maxlen=100_000)
        self.produce_latencies: deque[float] = deque(maxlen=100_000)

    # -- public -----------------------------------------------------------------------------

    def stop(self, reason: str = "stop requested") -> None:
        """Ask the worker to drain and exit (safe from signal handlers and other threads)."""
        if not self._stop.is_set():
            self._stop_reason = reason
            self._stop.set()

    @property
    def ready(self) -> bool:
        """Model and policies loaded, the consumer has joined its group, and the job runner
        (when there is one) is alive."""
        jobs_ok = self._jobs is None or self._jobs.healthy
        encoding = not (self._encode_retries.troubled or self._redecode.troubled)
        return self._loaded and self._joined and jobs_ok and encoding and not self._stop.is_set()

    @property
    def in_flight(self) -> int:
        """Segments consumed and not done yet."""
        return self._ledger.in_flight()

    @property
    def assigned(self) -> list[TopicPartition]:
        """The partitions this worker owns now (as its last rebalance left them)."""
        return sorted(self._ledger, key=_tp)

    def run(self, *, timeout: float | None = None, count: int | None = None) -> int:
        """Start, consume until stopped, drain, and return the exit status (0: clean).

        ``count``: stop (and drain) once that many segments are done; ``timeout``: stop that
        many seconds after start-up. Either way the worker drains as on SIGTERM."""
        if self._stop.is_set():  # stopped before it started
            _log.info("%s before start-up finished: exiting", self._stop_reason)
            return 0
        try:
            self._start()
            self._until = (time.monotonic() + timeout if timeout is not None else None, count)
            self._loop()
            return 0
        finally:
            self._shut_down()

    # -- start and stop ---------------------------------------------------------------------

    def _start(self) -> None:
        s = self.settings
        self._serve_metrics()
        self._load()
        self._connect()
        if s.jobs_enabled:  # scan jobs (consumers.jobs): their own thread and consumer group
            from consumers.jobs import start_jobs

            self._jobs = start_jobs(
                s,
                encoder=self.encoder,
                store=self.store,
                stopping=self._stop,
                on_failure=self.metrics.job_runner_failures.inc,
                banks=self.banks.snapshot,
            )

    def _serve_metrics(self) -> None:
        s = self.settings
        if not s.metrics_port:
            return
        try:
            self._server = start_http_server(
                self.metrics, port=s.metrics_port, host=s.metrics_host, ready=lambda: self.ready
            )
        except OSError as e:
            raise WorkerError(
                f"cannot serve metrics on {s.metrics_host}:{s.metrics_port}: {e} (set "
                "CLIPGUARD_METRICS_PORT to a free port, or 0 to turn the server off)"
            ) from e
        _log.info("metrics on %s/metrics (health: /healthz, /readyz)", self._server.url)

    def _embeddings_out(self) -> EmbeddingsOut | None:
        """The frame store records' builder, when ``store_embeddings`` is on."""
        s = self.settings
        if not s.store_embeddings:
            return None
        return EmbeddingsOut(
            s.topics.embeddings,
            model=self.model.name,
            encoder=self.encoder.info(),
            fit=s.decode.fit,
            resolution=self.model.input_resolution,
            thumbnails=s.store_thumbnails,
            partitions=self._embeddings_partitions,
        )

    def _embeddings_partitions(self) -> int:
        consumer = self._consumer
        topic = self.settings.topics.embeddings
        return 1 if consumer is None else len(consumer.partitions_for_topic(topic) or ())

    def _load(self) -> None:
        """The model, the policies, the encode stage and the decode pool, and their threads."""
        from pipeline.models import load_model

        s = self.settings
        device = s.resolved_device()
        self.model = load_model(s.model, device=device)  # fp32: the text tower, the reference
        banks = self.banks = WorkerBanks.of(s, on_errors=self.metrics.bank_reload_errors.inc)
        self.store = PolicyStore(list(s.policies), PolicyCompiler(self.model), banks=banks.names)
        self.encoder = self._make_encoder(self.model, s.max_batch_size)
        enc = self.encoder
        self.metrics.set_model(
            model=self.model.name, device=device, precision=enc.precision, backend=enc.backend
        )
        for refusal in enc.refused:
            _log.warning("%s", refusal)
        self.streams = Streams(
            Judge(self.model.name, encoder=enc.info()),
            s.topics,
            checkpoints=s.checkpoint_state,
            max_request_size=s.max_request_size,
            embeddings=self._embeddings_out(),
            banks=self.banks.snapshot,
            max_ts_jump_s=s.max_ts_jump_s,
            on_timeline_reset=self.metrics.timeline_resets.inc,
        )
        hashing = banks.hash_mode(self.store.current) != "none"  # frames hashed from the start
        self._pool = DecodePool(
            s.decode.processes, limits=s.decode.limits(), wait=False, hashing=hashing
        )
        sandbox = self.metrics.decode_sandbox  # the processes start while the worker goes on
        self._pool.started.add_done_callback(lambda f: sandbox.info({"seccomp": f.result()}))
        options = DecodeOptions(
            self.model.input_resolution,
            fit=s.decode.fit,
            sampling=s.sampling.rule(),
            limits=s.decode.limits(),
            hash_side=s.decode.hash_side,
        )
        self._decoder = SegmentDecoder(
            self._pool,
            options,
            decoded=self._decoded,
            post=self._events.put,
            hash_mode=lambda: banks.hash_mode(self.store.current),
            max_raw_streams=s.decode.max_raw_streams,
        )
        self._batcher = BatchEncoder(
            self.encoder,
            max_batch_size=s.max_batch_size,
            max_batch_wait_s=s.max_batch_wait_ms / 1000,
            retry_backoff_s=s.retry_backoff_ms / 1000,
            done=lambda work: self._events.put(Encoded(work.owner)),
            failed=lambda work, e: self._events.put(EncodeFailed(work.owner, e)),
            on_batch=self._batch_encoded,
            on_retry=lambda: self.metrics.retries.labels(stage="encode").inc(),
        )
        _log.info(
            "model %s on %s (image encoder %s %s, %s); policies %s",
            self.model.name,
            device,
            enc.precision,
            enc.backend,
            enc.runtime,
            self.store.current.describe(),
        )
        self._loaded = True
        self._batcher.start()
        self._watcher = threading.Thread(
            target=banks.watch,
            args=(self.store, s.policy_reload_interval_s, self._threads_stop),
            name="clipguard-policies",
            daemon=True,
        )
        self._watcher.start()

    def _default_encoder(self, model: ImageTextModel, batch_size: int) -> ImageEncoder:
        """The image encoder the settings ask for (:func:`startup.default_encoder`)."""
        return default_encoder(self.settings, self.store.current, model, batch_size)

    def _connect(self) -> None:
        s = self.settings
        _log.info("kafka: %s", json.dumps(s.consumer_config(redact=True), default=str))
        reach(s.bootstrap_servers, s.connect_timeout_s)
        try:
            self._producer = KafkaProducer(
                **s.producer_config(),
                client_id="clipguard-worker",
                linger_ms=5,
                request_timeout_ms=30_000,
            )
            self._consumer = KafkaConsumer(**s.consumer_config(), client_id="clipguard-worker")
            topics = self._consumer.topics()
        except KafkaError as e:
            raise WorkerError(f"cannot connect to Kafka at {s.bootstrap_servers}: {e}") from e
        check_topics(s, self._consumer, topics)
        self.outbox = Outbox(
            self._producer,
            post=self._events.put,
            backoff_ms=s.retry_backoff_ms,
            on_retry=self._publish_failed,
            permanent=self._refused,
        )
        self._consumer.subscribe([s.topics.segments], listener=reporting_listener(self._rebalances))

    def _shut_down(self) -> None:
        jobs = self._jobs
        if jobs is not None:  # first: it finishes or abandons its job while the pool is up
            jobs.stop()
        self._threads_stop.set()
        if self._batcher is not None:
            self._batcher.stop()
        for name, client in (("consumer", self._consumer), ("producer", self._producer)):
            if client is None:
                continue
            try:
                if isinstance(client, KafkaConsumer):
                    client.close(autocommit=False)  # leaves the group
                else:
                    client.close(timeout=5)
            except Exception as e:  # closing must not hide the reason we stopped
                _log.warning("closing the %s: %s", name, e)
        if self._pool is not None:
            self._pool.close()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
        if self._server is not None:
            self._server.close()

    # -- the main loop ----------------------------------------------------------------------

    def _loop(self) -> None:
        deadline: float | None = None
        until, count = self._until
        while True:
            if count is not None and self.segments_done >= count:
                self.stop(f"{count} segments done")
            elif until is not None and time.monotonic() >= until:
                self.stop("run timeout reached")
            if self._stop.is_set() and deadline is None:
                deadline = self._begin_drain()
            if deadline is not None and self._drained(deadline):
                return
            self._apply_rebalances()
            records = self._poll()
            self._apply_rebalances()
            if deadline is None:
                for tp, batch in records.items():
                    if tp in self._rewound:  # fetched past the rewind: they come again
                        continue
                    for record in batch:
                        self._accept(tp, record)
            self._handle_events()
            for seg in self._encode_retries.due():
                self._submit_encode(seg)
            self._redecode.due(self._decoder)
            self.outbox.retry_due()
            self._commit()
            if deadline is None:
                self._backpressure()
            self._housekeeping()

    def _begin_drain(self) -> float:
        s = self.settings
        _log.info(
            "%s: draining %d segments in flight (deadline %.0f s)",
            self._stop_reason,
            self._ledger.in_flight(),
            s.shutdown_deadline_s,
        )
        self._pause(True)
        return time.monotonic() + s.shutdown_deadline_s

    def _drained(self, deadline: float) -> bool:
        """True once draining is over: everything done, or the deadline passed."""
        if self._ledger.in_flight() == 0:
            self._commit(force=True)
            _log.info("drained; offsets committed; leaving the group")
            return True
        if time.monotonic() > deadline:
            self._commit(force=True)
            _log.warning(
                "shutdown deadline passed with %d segments unfinished: they are not committed "
                "and will be consumed again",
                self._ledger.in_flight(),
            )
            return True
        return False

    def _poll(self) -> dict[TopicPartition, list[ConsumerRecord]]:
        """Fetch no more than fits under ``max_inflight_segments``. Idle: wait up to 100 ms.
        Busy: poll without waiting, at most every _BUSY_POLL_S (each poll wakes the client's
        IO thread), and wait on the other threads' events in between."""
        assert self._consumer is not None
        inflight = self._ledger.in_flight()
        room = max(1, min(64, self.settings.max_inflight_segments - inflight))
        now = time.monotonic()
        self._rewound.clear()  # a position sought back before this poll is right for it
        records: dict[TopicPartition, list[ConsumerRecord]] = {}
        skipped: list[Skipped] = []
        if not inflight or now - self._last_poll >= _BUSY_POLL_S:
            records, skipped = poll_past_unreadable(
                self._consumer, timeout_ms=0 if inflight else 100, max_records=room
            )
            self._last_poll = now
        for record in skipped:
            self._unreadable(record)
        if not records and inflight:
            with contextlib.suppress(queue.Empty):
                self._early.append(self._events.get(timeout=_EVENT_WAIT_S))
        return records

    # -- rebalances -------------------------------------------------------------------------

    def _apply_rebalances(self) -> None:
        while True:
            try:
                what, tps = self._rebalances.get_nowait()
            except queue.Empty:
                return
            if what == "assigned":
                self._joined = True
                self._assign(tps)
            else:
                self._revoke(tps, lost=what == "lost")

    def _assign(self, tps: set[TopicPartition]) -> None:
        assert self._consumer is not None
        new = sorted((tp for tp in tps if tp not in self._ledger), key=_tp)
        for tp in new:
            self._ledger.assign(tp)
            # Start from the group's committed offset: kafka-python keeps the fetch position
            # of a partition that a rebalance revoked and gave straight back, past the work
            # dropped at the revocation (without a commit: from the first segment dropped).
            start = self._committed(tp)
            if start is None:
                start = self._rewind.get(tp)
            if start is not None:
                self._consumer.seek(tp, start)
                self._rewound.add(tp)
        self._rewind.clear()  # (a position not kept across this rebalance needs no rewind)
        if new:
            _log.info("assigned %s", ", ".join(_tp(tp) for tp in new))
            if self.settings.checkpoint_state:
                found = read_checkpoints(self.settings, [tp.partition for tp in new])
                for tp in new:  # every stream in flight elsewhere continues here (or idles out)
                    self._checkpoints[tp] = found.get(tp.partition, {})
                    for stream_id in list(self._checkpoints[tp]):
                        self._open_stream(tp, stream_id)
        if new:  # ours to decide: a partition given back keeps the paused flag it had
            (self._consumer.pause if self._paused else self._consumer.resume)(*new)
        self._last_lag = 0.0  # report the new partitions' lag at once

    def _committed(self, tp: TopicPartition) -> int | None:
        assert self._consumer is not None
        try:
            offset = self._consumer.committed(tp, timeout_ms=5000)
        except KafkaError as e:
            _log.warning("cannot read the committed offset of %s: %s", _tp(tp), e)
            return None
        return int(offset) if offset is not None else None

    def _revoke(self, tps: set[TopicPartition], *, lost: bool) -> None:
        for tp in tps:
            part = self._ledger.revoke(tp)
            if part is None:
                continue
            dropped = list(part.pending())
            for seg in dropped:
                seg.cancelled = True
                self.outbox.forget(seg)
                self._verdicts.pop(seg, None)
            if dropped and not lost:
                self._rewind[tp] = min(seg.offset for seg in dropped)
            for stream in self.streams.drop_partition(tp):
                self._decoder.close_raw(stream.stream_id)
            self._checkpoints.pop(tp, None)
            with contextlib.suppress(KeyError):  # no lag recorded for it yet
                self.metrics.consumer_lag.remove(tp.topic, str(tp.partition))
            _log.info(
                "%s %s: dropped %d segments in flight (the next owner consumes them again)",
                "lost" if lost else "revoked",
                _tp(tp),
                len(dropped),
            )

    # -- accepting a segment ----------------------------------------------------------------

    def _accept(self, tp: TopicPartition, record: ConsumerRecord) -> None:
        part = self._ledger.get(tp)
        if part is None:  # a record of a partition we no longer own
            return
        stamp = record.timestamp
        seg = Segment(
            tp=tp,
            offset=record.offset,
            key=record.key,
            value=record.value if record.value is not None else b"",
            headers=[(k, v if v is not None else b"") for k, v in (record.headers or [])],
            stream_id=(record.key or b"").decode(errors="replace"),
            created=stamp / 1000 if stamp and stamp > 0 else None,
        )
        if self.first_arrival is None:
            self.first_arrival = seg.arrived
        part.add(seg.offset, seg)
        self.metrics.segments_received.inc()
        try:
            seg.info = parse_headers(seg.headers, key=seg.key, offset=seg.offset)
            seg.stream_id = seg.info.stream_id
            check_media(record.value, seg.info.content_type, self.settings.decode.max_input_bytes)
        except (HeaderError, InvalidMedia, LimitExceeded) as e:
            seg.error, seg.ready = e, True
        stream = self._open_stream(tp, seg.stream_id)
        stream.queue.append(seg)
        stream.active = seg.arrived
        if seg.error is not None:
            self._advance(stream)
            return
        self._decoder.decode(seg)

    def _unreadable(self, skipped: Skipped) -> None:
        """A record the client could not read: a dead letter of its partition and offset,
        committed once published (the consumer is already past it)."""
        part = self._ledger.get(skipped.tp)
        if part is None:
            return
        seg = Segment(
            tp=skipped.tp, offset=skipped.offset, key=None, value=b"", headers=[], stream_id=""
        )
        seg.error, seg.ready = skipped.error, True
        part.add(seg.offset, seg)
        self.metrics.segments_received.inc()
        self._publish(self.streams.unreadable(seg))

    def _open_stream(self, tp: TopicPartition, stream_id: str) -> Stream:
        """The stream, restored from its checkpoint when the partition came with one."""
        checkpoint = self._checkpoints.get(tp, {}).pop(stream_id, None)
        return self.streams.open(tp, stream_id, self.store.current, checkpoint)

    def _decoded(self, seg: Segment) -> None:
        """A segment's frames are decoded (on the decode pool's thread): on to the encoder."""
        self.metrics.decode_seconds.observe(time.monotonic() - seg.decode_started)
        self.metrics.frames_decoded.inc(len(seg.frames))
        if not seg.frames or seg.cancelled:
            self._events.put(Encoded(seg))
            return
        self._submit_encode(seg)

    def _submit_encode(self, seg: Segment) -> None:
        assert self._batcher is not None
        work = EncodeWork(seg, [f.image for f in seg.frames], self.model.embed_dim)
        seg.embeddings = work.embeddings  # filled in as its batches finish
        self._batcher.submit(work)

    def _batch_encoded(self, seconds: float, frames: int) -> None:
        self.metrics.encode_seconds.observe(seconds)
        self.metrics.batch_size.observe(frames)

    # -- events from the other threads ------------------------------------------------------

    def _handle_events(self) -> None:
        touched: dict[int, Stream] = {}
        while True:
            if self._early:
                event = self._early.pop(0)
            else:
                try:
                    event = self._events.get_nowait()
                except queue.Empty:
                    break
            if isinstance(event, Acked):
                if self.outbox.acked(event):
                    self._outputs_acknowledged(event.owner)  # type: ignore[arg-type]
                continue
            seg = event.segment
            stream = None if seg.cancelled else self.streams.get(seg.tp, seg.stream_id)
            if stream is None:
                continue
            if isinstance(event, DecodeFailed) and self._redecode.failed(
                seg, event.error, self._decoder
            ):
                continue
            if isinstance(event, EncodeFailed):  # the encoder's fault, not the segment's
                self.metrics.retries.labels(stage="encode").inc()
                self._encode_retries.failed(seg, event.error)
                continue
            if isinstance(event, Encoded):
                self._redecode.succeeded()
            if isinstance(event, Encoded) and seg.frames:
                self._encode_retries.succeeded()
            if isinstance(event, DecodeFailed):
                seg.error = event.error
            seg.ready = True
            touched[id(stream)] = stream
        for stream in touched.values():
            self._advance(stream)

    def _advance(self, stream: Stream) -> None:
        for verdict in self.streams.advance(stream, self.store.current):
            self._publish(verdict)

    # -- publishing -------------------------------------------------------------------------

    def _publish(self, verdict: Verdict) -> None:
        seg = verdict.segment
        self.metrics.frames_scored.inc(verdict.scored)
        for event in verdict.shadow:
            self.metrics.shadow_incidents.labels(policy=event.policy, label=event.label).inc()
        if verdict.dead is not None:
            self.metrics.dlq.labels(reason=verdict.dead).inc()
        seg.phase = "outputs"
        self._verdicts[seg] = verdict
        if self.outbox.publish(seg, verdict.outputs):
            self._outputs_acknowledged(seg)

    def _outputs_acknowledged(self, seg: Segment) -> None:
        if seg.cancelled:
            return
        if seg.phase == "outputs":
            verdict = self._verdicts.pop(seg)
            if not seg.carrier:
                latency = time.monotonic() - seg.arrived
                self.metrics.end_to_end_seconds.observe(latency)
                self.latencies.append(latency)
                if seg.created is not None:
                    self.produce_latencies.append(time.time() - seg.created)
            for f in verdict.flags:
                self.metrics.flags.labels(policy=f.policy, label=f.label, state=f.state).inc()
            if verdict.checkpoint is not None:
                seg.phase = "checkpoint"
                if not self.outbox.publish(seg, [verdict.checkpoint]):
                    return
        seg.phase = "done"
        if seg.carrier:
            return
        part = self._ledger.get(seg.tp)
        if part is not None:
            part.finish(seg.offset)
        self.segments_done += 1
        self.last_done = time.monotonic()
        self.metrics.segments.labels(outcome="dlq" if seg.error is not None else "ok").inc()

    def _refused(self, owner: object, output: Output, error: BaseException) -> Output | None:
        """An output the broker refused for good: a stub dead letter goes in its place."""
        self.metrics.outputs_refused.labels(topic=output.topic).inc()
        return stub_letter(
            self.settings.topics.dlq, output, error, limit=self.settings.max_request_size // 2
        )

    def _publish_failed(
        self, owner: object, output: Output, error: BaseException, backoff: float
    ) -> None:
        self.metrics.retries.labels(stage="publish").inc()
        extra = owner.log() if isinstance(owner, Segment) else {}
        _log.error(
            "publishing to %s failed (attempt %d, retrying in %.1f s): %s",
            output.topic,
            output.attempts,
            backoff,
            error,
            extra=extra,
        )

    # -- commits, backpressure, housekeeping ------------------------------------------------

    def _commit(self, *, force: bool = False) -> None:
        assert self._consumer is not None
        now = time.monotonic()
        if not force and now - self._last_commit < _COMMIT_INTERVAL_S:
            return
        self._last_commit = now
        offsets = self._ledger.to_commit()
        if not offsets:
            return
        try:
            self._consumer.commit({tp: OffsetAndMetadata(o, "", -1) for tp, o in offsets.items()})
        except KafkaError as e:  # a rebalance took the partitions: the next owner replays
            _log.warning("commit failed (%s): those segments will be consumed again", e)
            return
        self._ledger.committed(offsets)
        _log.debug("committed %s", ", ".join(f"{_tp(tp)}@{o}" for tp, o in offsets.items()))

    def _pause(self, pause: bool) -> None:
        assert self._consumer is not None
        assigned = list(self._ledger)
        if pause:
            self._consumer.pause(*assigned)
        else:
            self._consumer.resume(*assigned)
        self._paused = pause

    def _backpressure(self) -> None:
        limit = self.settings.max_inflight_segments
        inflight = self._ledger.in_flight()
        if not self._paused and (inflight >= limit or self._redecode.troubled):
            _log.info("%d segments in flight: pausing consumption", inflight)
            self.pauses += 1
            self._pause(True)
        elif self._paused and inflight <= limit // 2 and not self._redecode.troubled:
            _log.info("%d segments in flight: resuming consumption", inflight)
            self._pause(False)

    def _housekeeping(self) -> None:
        self.metrics.inflight_segments.set(self._ledger.in_flight())
        errors = self.store.reload_errors
        if errors > self._reload_errors_seen:
            self.metrics.policy_reload_errors.inc(errors - self._reload_errors_seen)
            self._reload_errors_seen = errors
        now = time.monotonic()
        if now - self._last_lag < _LAG_INTERVAL_S:
            return
        self._last_lag = now
        assert self._consumer is not None
        for tp, part in self._ledger.partitions.items():
            lag = part.measure_lag(self._consumer.highwater(tp))
            if lag is not None:
                self.metrics.consumer_lag.labels(topic=tp.topic, partition=str(tp.partition)).set(
                    lag
                )
        idle = self.settings.stream_idle_close_s
        if idle:
            for verdict in self.streams.close_idle(
                now, idle, self.store.current, may_close=self._may_close
            ):
                self._publish(verdict)

    def _may_close(self, stream: Stream) -> bool:
        """An idle stream closes only while its partition is caught up (its next segment is
        not in the backlog); an idle raw stream's decoder (tens of MB in a decode process) is
        closed with it."""
        part = self._ledger.get(stream.tp)
        if part is None or part.lag != 0:
            return False
        if self._decoder.is_raw_open(stream.stream_id):
            _log.info("idle raw stream: closing its decoder", extra={"stream": stream.stream_id})
            self._decoder.close_raw(stream.stream_id)
        return True


# ------------------------------------------------------------------------------- helpers


def _tp(tp: TopicPartition) -> str:
    return f"{tp.topic}[{tp.partition}]"
