"""The stream worker: segments in from Kafka, scores, flag events and dead letters out.

One :class:`Worker` is one member of the consumer group. Its threads::

    main thread     poll Kafka, accept segments, judge them in stream order, publish, commit,
                    pause/resume, apply rebalances, drain on SIGTERM (the only thread that
                    touches the consumer)
    decode pool     sandboxed child processes decode segments (pipeline.decode.pool); a
                    finished decode hands its frames straight to the encoder queue
    encoder         frames of every stream share batches (at most ``max_batch_size`` frames,
                    waiting at most ``max_batch_wait_ms`` to fill one) on the model's device
    policy watcher  re-reads the policy files every ``policy_reload_interval_s`` and swaps in
                    a freshly compiled set (a broken edit keeps the last good one)
    producer IO     kafka-python's sender; acknowledgements come back as events

A segment's life: accepted -> decoding -> encoding -> judged (in stream order: every segment
of a stream is judged after the one before it, so the temporal state sees frames in order) ->
outputs published (score records, flag events; or one dead letter) -> all acknowledged ->
state checkpoint published and acknowledged -> done. A partition's offset is committed up to
its first segment that is not done: an input is committed only after every output it caused is
acknowledged (at-least-once). Flag events carry deterministic ids, so a replay after a crash
publishes the same ids again; a stream's temporal state is checkpointed to the state topic
(key = stream id, the segments' partition number), and a worker that takes a partition over
continues from the checkpoint.

Failures: a segment that cannot be decoded (invalid, unsupported, over a limit) or that lacks
its headers goes to the dead-letter topic once, with the error in its headers, and is
committed. A decode crash or timeout is retried once first. A failed publish is retried with
backoff until it succeeds or the worker stops (its input is then not committed, and the next
owner replays it).

Rebalances: kafka-python runs the rebalance listener on its IO thread, so the listener only
queues what happened; the main loop drops the in-flight work of revoked or lost partitions
(their outputs so far are duplicates the next owner may publish again with the same ids) and
commits only partitions it still owns.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import queue
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import torch
from prometheus_client import CollectorRegistry

from consumers.rebalance import reporting_listener
from consumers.settings import WorkerSettings
from pipeline.decode import (
    RAW_TYPES,
    DecodeOptions,
    DecodePool,
    DecodeResult,
    Frame,
    normalize_content_type,
)
from pipeline.encoder import Encoder
from pipeline.errors import (
    ClipguardError,
    ConfigError,
    DecodeCrash,
    DecodeTimeout,
    InvalidMedia,
    LimitExceeded,
)
from pipeline.events import (
    DLQ_ATTEMPTS,
    DLQ_ERROR_CLASS,
    DLQ_ERROR_MESSAGE,
    DLQ_ORIGINAL_OFFSET,
    DLQ_ORIGINAL_PARTITION,
    DLQ_ORIGINAL_TOPIC,
    FlagEvent,
)
from pipeline.metrics import Metrics, MetricsServer, start_http_server
from pipeline.models.model import CLIP
from pipeline.policies.compile import PolicyCompiler
from pipeline.policies.judge import FrameRef, Judge, Judgement, PolicyFacts
from pipeline.policies.snapshot import PolicySet
from pipeline.policies.store import PolicyStore
from pipeline.policies.temporal import StreamTemporalState

__all__ = [
    "END_HEADER",
    "FPS_HEADER",
    "HeaderError",
    "Worker",
    "WorkerError",
    "encoder_threads",
]

_log = logging.getLogger(__name__)

#: A segment header that ends its stream ("1"): open incidents close, the stream's state goes.
END_HEADER: Final = "stream-end"
#: Frame rate of a raw H.264/HEVC stream (its chunks carry no timestamps); optional.
FPS_HEADER: Final = "fps"
#: A dead letter whose original value was too large to republish says how large it was here.
DLQ_VALUE_DROPPED: Final = "clipguard.value.dropped"

_CHECKPOINT_FORMAT: Final = 1
_DECODE_ATTEMPTS: Final = 2  # a crash or timeout is tried once more before the DLQ
_ENCODE_ATTEMPTS: Final = 2  # so is a failed encoder batch
_REQUEST_OVERHEAD: Final = 64 * 1024
_MAX_BACKOFF_S: Final = 5.0
_LAG_INTERVAL_S: Final = 1.0
_COMMIT_INTERVAL_S: Final = 0.05
_BUSY_POLL_S: Final = 0.05  # with work in flight, poll Kafka this often...
_EVENT_WAIT_S: Final = 0.01  # ...and wait this long for the other threads between polls
_STATE_READ_TIMEOUT_S: Final = 5.0  # well inside max_poll_interval_ms: it runs on the loop


class WorkerError(ClipguardError, RuntimeError):
    """The worker cannot start or keep running (broker unreachable, topics missing...)."""


class HeaderError(ClipguardError, ValueError):
    """A segment's headers are missing or malformed: it goes to the dead-letter topic."""


# ------------------------------------------------------------------------------- records


@dataclass(eq=False)
class _Output:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    partition: int | None = None
    attempts: int = 0


Phase = Literal["pending", "outputs", "checkpoint", "done"]


@dataclass(eq=False)
class _Segment:
    """One consumed record and everything the worker knows about it."""

    tp: Any  # kafka TopicPartition
    offset: int
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]
    arrived: float  # time.monotonic() when consumed
    created: float | None = None  # the record's timestamp (producer's clock), seconds
    stream_id: str = ""
    seq: int = 0
    start_ts: float | None = None
    content_type: str = ""
    raw: bool = False
    fps: float | None = None
    end: bool = False
    attempts: int = 0
    encode_failed: bool = False
    error: BaseException | None = None
    frames: list[Frame] = field(default_factory=list)
    refs: list[FrameRef] = field(default_factory=list)
    embeddings: torch.Tensor | None = None
    flags: list[FlagEvent] = field(default_factory=list)  # published with this segment
    unencoded: int = 0
    ready: bool = False  # decoded and encoded (or failed): may be judged
    cancelled: bool = False  # its partition went away: drop it
    phase: Phase = "pending"
    unacked: int = 0
    checkpoint: bytes | None = None  # the stream's state after this segment
    scored: int = 0
    decode_started: float = 0.0
    carrier: bool = False  # not a record: carries the outputs of an idle stream's close

    @property
    def where(self) -> str:
        return f"{self.tp.topic}[{self.tp.partition}]@{self.offset}"

    def log(self) -> dict[str, str]:
        return {"stream": self.stream_id or "?", "where": self.where}


