"""Streams: per-stream ordering, judging, dead letters, stream ends, idle close, checkpoints.

Segments of one stream finish decoding and encoding in any order, but its temporal state must
see their frames in order: each stream queues its segments as they arrive, and
:meth:`Streams.advance` judges the ready ones from the front, stopping at the first that is not
ready. A segment that failed (bad headers, bad media, a decode or encode failure) becomes a
dead letter in its turn. Nothing here talks to Kafka: every step returns :class:`Verdict`
objects holding the records to publish, which the worker hands to its outbox (and which the
tests read directly).

A stream ends on a segment with ``stream-end: 1`` (its open incidents close, its state goes; a
stream id reused right after starts afresh), when it starts over at ``seq`` 0 with time going
back, or after ``stream_idle_close_s`` of silence while its partition is caught up
(:meth:`Streams.close_idle`). A segment whose time is more than ``max_ts_jump_s`` from the
stream's last frame (a far-future ``start-ts``, or back from one) restarts the stream's temporal
state the same way: one bad timestamp cannot make every later frame "out of order". Each
verdict carries the stream's checkpoint after that segment
(published once the outputs are acknowledged), and :meth:`Streams.open` restores a stream from
its checkpoint when a partition moves here.

Hash policies are judged in the same call, from the PDQ hashes the decode stage took of each
frame and the banks in force (``banks()``, the bank store's snapshot, read once a segment);
each stream keeps its vPDQ windows (:attr:`Stream.windows`). A window is not checkpointed: after
a restart or a partition move it fills again from the next frames.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal

import numpy as np
from kafka.structs import TopicPartition

from consumers.settings import TopicNames
from consumers.worker.checkpoints import Checkpoint, encode_checkpoint, restore_checkpoint
from consumers.worker.embeddings import EmbeddingsOut
from consumers.worker.letters import DLQ_VALUE_DROPPED, fit_letter
from consumers.worker.outbox import Output
from consumers.worker.segments import Segment
from pipeline.errors import ConfigError
from pipeline.events import (
    DLQ_ATTEMPTS,
    DLQ_ERROR_CLASS,
    DLQ_ERROR_MESSAGE,
    DLQ_ORIGINAL_OFFSET,
    DLQ_ORIGINAL_PARTITION,
    DLQ_ORIGINAL_TOPIC,
    FlagEvent,
)
from pipeline.policies.judge import Judge, Judgement, PolicyFacts
from pipeline.policies.snapshot import PolicySet
from pipeline.policies.temporal import StreamTemporalState

if TYPE_CHECKING:
    from pipeline.hashes.store import BankSnapshot

__all__ = ["DLQ_VALUE_DROPPED", "Stream", "Streams", "Verdict"]

_log = logging.getLogger(__name__)

_REQUEST_OVERHEAD: Final = 1024  # the produce request around one record
#: What a verdict publishes to the state topic: the state, a tombstone (the stream ended), none.
_State = Literal["state", "tombstone", "none"]


@dataclass(eq=False)
class Stream:
    """One stream of a partition: its temporal state and its segments not yet judged."""

    stream_id: str
    tp: TopicPartition
    state: StreamTemporalState
    facts: dict[str, PolicyFacts] = field(default_factory=dict)
    queue: deque[Segment] = field(default_factory=deque)
    restored_offset: int = -1  # segments at or before this offset are already in the state
    active: float = field(default_factory=time.monotonic)  # when it last sent a segment
    windows: dict[str, Any] = field(default_factory=dict)  # hash policy -> its vPDQ window

    @property
    def key(self) -> tuple[TopicPartition, str]:
        return (self.tp, self.stream_id)


@dataclass(eq=False)
class Verdict:
    """What one segment (or an idle stream's close) produced, to publish in this order."""

    segment: Segment
    outputs: list[Output]  # score records and flag events, or the dead letter (and flags)
    flags: list[FlagEvent] = field(default_factory=list)
    shadow: list[FlagEvent] = field(default_factory=list)  # count, never publish
    scored: int = 0  # frames (tiles) scored
    dead: str | None = None  # the error class of a dead letter
    checkpoint: Output | None = None  # the stream's state after it: publish once acknowledged


class Streams:
    """Every stream of the partitions this worker owns; see the module docstring.

    ``checkpoints``: publish each stream's state to ``topics.state`` after every segment;
    ``max_request_size``: a dead letter whose value would not fit is sent without it."""

    def __init__(
        self,
        judge: Judge,
        topics: TopicNames,
        *,
        checkpoints: bool,
        max_request_size: int,
        embeddings: EmbeddingsOut | None = None,
        banks: Callable[[], BankSnapshot | None] = lambda: None,
        max_ts_jump_s: float = math.inf,
        on_timeline_reset: Callable[[], object] | None = None,
    ) -> None:
        self.judge = judge
        self.embeddings = embeddings
        self.banks = banks
        self.topics = topics
        self.checkpoints = checkpoints
        self.max_request_size = max_request_size
        self.max_ts_jump_s = max_ts_jump_s
        self._on_timeline_reset = on_timeline_reset
        self._streams: dict[tuple[TopicPartition, str], Stream] = {}

    def __iter__(self) -> Iterator[Stream]:
        return iter(list(self._streams.values()))

    def __len__(self) -> int:
        return len(self._streams)

    def get(self, tp: TopicPartition, stream_id: str) -> Stream | None:
        return self._streams.get((tp, stream_id))

    def open(
        self,
        tp: TopicPartition,
        stream_id: str,
        policies: PolicySet,
        checkpoint: Checkpoint | None = None,
    ) -> Stream:
        """The stream, created (from ``checkpoint`` when one is given) if it is new here."""
        stream = self._streams.get((tp, stream_id))
        if stream is not None:
            return stream
        where = {"stream": stream_id, "where": f"{tp.topic}[{tp.partition}]"}
        if checkpoint is not None:
            try:
                state, facts, offset = restore_checkpoint(checkpoint, policies)
                stream = Stream(stream_id, tp, state, facts, restored_offset=offset)
                _log.info(
                    "stream state restored from its checkpoint at offset %d", offset, extra=where
                )
            except (ConfigError, KeyError, TypeError, ValueError) as e:
                _log.warning("unusable state checkpoint, starting afresh: %s", e, extra=where)
        if stream is None:
            stream = Stream(stream_id, tp, self.judge.new_state(stream_id, policies))
        self._streams[stream.key] = stream
        return stream

    def drop_partition(self, tp: TopicPartition) -> list[Stream]:
        """Forget the streams of a partition that went away; they are returned."""
        dropped = [s for key, s in self._streams.items() if key[0] == tp]
        for stream in dropped:
            del self._streams[stream.key]
        return dropped

    def advance(self, stream: Stream, policies: PolicySet) -> list[Verdict]:
        """Judge (or dead-letter) the stream's ready segments, oldest first, stopping at the
        first that is not ready; their verdicts in order."""
        verdicts: list[Verdict] = []
        while stream.queue and (stream.queue[0].ready or stream.queue[0].cancelled):
            seg = stream.queue.popleft()
            if seg.cancelled:
                continue
            if seg.error is not None:
                verdicts.append(self._dead_letter(stream, seg, policies))
            else:
                verdicts.append(self._judge(stream, seg, policies))
        return verdicts

    def close_idle(
        self, now: float, idle_s: float, policies: PolicySet, *, may_close: Callable[[Stream], bool]
    ) -> list[Verdict]:
        """Close the incidents of streams silent for ``idle_s`` seconds (those ``may_close``
        allows: their partition caught up), and forget them. The flag events (and the
        tombstone of their state) are published like a segment's, but no record caused them:
        the verdict's segment is a carrier that commits nothing."""
        verdicts: list[Verdict] = []
        for stream in list(self._streams.values()):
            if stream.queue or now - stream.active < idle_s or not may_close(stream):
                continue
            out = self.judge.finish(stream.state, policies, facts=stream.facts)
            carrier = Segment(
                tp=stream.tp,
                offset=-1,
                key=stream.stream_id.encode(),
                value=b"",
                headers=[],
                stream_id=stream.stream_id,
                arrived=now,
                carrier=True,
            )
            del self._streams[stream.key]
            _log.info(
                "stream idle for %.0f s: closing %d incidents and forgetting it",
                now - stream.active,
                sum(f.state == "closed" for f in out.flags),
                extra=carrier.log(),
            )
            verdicts.append(self._verdict(carrier, out, stream, state="tombstone"))
        return verdicts

    # -- one segment ------------------------------------------------------------------------

    def _judge(self, stream: Stream, seg: Segment, policies: PolicySet) -> Verdict:
        closing = Judgement()
        refs = seg.refs
        if (
            seg.offset > stream.restored_offset
            and seg.seq == 0
            and refs
            and stream.state.last_ts is not None
            and refs[0].ts <= stream.state.last_ts
        ):  # the stream started over (its timeline went back to its beginning)
            _log.info("stream restarted at seq 0: closing its incidents", extra=seg.log())
            closing = self._restart(stream, policies)
        elif (
            seg.offset > stream.restored_offset
            and refs
            and stream.state.last_ts is not None
            and abs(refs[0].ts - stream.state.last_ts) > self.max_ts_jump_s
        ):  # a timestamp far from the stream's: a new timeline, not frames to drop
            _log.warning(
                "stream time jumped from %.3f s to %.3f s (over max_ts_jump_s %.0f s): "
                "restarting its temporal state",
                stream.state.last_ts,
                refs[0].ts,
                self.max_ts_jump_s,
                extra=seg.log(),
            )
            closing = self._restart(stream, policies)
            if self._on_timeline_reset is not None:
                self._on_timeline_reset()
        embeddings = seg.embeddings if refs else np.zeros((0, 1), dtype=np.float32)
        out = self.judge.judge(
            stream.state,
            refs,
            embeddings,
            policies,
            facts=stream.facts,
            hashes=[f.pdq for f in seg.frames] if len(seg.frames) == len(refs) else None,
            banks=self.banks(),
            windows=stream.windows,
        )
        closing.extend(out)
        if seg.end:
            closing.extend(self.judge.finish(stream.state, policies, facts=stream.facts))
        stored = (
            []
            if self.embeddings is None
            else self.embeddings.outputs(seg, stream.stream_id, policies)
        )
        seg.release()
        for f in closing.flags:
            _log.info(
                "flag %s %s/%s at %.2f s (peak %.3f)",
                f.state,
                f.policy,
                f.label,
                f.start_ts if f.state == "open" else (f.end_ts or f.start_ts),
                f.peak_score,
                extra=seg.log(),
            )
        state: _State = "tombstone" if seg.end else "state"
        verdict = self._verdict(seg, closing, stream, state=state, last=stored)
        if seg.end:
            self._end(stream, policies)
        return verdict

    def _restart(self, stream: Stream, policies: PolicySet) -> Judgement:
        """Close the stream's incidents and give it a fresh temporal state."""
        closing = self.judge.finish(stream.state, policies, facts=stream.facts)
        stream.state = self.judge.new_state(stream.stream_id, policies)
        stream.facts, stream.windows = {}, {}
        return closing

    def unreadable(self, seg: Segment) -> Verdict:
        """The dead letter of a record the client could not read (no stream: nothing of it
        but its partition and offset is known)."""
        assert seg.error is not None
        reason = type(seg.error).__name__
        _log.warning(
            "unreadable record sent to the dead-letter topic: %s", seg.error, extra=seg.log()
        )
        letter = Output(self.topics.dlq, None, b"", self._letter_headers(seg, seg.error))
        verdict = Verdict(segment=seg, outputs=[letter], dead=reason)
        return verdict

    def _dead_letter(self, stream: Stream, seg: Segment, policies: PolicySet) -> Verdict:
        """The segment as a dead letter; its stream's last still ends the stream."""
        error = seg.error
        assert error is not None
        reason = type(error).__name__
        headers = [*seg.headers, *self._letter_headers(seg, error)]
        key, value, headers = fit_letter(
            seg.key, seg.value, headers, limit=self.max_request_size - _REQUEST_OVERHEAD
        )
        _log.warning(
            "segment sent to the dead-letter topic: %s: %s", reason, error, extra=seg.log()
        )
        letter = Output(self.topics.dlq, key, value, headers)
        seg.release()
        ended = Judgement()
        if seg.end:
            ended = self.judge.finish(stream.state, policies, facts=stream.facts)
        # a dead segment changes nothing in the state: no checkpoint, unless it ends the stream
        state: _State = "tombstone" if seg.end else "none"
        verdict = self._verdict(seg, ended, stream, state=state, first=[letter])
        verdict.dead = reason
        if seg.end:
            self._end(stream, policies)
        return verdict

    @staticmethod
    def _letter_headers(seg: Segment, error: BaseException) -> list[tuple[str, bytes]]:
        return [
            (DLQ_ERROR_CLASS, type(error).__name__.encode()),
            (DLQ_ERROR_MESSAGE, str(error)[:1000].encode(errors="replace")),
            (DLQ_ORIGINAL_TOPIC, seg.tp.topic.encode()),
            (DLQ_ORIGINAL_PARTITION, str(seg.tp.partition).encode()),
            (DLQ_ORIGINAL_OFFSET, str(seg.offset).encode()),
            (DLQ_ATTEMPTS, str(max(1, seg.attempts)).encode()),
        ]

    def _verdict(
        self,
        seg: Segment,
        out: Judgement,
        stream: Stream,
        *,
        state: _State,
        first: list[Output] | None = None,
        last: list[Output] | None = None,
    ) -> Verdict:
        key = stream.stream_id.encode()
        outputs = list(first or [])
        outputs += [Output(self.topics.scores, key, r.to_json()) for r in out.scores]
        outputs += [Output(self.topics.flags, key, f.to_json()) for f in out.flags]
        outputs += last or []
        checkpoint = None
        if self.checkpoints and state != "none":
            value = self._state_of(stream, seg) if state == "state" else None
            checkpoint = Output(self.topics.state, key, value, partition=stream.tp.partition)
        return Verdict(
            segment=seg,
            outputs=outputs,
            flags=out.flags,
            shadow=out.shadow,
            scored=len(out.scores),
            checkpoint=checkpoint,
        )

    @staticmethod
    def _state_of(stream: Stream, seg: Segment) -> bytes:
        return encode_checkpoint(stream.state, stream.facts, offset=seg.offset, seq=seg.seq)

    def _end(self, stream: Stream, policies: PolicySet) -> None:
        """The stream's last segment was judged: forget the stream. When its id is already
        reused (segments of a new stream queued behind the last one), that one starts
        afresh."""
        if stream.queue:
            stream.state = self.judge.new_state(stream.stream_id, policies)
            stream.facts, stream.windows = {}, {}
        else:
            self._streams.pop(stream.key, None)