@dataclass(eq=False)
class _Stream:
    stream_id: str
    tp: Any
    state: StreamTemporalState
    facts: dict[str, PolicyFacts] = field(default_factory=dict)
    queue: deque[_Segment] = field(default_factory=deque)  # accepted, not yet judged
    raw_open: bool = False
    raw_base: float | None = None  # stream time of a raw stream's first frame
    restored_offset: int = -1  # segments at or before this offset are already in the state
    active: float = field(default_factory=time.monotonic)  # when it last sent a segment


@dataclass(eq=False)
class _Partition:
    tp: Any
    segments: dict[int, _Segment] = field(default_factory=dict)  # offset -> segment, in order
    committed: int | None = None  # last offset committed by us (the next to read)
    done_to: int | None = None  # every segment before this offset is done
    checkpoints: dict[str, Mapping[str, Any]] = field(default_factory=dict)
    lag: int | None = None  # records not yet done, at the last look (None: not known yet)


# ------------------------------------------------------------------------------- the worker


class Worker:
    """A stream worker built from ``settings``; :meth:`run` blocks until :meth:`stop`.

    ``registry`` is the Prometheus registry of its metrics (a fresh one by default), so tests
    can run several workers in one process."""

    def __init__(
        self,
        settings: WorkerSettings,
        *,
        registry: CollectorRegistry | None = None,
        encoder: Callable[[CLIP, int], Encoder] = Encoder.for_model,
    ) -> None:
        self.settings = settings
        self._make_encoder = encoder  # (model, max batch size) -> the encode stage
        self.metrics = Metrics(registry if registry is not None else CollectorRegistry())
        self.metrics.ready.set_function(lambda: 1.0 if self.ready else 0.0)  # as /readyz says
        self._stop = threading.Event()
        self._stop_reason = ""
        self._events: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._rebalances: queue.SimpleQueue[tuple[str, set[Any]]] = queue.SimpleQueue()
        self._frames: queue.SimpleQueue[_Segment | None] = queue.SimpleQueue()
        self._parts: dict[Any, _Partition] = {}
        self._streams: dict[tuple[Any, str], _Stream] = {}
        self._retry: list[tuple[float, _Segment, _Output]] = []
        self._paused = False
        self._joined = False
        self._loaded = False
        self._server: MetricsServer | None = None
        self._consumer: Any = None
        self._producer: Any = None
        self._pool: DecodePool | None = None
        self._threads: list[threading.Thread] = []
        self._threads_stop = threading.Event()
        self._jobs: Any = None  # consumers.jobs runner, when scan jobs run in this worker
        self._until: tuple[float | None, int | None] = (None, None)  # run(timeout=, count=)
        self._rewind: dict[Any, int] = {}  # revoked partition -> first offset dropped there
        self._rewound: set[Any] = set()  # partitions sought back in this loop iteration
        self._last_lag = 0.0
        self._last_commit = 0.0
        self._last_poll = 0.0
        self._early: list[tuple[Any, ...]] = []  # an event taken while waiting
        self._reload_errors_seen = 0
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
        """Model and policies loaded and the consumer has joined its group."""
        return self._loaded and self._joined and not self._stop.is_set()

    def run(self, *, timeout: float | None = None, count: int | None = None) -> int:
        """Start, consume until stopped, drain, and return the exit status (0: clean).

        ``count``: stop (and drain) once that many segments are done; ``timeout``: stop that
        many seconds after start-up. Either way the worker drains as on SIGTERM."""
        if self._stop.is_set():  # stopped before it started
            _log.info("%s before start-up finished: exiting", self._stop_reason)
            return 0
        try:
            self._start()
            self._until = (
                time.monotonic() + timeout if timeout is not None else None,
                count,
            )
            self._loop()
            return 0
        finally:
            self._shut_down()

    # -- start and stop ---------------------------------------------------------------------

    def _start(self) -> None:
        s = self.settings
        if s.metrics_port:
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
        from pipeline.models import load_clip

        device = s.resolved_device()
        dtype = getattr(torch, s.dtype)
        self.model = load_clip(s.model, device=device, dtype=dtype)
        self.metrics.set_model(model=self.model.name, device=device, dtype=s.dtype)
        self.store = PolicyStore(list(s.policies), PolicyCompiler(self.model))
        self.judge = Judge(self.model.name)
        self.encoder = self._make_encoder(self.model, s.max_batch_size)
        self._pool = DecodePool(s.decode.processes, limits=s.decode.limits())
        _log.info(
            "model %s on %s (%s); policies %s (set %s)",
            self.model.name,
            device,
            s.dtype,
            ", ".join(f"{lp.policy.id} v{lp.policy.version}" for lp in self.store.current),
            self.store.current.id,
        )
        self._loaded = True
        for target, name in ((self._encode_loop, "encoder"), (self._watch_policies, "policies")):
            thread = threading.Thread(target=target, name=f"clipguard-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        self._connect()
        if s.jobs_enabled:  # scan jobs (consumers.jobs): their own thread and consumer group
            from consumers.jobs import start_jobs

            self._jobs = start_jobs(
                s, encoder=self.encoder, store=self.store, pool=self._pool, stopping=self._stop
            )

    def _connect(self) -> None:
        from kafka import KafkaConsumer, KafkaProducer
        from kafka.errors import KafkaError

        s = self.settings
        _log.info("kafka: %s", json.dumps(s.consumer_config(redact=True), default=str))
        _reach(s.bootstrap_servers, s.connect_timeout_s)
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
        missing = [
            t
            for t in (s.topics.segments, s.topics.scores, s.topics.flags, s.topics.dlq)
            if t not in topics
        ]
        if s.checkpoint_state and s.topics.state not in topics:
            missing.append(s.topics.state)
        if missing:
            raise WorkerError(
                f"topics missing on {s.bootstrap_servers}: {', '.join(missing)} (create them, "
                "or run `clipguard broker` for a local broker with every topic)"
            )
        if s.checkpoint_state:
            have = len(self._consumer.partitions_for_topic(s.topics.state) or ())
            need = len(self._consumer.partitions_for_topic(s.topics.segments) or ())
            if have < need:
                raise WorkerError(
                    f"topic {s.topics.state} has {have} partitions; it needs at least as many "
                    f"as {s.topics.segments} ({need})"
                )
        self._consumer.subscribe([s.topics.segments], listener=reporting_listener(self._rebalances))

    def _shut_down(self) -> None:
        jobs = self._jobs  # set by _start when scan jobs run here
        if jobs is not None:  # first: it finishes or abandons its job while the pool is up
            jobs.stop()
        self._threads_stop.set()
        self._frames.put(None)
        if self._consumer is not None:
            try:
                self._consumer.close(autocommit=False)  # leaves the group
            except Exception as e:  # closing must not hide the reason we stopped
                _log.warning("closing the consumer: %s", e)
        if self._producer is not None:
            try:
                self._producer.close(timeout=5)
            except Exception as e:
                _log.warning("closing the producer: %s", e)
        if self._pool is not None:
            self._pool.close()
        for thread in self._threads:
            thread.join(timeout=5)
        if self._server is not None:
            self._server.close()

    # -- the main loop ----------------------------------------------------------------------

    def _loop(self) -> None:
        s = self.settings
        deadline: float | None = None
        until, count = self._until
        while True:
            if count is not None and self.segments_done >= count:
                self.stop(f"{count} segments done")
            elif until is not None and time.monotonic() >= until:
                self.stop("run timeout reached")
            if self._stop.is_set() and deadline is None:
                deadline = time.monotonic() + s.shutdown_deadline_s
                _log.info(
                    "%s: draining %d segments in flight (deadline %.0f s)",
                    self._stop_reason,
                    self._inflight(),
                    s.shutdown_deadline_s,
                )
                self._pause(True)
            if deadline is not None:
                if self._inflight() == 0:
                    self._commit(force=True)
                    _log.info("drained; offsets committed; leaving the group")
                    return
                if time.monotonic() > deadline:
                    self._commit(force=True)
                    _log.warning(
                        "shutdown deadline passed with %d segments unfinished: they are not "
                        "committed and will be consumed again",
                        self._inflight(),
                    )
                    return
            self._apply_rebalances()
            inflight = self._inflight()
            room = max(1, min(64, s.max_inflight_segments - inflight))  # fetch no more than fits
            records: dict[Any, list[Any]] = {}
            now = time.monotonic()
            self._rewound.clear()  # a position sought back before this poll is right for it
            if not inflight:
                records = self._consumer.poll(timeout_ms=100, max_records=room)
                self._last_poll = now
            elif now - self._last_poll >= _BUSY_POLL_S:
                # Busy: poll without waiting, at most every _BUSY_POLL_S (each poll wakes the
                # client's IO thread), and wait on the other threads' events in between.
                records = self._consumer.poll(timeout_ms=0, max_records=room)
                self._last_poll = now
            if not records and inflight:
                self._wait_event(_EVENT_WAIT_S)
            self._apply_rebalances()
            if deadline is None:
                for tp, batch in records.items():
                    if tp in self._rewound:  # fetched past the rewind: they come again
                        continue
                    for record in batch:
                        self._accept(tp, record)
            self._handle_events()
            self._retry_due()
            self._commit()
            if deadline is None:
                self._backpressure()
            self._housekeeping()

    def _inflight(self) -> int:
        """Segments consumed and not done yet (done ones wait only for the next commit)."""
        return sum(
            1 for p in self._parts.values() for seg in p.segments.values() if seg.phase != "done"
        )

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

    def _assign(self, tps: set[Any]) -> None:
        new = [tp for tp in tps if tp not in self._parts]
        for tp in new:
            self._parts[tp] = _Partition(tp)
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
            _log.info("assigned %s", ", ".join(sorted(_tp(tp) for tp in new)))
            if self.settings.checkpoint_state:
                self._read_checkpoints([self._parts[tp] for tp in new])
                for tp in new:  # every stream in flight elsewhere continues here (or idles out)
                    part = self._parts[tp]
                    for stream_id in list(part.checkpoints):
                        self._stream(part, stream_id)
        if self._paused and new:
            self._consumer.pause(*new)
        self._last_lag = 0.0  # report the new partitions' lag at once

    def _committed(self, tp: Any) -> int | None:
        from kafka.errors import KafkaError

        try:
            offset = self._consumer.committed(tp, timeout_ms=5000)
        except KafkaError as e:
            _log.warning("cannot read the committed offset of %s: %s", _tp(tp), e)
            return None
        return int(offset) if offset is not None else None

    def _revoke(self, tps: set[Any], *, lost: bool) -> None:
        for tp in tps:
            part = self._parts.pop(tp, None)
            if part is None:
                continue
            dropped = [seg for seg in part.segments.values() if seg.phase != "done"]
            for seg in dropped:
                seg.cancelled = True
            if dropped and not lost:
                self._rewind[tp] = min(seg.offset for seg in dropped)
            for key in [k for k in self._streams if k[0] == tp]:
                stream = self._streams.pop(key)
                if stream.raw_open and self._pool is not None:
                    self._pool.close_stream(stream.stream_id)
            with contextlib.suppress(KeyError):  # no lag recorded for it yet
                self.metrics.consumer_lag.remove(tp.topic, str(tp.partition))
            _log.info(
                "%s %s: dropped %d segments in flight (the next owner consumes them again)",
                "lost" if lost else "revoked",
                _tp(tp),
                len(dropped),
            )

    def _read_checkpoints(self, parts: Sequence[_Partition]) -> None:
        """Read the state topic's partitions of newly assigned segment partitions to the end;
        keep each stream's newest checkpoint (a tombstone forgets it)."""
        from kafka import KafkaConsumer, TopicPartition

        s = self.settings
        config = {
            k: v
            for k, v in s.consumer_config().items()
            if k not in ("group_id", "max_poll_interval_ms", "session_timeout_ms")
        }
        reader = KafkaConsumer(**config, group_id=None, client_id="clipguard-worker-state")
        try:
            state_tps = {TopicPartition(s.topics.state, p.tp.partition): p for p in parts}
            reader.assign(list(state_tps))
            reader.seek_to_beginning(*state_tps)
            ends = reader.end_offsets(list(state_tps))
            remaining = {tp for tp, end in ends.items() if end > 0}
            deadline = time.monotonic() + _STATE_READ_TIMEOUT_S
            count = 0
            while remaining and time.monotonic() < deadline:
                for tp, batch in reader.poll(timeout_ms=200).items():
                    part = state_tps[tp]
                    for record in batch:
                        count += 1
                        stream = record.key.decode(errors="replace") if record.key else ""
                        if record.value is None:
                            part.checkpoints.pop(stream, None)
                            continue
                        try:
                            data = json.loads(record.value)
                        except ValueError:
                            continue
                        old = part.checkpoints.get(stream)
                        if old is None or data.get("offset", -1) >= old.get("offset", -1):
                            part.checkpoints[stream] = data
                for tp in list(remaining):
                    if reader.position(tp) >= ends[tp]:
                        remaining.discard(tp)
            if remaining:
                _log.warning(
                    "state checkpoints of %s not read to the end in %.0f s; streams without "
                    "one start afresh",
                    ", ".join(_tp(tp) for tp in remaining),
                    _STATE_READ_TIMEOUT_S,
                )
            _log.info(
                "read %d state checkpoints (%d streams) for %s",
                count,
                sum(len(p.checkpoints) for p in parts),
                ", ".join(_tp(p.tp) for p in parts),
            )
        finally:
            reader.close(autocommit=False)

    # -- accepting a segment ----------------------------------------------------------------

    def _accept(self, tp: Any, record: Any) -> None:
        part = self._parts.get(tp)
        if part is None:  # a record of a partition we no longer own
            return
        seg = _Segment(
            tp=tp,
            offset=record.offset,
            key=record.key,
            value=record.value if record.value is not None else b"",
            headers=[(k, v if v is not None else b"") for k, v in (record.headers or [])],
            arrived=time.monotonic(),
            created=record.timestamp / 1000 if record.timestamp and record.timestamp > 0 else None,
        )
        if self.first_arrival is None:
            self.first_arrival = seg.arrived
        part.segments[seg.offset] = seg
        self.metrics.segments_received.inc()
        try:
            _parse_headers(seg)
            if record.value is None or not seg.value:
                raise HeaderError("the record has no value (empty segment)")
            _check_size(seg, self.settings.decode.max_input_bytes)
            _check_whole(seg)
        except (HeaderError, InvalidMedia, LimitExceeded) as e:
            seg.stream_id = seg.stream_id or (seg.key or b"").decode(errors="replace")
            seg.error, seg.ready = e, True
        stream = self._stream(part, seg.stream_id)
        stream.queue.append(seg)
        stream.active = seg.arrived
        if seg.error is not None:
            self._advance(stream)
            return
        self._decode(stream, seg)

    def _stream(self, part: _Partition, stream_id: str) -> _Stream:
        key = (part.tp, stream_id)
        stream = self._streams.get(key)
        if stream is not None:
            return stream
        policies = self.store.current
        checkpoint = part.checkpoints.pop(stream_id, None)
        if checkpoint is not None:
            try:
                stream = _restore(stream_id, part.tp, checkpoint, self.judge, policies)
                _log.info(
                    "stream state restored from its checkpoint at offset %d",
                    stream.restored_offset,
                    extra={"stream": stream_id, "where": _tp(part.tp)},
                )
            except (ConfigError, KeyError, TypeError, ValueError) as e:
                _log.warning(
                    "unusable state checkpoint, starting afresh: %s",
                    e,
                    extra={"stream": stream_id, "where": _tp(part.tp)},
                )
        if stream is None:
            stream = _Stream(stream_id, part.tp, self.judge.new_state(stream_id, policies))
        self._streams[key] = stream
        return stream

    def _decode(self, stream: _Stream, seg: _Segment) -> None:
        assert self._pool is not None
        s = self.settings
        seg.attempts += 1
        seg.decode_started = time.monotonic()
        options = DecodeOptions(
            self.encoder.resolution,
            fit=s.decode.fit,
            sampling=s.sampling.rule(),
            limits=s.decode.limits(),
        )
        if seg.raw:
            if not stream.raw_open:
                self._pool.open_stream(
                    stream.stream_id, RAW_TYPES[seg.content_type], options, fps=seg.fps
                ).add_done_callback(lambda f: f.exception())  # a failure shows in feed()
                stream.raw_open = True
                stream.raw_base = None
            if stream.raw_base is None:
                stream.raw_base = seg.start_ts if seg.start_ts is not None else 0.0
            futures: list[Future[Any]] = [self._pool.feed(stream.stream_id, seg.value)]
            if seg.end:
                futures.append(self._pool.close_stream(stream.stream_id))
                stream.raw_open = False
            base = stream.raw_base
            _when_all(futures, lambda fs: self._decoded_raw(seg, fs, base))
        else:
            future = self._pool.submit_bytes(seg.value, seg.content_type, options)
            future.add_done_callback(lambda f: self._decoded(seg, f))

    # The two callbacks below run on the decode pool's thread: they only touch the segment and
    # hand it on (to the encoder queue, or as an event to the main thread).

    def _decoded(self, seg: _Segment, future: Future[DecodeResult]) -> None:
        error = future.exception()
        if error is not None:
            self._events.put(("decode-failed", seg, error))
            return
        result = future.result()
        start = seg.start_ts if seg.start_ts is not None else 0.0
        self._frames_ready(seg, list(result.frames), lambda f: start + f.t)

    def _decoded_raw(self, seg: _Segment, futures: Sequence[Future[Any]], base: float) -> None:
        frames: list[Frame] = []
        for future in futures:
            error = future.exception()
            if error is not None:
                self._events.put(("decode-failed", seg, error))
                return
            frames += future.result()
        self._frames_ready(seg, frames, lambda f: base + f.t)

    def _frames_ready(
        self, seg: _Segment, frames: list[Frame], stream_time: Callable[[Frame], float]
    ) -> None:
        self.metrics.decode_seconds.observe(time.monotonic() - seg.decode_started)
        self.metrics.frames_decoded.inc(len(frames))
        seg.frames = frames
        seg.refs = [
            FrameRef(seq=seg.seq, frame_index=f.index, ts=round(stream_time(f), 6), tile=f.tile)
            for f in frames
        ]
        if not frames or seg.cancelled:
            self._events.put(("encoded", seg))
            return
        seg.embeddings = torch.empty(len(frames), self.model.embed_dim)
        seg.unencoded = len(frames)
        self._frames.put(seg)

    # -- the encoder thread -----------------------------------------------------------------

    def _encode_loop(self) -> None:
        """Batch frames across segments and streams; hand each fully encoded segment back."""
        s = self.settings
        wait = s.max_batch_wait_ms / 1000
        carry: deque[tuple[_Segment, int]] = deque()  # (segment, next frame) not yet batched
        while not self._threads_stop.is_set():
            if not carry:
                try:
                    seg = self._frames.get(timeout=0.2)
                except queue.Empty:
                    continue
                if seg is None:
                    return
                carry.append((seg, 0))
            deadline = time.monotonic() + wait
            batch: list[tuple[_Segment, int]] = []
            while True:
                while carry and len(batch) < s.max_batch_size:
                    seg, i = carry.popleft()
                    if seg.cancelled or seg.encode_failed:
                        continue
                    take = min(len(seg.frames) - i, s.max_batch_size - len(batch))
                    batch += [(seg, j) for j in range(i, i + take)]
                    if i + take < len(seg.frames):
                        carry.appendleft((seg, i + take))
                if len(batch) >= s.max_batch_size:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    more = self._frames.get(timeout=left)
                except queue.Empty:
                    break
                if more is None:
                    self._threads_stop.set()
                    break
                carry.append((more, 0))
            if batch:
                self._encode(batch)

    def _encode(self, batch: list[tuple[_Segment, int]]) -> None:
        images = [seg.frames[i].image for seg, i in batch]
        for attempt in range(1, _ENCODE_ATTEMPTS + 1):
            started = time.monotonic()
            try:
                embeddings = self.encoder.encode(images)
                break
            except Exception as e:  # e.g. the device ran out of memory: once more, then DLQ
                if attempt < _ENCODE_ATTEMPTS:
                    self.metrics.retries.labels(stage="encode").inc()
                    _log.warning("encoding %d frames failed, trying once more: %s", len(batch), e)
                    time.sleep(self.settings.retry_backoff_ms / 1000)
                    continue
                _log.exception("encoding a batch of %d frames failed", len(batch))
                for seg in {id(seg): seg for seg, _ in batch}.values():
                    seg.encode_failed = True  # its frames still queued are skipped
                    self._events.put(("decode-failed", seg, e))
                return
        self.metrics.encode_seconds.observe(time.monotonic() - started)
        self.metrics.batch_size.observe(len(batch))
        finished: list[_Segment] = []
        for row, (seg, i) in enumerate(batch):
            assert seg.embeddings is not None
            seg.embeddings[i] = embeddings[row]
            seg.unencoded -= 1
            if seg.unencoded == 0:
                finished.append(seg)
        for seg in finished:
            self._events.put(("encoded", seg))

    # -- events from the other threads ------------------------------------------------------

    def _wait_event(self, timeout: float) -> None:
        """Block until another thread reports something (or ``timeout``); keep it for
        :meth:`_handle_events`."""
        with contextlib.suppress(queue.Empty):
            self._early.append(self._events.get(timeout=timeout))

    def _handle_events(self) -> None:
        touched: dict[int, _Stream] = {}
        while True:
            if self._early:
                event = self._early.pop(0)
            else:
                try:
                    event = self._events.get_nowait()
                except queue.Empty:
                    break
            kind, seg = event[0], event[1]
            if kind == "acked":
                self._acked(seg, event[2], event[3])
                continue
            if seg.cancelled:
                continue
            stream = self._streams.get((seg.tp, seg.stream_id))
            if stream is None:
                continue
            if kind == "decode-failed":
                error = event[2]
                if isinstance(error, DecodeCrash | DecodeTimeout) and (
                    seg.attempts < _DECODE_ATTEMPTS and not seg.raw
                ):
                    self.metrics.retries.labels(stage="decode").inc()
                    _log.warning("decode failed (%s), trying once more", error, extra=seg.log())
                    self._decode(stream, seg)
                    continue
                if seg.raw and stream.raw_open and self._pool is not None:
                    self._pool.close_stream(stream.stream_id)  # the next chunk starts afresh
                    stream.raw_open = False
                seg.error = error
            seg.ready = True
            touched[id(stream)] = stream
        for stream in touched.values():
            self._advance(stream)

    def _advance(self, stream: _Stream) -> None:
        """Judge and publish the stream's ready segments, oldest first, stopping at the first
        one that is not ready (later ones wait: the temporal state needs frames in order)."""
        while stream.queue and (stream.queue[0].ready or stream.queue[0].cancelled):
            seg = stream.queue.popleft()
            if seg.cancelled:
                continue
            if seg.error is not None:
                self._dead_letter(seg, stream)
            else:
                self._judge(stream, seg)

    def _judge(self, stream: _Stream, seg: _Segment) -> None:
        store = self.store
        policies = store.current  # one set for the whole segment
        refs = seg.refs
        if (
            seg.offset > stream.restored_offset
            and seg.seq == 0
            and refs
            and stream.state.last_ts is not None
            and refs[0].ts <= stream.state.last_ts
        ):  # the stream started over (its timeline went back to its beginning)
            _log.info("stream restarted at seq 0: closing its incidents", extra=seg.log())
            closing = self.judge.finish(stream.state, policies, facts=stream.facts)
            stream.state = self.judge.new_state(stream.stream_id, policies)
            stream.facts = {}
        else:
            closing = Judgement()
        embeddings = seg.embeddings if seg.embeddings is not None else torch.zeros(0, 1)
        out = self.judge.judge(stream.state, refs, embeddings, policies, facts=stream.facts)
        out.flags[:0] = closing.flags
        out.shadow[:0] = closing.shadow
        if seg.end:
            end = self.judge.finish(stream.state, policies, facts=stream.facts)
            out.flags += end.flags
            out.shadow += end.shadow
        seg.frames, seg.embeddings = [], None  # the pixels are no longer needed...
        seg.value = b""  # ...nor the media (kept until now for a dead letter)
        seg.scored = len(out.scores)
        self.metrics.frames_scored.inc(len(out.scores))
        for event in out.shadow:
            self.metrics.shadow_incidents.labels(policy=event.policy, label=event.label).inc()
        if self.settings.checkpoint_state:
            seg.checkpoint = None if seg.end else _checkpoint(stream, seg)
        if seg.end:
            self._end_stream(stream, seg)
        s = self.settings
        key = stream.stream_id.encode()
        messages = [_Output(s.topics.scores, key, r.to_json()) for r in out.scores]
        messages += [_Output(s.topics.flags, key, f.to_json()) for f in out.flags]
        seg.flags = out.flags
        for f in out.flags:
            _log.info(
                "flag %s %s/%s at %.2f s (peak %.3f)",
                f.state,
                f.policy,
                f.label,
                f.start_ts if f.state == "open" else (f.end_ts or f.start_ts),
                f.peak_score,
                extra=seg.log(),
            )
        self._publish(seg, messages, "outputs")

    def _end_stream(self, stream: _Stream, seg: _Segment) -> None:
        """The stream's last segment was judged: forget the stream. When its id is already
        reused (segments of a new stream queued behind the last one), the new one starts
        afresh."""
        if stream.queue:
            stream.state = self.judge.new_state(stream.stream_id, self.store.current)
            stream.facts = {}
        else:
            self._streams.pop((stream.tp, stream.stream_id), None)

    def _dead_letter(self, seg: _Segment, stream: _Stream) -> None:
        """Publish the segment as a dead letter. When it was its stream's last, the stream
        still ends: its open incidents close with the dead letter."""
        error = seg.error
        assert error is not None
        s = self.settings
        reason = type(error).__name__
        headers = [
            *seg.headers,
            (DLQ_ERROR_CLASS, reason.encode()),
            (DLQ_ERROR_MESSAGE, str(error)[:1000].encode(errors="replace")),
            (DLQ_ORIGINAL_TOPIC, seg.tp.topic.encode()),
            (DLQ_ORIGINAL_PARTITION, str(seg.tp.partition).encode()),
            (DLQ_ORIGINAL_OFFSET, str(seg.offset).encode()),
            (DLQ_ATTEMPTS, str(max(1, seg.attempts)).encode()),
        ]
        value: bytes | None = seg.value
        if len(seg.value) + _REQUEST_OVERHEAD > s.max_request_size:
            headers.append((DLQ_VALUE_DROPPED, str(len(seg.value)).encode()))
            value = b""
        _log.warning(
            "segment sent to the dead-letter topic: %s: %s", reason, error, extra=seg.log()
        )
        self.metrics.dlq.labels(reason=reason).inc()
        seg.frames, seg.embeddings, seg.checkpoint = [], None, None
        messages = [_Output(s.topics.dlq, seg.key, value, headers)]
        if seg.end:
            ended = self.judge.finish(stream.state, self.store.current, facts=stream.facts)
            seg.flags = ended.flags
            messages += [
                _Output(s.topics.flags, stream.stream_id.encode(), f.to_json()) for f in ended.flags
            ]
            self._end_stream(stream, seg)  # (a raw stream's decoder closed when it arrived)
        self._publish(seg, messages, "outputs")

    # -- publishing -------------------------------------------------------------------------

    def _publish(self, seg: _Segment, messages: list[_Output], phase: Phase) -> None:
        seg.phase = phase
        seg.unacked = len(messages)
        if not messages:
            self._phase_done(seg)
            return
        for message in messages:
            self._send(seg, message)

    def _send(self, seg: _Segment, message: _Output) -> None:
        message.attempts += 1
        try:
            future = self._producer.send(
                message.topic,
                key=message.key,
                value=message.value,
                headers=message.headers,
                partition=message.partition,
            )
        except Exception as e:  # buffer full, too large, closed: retried like a failed ack
            self._events.put(("acked", seg, message, e))
            return
        future.add_callback(lambda _meta: self._events.put(("acked", seg, message, None)))
        future.add_errback(lambda exc: self._events.put(("acked", seg, message, exc)))

    def _acked(self, seg: _Segment, message: _Output, error: BaseException | None) -> None:
        if error is not None:
            if seg.cancelled:
                return
            backoff = min(
                _MAX_BACKOFF_S, self.settings.retry_backoff_ms / 1000 * 2 ** (message.attempts - 1)
            )
            self.metrics.retries.labels(stage="publish").inc()
            _log.error(
                "publishing to %s failed (attempt %d, retrying in %.1f s): %s",
                message.topic,
                message.attempts,
                backoff,
                error,
                extra=seg.log(),
            )
            self._retry.append((time.monotonic() + backoff, seg, message))
            return
        seg.unacked -= 1
        if seg.unacked == 0 and not seg.cancelled:
            self._phase_done(seg)

    def _retry_due(self) -> None:
        if not self._retry:
            return
        now = time.monotonic()
        due = [r for r in self._retry if r[0] <= now]
        self._retry = [r for r in self._retry if r[0] > now]
        for _, seg, message in due:
            if not seg.cancelled:
                self._send(seg, message)

    def _phase_done(self, seg: _Segment) -> None:
        if seg.phase == "outputs":
            if not seg.carrier:
                latency = time.monotonic() - seg.arrived
                self.metrics.end_to_end_seconds.observe(latency)
                self.latencies.append(latency)
                if seg.created is not None:
                    self.produce_latencies.append(time.time() - seg.created)
            for f in seg.flags:
                self.metrics.flags.labels(policy=f.policy, label=f.label, state=f.state).inc()
            if self.settings.checkpoint_state and (seg.error is None or seg.end):
                # (a stream's last segment, even a dead one, leaves a tombstone: no state)
                checkpoint = _Output(
                    self.settings.topics.state,
                    seg.stream_id.encode(),
                    seg.checkpoint,
                    partition=seg.tp.partition,
                )
                self._publish(seg, [checkpoint], "checkpoint")
                return
        seg.phase = "done"
        if seg.carrier:
            return
        self.segments_done += 1
        self.last_done = time.monotonic()
        self.metrics.segments.labels(outcome="dlq" if seg.error is not None else "ok").inc()
        _log.debug("done: %d frames scored", seg.scored, extra=seg.log())

    # -- commits, backpressure, housekeeping ------------------------------------------------

    def _commit(self, *, force: bool = False) -> None:
        from kafka.errors import KafkaError
        from kafka.structs import OffsetAndMetadata

        now = time.monotonic()
        if not force and now - self._last_commit < _COMMIT_INTERVAL_S:
            return
        self._last_commit = now
        offsets = {}
        for tp, part in self._parts.items():
            for offset in list(part.segments):
                if part.segments[offset].phase != "done":
                    break
                del part.segments[offset]
                part.done_to = offset + 1
            if part.done_to is not None and part.done_to != part.committed:
                offsets[tp] = OffsetAndMetadata(part.done_to, "", -1)
        if not offsets:
            return
        try:
            self._consumer.commit(offsets)
        except KafkaError as e:  # a rebalance took the partitions: the next owner replays
            _log.warning("commit failed (%s): those segments will be consumed again", e)
            return
        for tp, meta in offsets.items():
            owner = self._parts.get(tp)
            if owner is not None:
                owner.committed = meta.offset
        _log.debug("committed %s", ", ".join(f"{_tp(tp)}@{m.offset}" for tp, m in offsets.items()))

    def _pause(self, pause: bool) -> None:
        assigned = list(self._parts)
        if pause:
            self._consumer.pause(*assigned)
        else:
            self._consumer.resume(*assigned)
        self._paused = pause

    def _backpressure(self) -> None:
        limit = self.settings.max_inflight_segments
        inflight = self._inflight()
        if not self._paused and inflight >= limit:
            _log.info("%d segments in flight: pausing consumption", inflight)
            self.pauses += 1
            self._pause(True)
        elif self._paused and inflight <= limit // 2:
            _log.info("%d segments in flight: resuming consumption", inflight)
            self._pause(False)

    def _housekeeping(self) -> None:
        self.metrics.inflight_segments.set(self._inflight())
        errors = self.store.reload_errors
        if errors > self._reload_errors_seen:
            self.metrics.policy_reload_errors.inc(errors - self._reload_errors_seen)
            self._reload_errors_seen = errors
        now = time.monotonic()
        if now - self._last_lag >= _LAG_INTERVAL_S:
            self._last_lag = now
            for tp, part in self._parts.items():
                high = self._consumer.highwater(tp)
                if high is None:
                    part.lag = None
                    continue
                done = part.done_to if part.done_to is not None else part.committed
                if done is None:
                    first = next(iter(part.segments), None)
                    done = first if first is not None else high
                part.lag = max(0, high - done)
                self.metrics.consumer_lag.labels(topic=tp.topic, partition=str(tp.partition)).set(
                    part.lag
                )
            self._close_idle_streams(now)

    def _close_idle_streams(self, now: float) -> None:
        """Close the incidents of streams silent for ``stream_idle_close_s`` while their
        partition is caught up, and forget them; their flag events (and the tombstone of their
        state) are published like a segment's, but commit nothing: no record caused them."""
        idle = self.settings.stream_idle_close_s
        if not idle:
            return
        for stream in list(self._streams.values()):
            if stream.queue or stream.raw_open or now - stream.active < idle:
                continue
            part = self._parts.get(stream.tp)
            if part is None or part.lag != 0:  # behind: its next segment may be in the backlog
                continue
            out = self.judge.finish(stream.state, self.store.current, facts=stream.facts)
            carrier = _Segment(
                tp=stream.tp,
                offset=-1,
                key=stream.stream_id.encode(),
                value=b"",
                headers=[],
                arrived=now,
                stream_id=stream.stream_id,
                end=True,
                carrier=True,
                flags=out.flags,
            )
            for event in out.shadow:
                self.metrics.shadow_incidents.labels(policy=event.policy, label=event.label).inc()
            self._streams.pop((stream.tp, stream.stream_id), None)
            _log.info(
                "stream idle for %.0f s: closing %d incidents and forgetting it",
                now - stream.active,
                sum(f.state == "closed" for f in out.flags),
                extra=carrier.log(),
            )
            key = stream.stream_id.encode()
            messages = [_Output(self.settings.topics.flags, key, f.to_json()) for f in out.flags]
            self._publish(carrier, messages, "outputs")

    def _watch_policies(self) -> None:
        interval = self.settings.policy_reload_interval_s
        while not self._threads_stop.wait(interval):
            try:
                self.store.refresh()
            except Exception:  # the watcher must outlive any surprise in a reload
                _log.exception("policy reload failed unexpectedly")


# ------------------------------------------------------------------------------- helpers


def encoder_threads(settings: WorkerSettings) -> int:
    """CPU threads for the encoder: ``encoder_threads``, or (0) the cores the decode
    processes leave, at least one. ``clipguard worker`` applies it to its process."""
    if settings.encoder_threads:
        return settings.encoder_threads
    return max(1, (os.cpu_count() or 1) - settings.decode.processes)


def _reach(servers: str, timeout: float) -> None:
    """Wait until one of the bootstrap servers accepts a TCP connection, or raise
    :class:`WorkerError` after ``timeout`` seconds (before any Kafka client exists: a client
    that cannot bootstrap leaves its sockets behind)."""
    deadline = time.monotonic() + timeout
    last: OSError | None = None
    while True:
        for server in servers.split(","):
            host, _, port = server.rpartition(":")
            left = deadline - time.monotonic()
            try:
                with socket.create_connection(
                    (host.strip("[]"), int(port)), max(0.1, min(2, left))
                ):
                    return
            except OSError as e:
                last = e
        if time.monotonic() >= deadline:
            raise WorkerError(f"cannot connect to Kafka at {servers}: {last} (for {timeout:g} s)")
        time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))


def _tp(tp: Any) -> str:
    return f"{tp.topic}[{tp.partition}]"


def _header_text(value: bytes, name: str) -> str:
    try:
        return value.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise HeaderError(f"header {name!r} is not UTF-8") from None


def _parse_headers(seg: _Segment) -> None:
    """Fill the segment's stream, timing and type fields from its headers and key."""
    headers: dict[str, str] = {}
    for name, value in seg.headers:
        headers[name.lower()] = _header_text(value, name)
    stream = headers.get("stream-id") or (seg.key or b"").decode(errors="replace")
    if not stream:
        raise HeaderError("no stream id: set the record key or the stream-id header")
    seg.stream_id = stream
    content_type = headers.get("content-type")
    if not content_type:
        raise HeaderError("no content-type header")
    seg.content_type = normalize_content_type(content_type)
    seg.raw = seg.content_type in RAW_TYPES
    seq = headers.get("seq")
    try:
        seg.seq = int(seq) if seq is not None else seg.offset
    except ValueError:
        raise HeaderError(f"header seq is not a whole number: {seq!r}") from None
    start = headers.get("start-ts")
    if start is not None:
        try:
            seg.start_ts = float(start)
        except ValueError:
            raise HeaderError(f"header start-ts is not a number: {start!r}") from None
        if not math.isfinite(seg.start_ts) or seg.start_ts < 0:
            raise HeaderError(f"header start-ts must be a finite number >= 0, not {start!r}")
    elif not seg.raw:
        raise HeaderError("no start-ts header (seconds of the segment's first frame)")
    fps = headers.get(FPS_HEADER)
    if fps is not None:
        try:
            seg.fps = float(fps)
        except ValueError:
            raise HeaderError(f"header fps is not a number: {fps!r}") from None
        if not (math.isfinite(seg.fps) and 0 < seg.fps <= 1000):
            raise HeaderError(f"header fps must be in (0, 1000], not {fps!r}")
    seg.end = headers.get(END_HEADER, "").lower() in ("1", "true", "yes")


_TS_PACKET: Final = 188


def _check_size(seg: _Segment, limit: int) -> None:
    if len(seg.value) > limit:
        raise LimitExceeded(
            f"{seg.content_type} segment of {len(seg.value)} bytes is over the limit of "
            f"{limit} bytes (decode.max_input_bytes)"
        )


def _check_whole(seg: _Segment) -> None:
    """Refuse a segment that was cut short on its way: an MPEG-TS segment is a whole number of
    188-byte packets (FFmpeg would decode the frames before the cut and say nothing)."""
    if seg.content_type == "video/mp2t" and len(seg.value) % _TS_PACKET:
        raise InvalidMedia(
            f"truncated MPEG-TS segment: {len(seg.value)} bytes is not a whole number of "
            f"{_TS_PACKET}-byte packets"
        )


def _when_all(
    futures: Sequence[Future[Any]], then: Callable[[Sequence[Future[Any]]], None]
) -> None:
    """Call ``then(futures)`` once every future is done (on the thread finishing the last)."""
    left = [len(futures)]
    lock = threading.Lock()

    def one_done(_: Future[Any]) -> None:
        with lock:
            left[0] -= 1
            last = left[0] == 0
        if last:
            then(futures)

    for future in futures:
        future.add_done_callback(one_done)


def _checkpoint(stream: _Stream, seg: _Segment) -> bytes:
    facts = {k: [f.version, f.severity, f.action] for k, f in stream.facts.items()}
    data = {
        "format": _CHECKPOINT_FORMAT,
        "stream_id": stream.stream_id,
        "offset": seg.offset,
        "seq": seg.seq,
        "state": stream.state.to_dict(),
        "facts": facts,
    }
    return json.dumps(data, separators=(",", ":")).encode()


def _restore(
    stream_id: str, tp: Any, data: Mapping[str, Any], judge: Judge, policies: PolicySet
) -> _Stream:
    if data.get("format") != _CHECKPOINT_FORMAT:
        raise ValueError(f"checkpoint format {data.get('format')!r}")
    state = StreamTemporalState.from_dict(data["state"], policies.rules)
    facts = {
        k: PolicyFacts(version=int(v[0]), severity=str(v[1]), action=str(v[2]))
        for k, v in dict(data.get("facts") or {}).items()
    }
    return _Stream(stream_id, tp, state, facts=facts, restored_offset=int(data["offset"]))
