"""The judge stage: frame embeddings of one stream in, score records and flag events out.

Every path that decides anything ends the same way: the stream worker, batch scans, scan jobs
and the authoring tools (``policy test``, ``explain``, ``calibrate``) send a stream's sampled
frames through the policy set in force (one matmul), each frame becomes a
:class:`~pipeline.events.ScoreRecord`, and the per-stream temporal state turns the frames'
decisions into incidents, published as :class:`~pipeline.events.FlagEvent` records::

    judge = Judge(model_name="clipguard-demo")
    policies = store.current                     # one PolicySet for the whole batch
    state = judge.new_state("cam-7", policies)
    out = judge.judge(state, refs, embeddings, policies)
    out.scores, out.flags, out.shadow, out.decisions
    judge.finish(state, policies)                # the stream ended: close open incidents

Frames cut into tiles (``fit="tiles"``) give one score record per tile; for the temporal rule
the tiles of one frame count as one sample whose score is the best tile's (a label passes on a
frame when it passes on any tile).

Hash policies (``kind: hash``) are judged in the same call when the frames' PDQ hashes and the
banks in force are given (``hashes=``, ``banks=``; :mod:`pipeline.policies.hashing`): their
decisions join the CLIP labels' for the temporal rules, their passing frames are listed in
``flagged`` and each record carries the frame's nearest distance per bank (``nearest``), and
their flag events carry the entry matched (``match``). :meth:`Judge.judge_file` turns a
scanned file's whole-file matches (MD5, vPDQ) into flag events.

An incident's events carry the version, severity and action its policy had when it opened,
so its open and closed events share one event id even when the policy is edited in between.
When a reload removes a policy, the stream's next judgement first closes that policy's open
incidents (at their last passing frame) and forgets its trackers.
"""

from __future__ import annotations

from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from pipeline.events import EncoderInfo, FlagEvent, HashMatchInfo, ScoreRecord
from pipeline.policies.hashing import FileMatch, judge_frames
from pipeline.policies.score import CompiledLabel, Decision
from pipeline.policies.snapshot import PolicySet
from pipeline.policies.temporal import IncidentEvent, StreamTemporalState

if TYPE_CHECKING:
    from pipeline.hashes.pdq import DihedralHashes, PdqHash
    from pipeline.hashes.store import BankSnapshot
    from pipeline.hashes.video import StreamWindow

__all__ = ["FrameRef", "Judge", "Judgement", "PolicyFacts"]


@dataclass(frozen=True, slots=True)
class FrameRef:
    """Where a scored frame (or tile) sits: its input segment and stream-timeline time."""

    seq: int  # the stream's segment number (0 for a whole file)
    frame_index: int  # presentation index of the frame within its segment
    ts: float  # stream-timeline seconds
    tile: int = 0


@dataclass(frozen=True, slots=True)
class PolicyFacts:
    """What a flag event says of its policy, fixed when the incident opens."""

    version: int
    severity: str
    action: str

    @classmethod
    def of(cls, label: CompiledLabel) -> PolicyFacts:
        return cls(version=label.version, severity=label.severity, action=label.action)

    @classmethod
    def lookup(cls, policies: PolicySet, event: IncidentEvent) -> PolicyFacts:
        """The facts of the event's policy in ``policies`` (CLIP label or hash policy)."""
        try:
            return cls.of(policies.label(event.key))
        except KeyError:
            pass
        for p in policies.hashes:
            if p.id == event.policy:
                return cls(version=p.version, severity=p.severity, action=p.action)
        return _UNKNOWN


#: Facts of an incident whose policy was removed before it opened (cannot happen in one set,
#: but a restored checkpoint can name anything).
_UNKNOWN = PolicyFacts(version=0, severity="low", action="flag")


@dataclass
class Judgement:
    """What one call of :meth:`Judge.judge` produced, in publishing order.

    ``shadow`` holds the incidents of shadow-mode policies (count them, never publish them);
    ``decisions`` every label's decision on every frame (or tile), in ``refs`` order."""

    scores: list[ScoreRecord] = field(default_factory=list)
    flags: list[FlagEvent] = field(default_factory=list)
    shadow: list[FlagEvent] = field(default_factory=list)
    decisions: list[list[Decision]] = field(default_factory=list)

    def extend(self, other: Judgement) -> None:
        self.scores += other.scores
        self.flags += other.flags
        self.shadow += other.shadow
        self.decisions += other.decisions


class Judge:
    """Scores one stream's frames at a time against a policy set.

    ``model_name`` goes into every record. The per-stream state lives in the caller's
    :class:`~pipeline.policies.temporal.StreamTemporalState` objects (:meth:`new_state`), so
    the caller decides where state lives and when it is checkpointed.
    """

    def __init__(self, model_name: str, *, encoder: EncoderInfo | None = None) -> None:
        self.model_name = model_name
        self.encoder = encoder  # written in every score record

    @staticmethod
    def new_state(stream_id: str, policies: PolicySet) -> StreamTemporalState:
        """A fresh temporal state for a stream, with the rules of ``policies``."""
        return StreamTemporalState(stream_id, policies.rules)

    def judge(
        self,
        state: StreamTemporalState,
        refs: Sequence[FrameRef],
        embeddings: Any,
        policies: PolicySet,
        *,
        source: str | None = None,
        facts: dict[str, PolicyFacts] | None = None,
        hashes: Sequence[PdqHash | DihedralHashes | None] | None = None,
        banks: BankSnapshot | None = None,
        windows: MutableMapping[str, StreamWindow] | None = None,
    ) -> Judgement:
        """Score ``embeddings`` (one row per ref, in presentation order; a NumPy array or a
        CPU tensor) and advance ``state``.

        ``facts`` (incident key -> policy facts at opening) is the memory that keeps an
        incident's events consistent across policy edits; pass the same dict for a stream
        every call (the caller may checkpoint it with the state). ``hashes`` (one a ref, None
        where a frame was not hashed) and ``banks`` judge the hash policies too; ``windows``
        (the stream's, kept between calls) adds their vPDQ window matching."""
        if len(refs) != len(embeddings):
            raise ValueError(f"{len(refs)} frame refs for {len(embeddings)} embeddings")
        facts = facts if facts is not None else {}
        out = self._retire(state, policies, facts, source)
        if not refs:
            return out
        compiled = policies.compiled
        decisions = compiled.decide(embeddings)
        enforced = {lab.key for lab in compiled.labels if lab.enforce}
        enforced |= {f"{p.id}/" for p in policies.hashes if p.mode == "enforce"}
        kinds = {lab.key: lab.kind for lab in compiled.labels}
        hashed = None
        if hashes is not None and policies.hashes:
            if len(hashes) != len(refs):
                raise ValueError(f"{len(refs)} frame refs for {len(hashes)} hashes")
            times = [r.ts for r in refs]
            hashed = judge_frames(policies.hashes, hashes, times, banks, windows=windows)
        for i, (ref, ds) in enumerate(zip(refs, decisions, strict=True)):
            extra = hashed.decisions[i] if hashed is not None else []
            out.scores.append(
                ScoreRecord(
                    stream_id=state.stream_id,
                    seq=ref.seq,
                    frame_index=ref.frame_index,
                    tile=ref.tile,
                    ts=ref.ts,
                    model=self.model_name,
                    policy_set=compiled.policy_set,
                    scores={d.key: round(d.score, 6) for d in ds},
                    flagged=[d.key for d in ds if d.passed and d.key in enforced]
                    + [d.key for d in extra if d.passed and _enforced(d.key, enforced)],
                    kinds={d.key: kinds[d.key] for d in ds},
                    encoder=self.encoder,
                    source=source,
                    nearest=hashed.nearest[i] if hashed is not None else None,
                    pdq_quality=hashed.quality[i] if hashed is not None else None,
                    pdq=hashed.pdq[i] if hashed is not None else None,
                )
            )
            out.decisions.append([*ds, *extra])
        for ts, ds in _per_frame(refs, out.decisions):
            for event in state.update(ts, ds):
                self._emit(event, state.stream_id, policies, facts, source, out)
        return out

    def judge_file(
        self,
        stream_id: str,
        policies: PolicySet,
        matches: Sequence[FileMatch],
        *,
        duration: float,
        source: str | None = None,
    ) -> Judgement:
        """Flag events for a scanned file's whole-file matches (:func:`~pipeline.policies.
        hashing.file_matches`): per match an incident over the whole file, opened and closed,
        labelled by its signal (``md5``, ``vpdq``); shadow-mode policies' go to ``shadow``."""
        out = Judgement()
        facts: dict[str, PolicyFacts] = {}
        for m in matches:
            for state in ("open", "closed"):
                event = IncidentEvent(
                    state=state,  # type: ignore[arg-type]
                    policy=m.policy.id,
                    label=m.label,
                    start_ts=0.0,
                    end_ts=duration if state == "closed" else None,
                    peak_score=m.score,
                    peak_ts=0.0,
                    threshold=m.threshold,
                    margin=None,
                    top_prompt=None,
                    shadow=m.policy.mode == "shadow",
                    match=m.best.model_dump(mode="json"),
                )
                self._emit(event, stream_id, policies, facts, source, out)
        return out

    def finish(
        self,
        state: StreamTemporalState,
        policies: PolicySet,
        *,
        ts: float | None = None,
        source: str | None = None,
        facts: dict[str, PolicyFacts] | None = None,
    ) -> Judgement:
        """The stream ended: close its open incidents."""
        out = Judgement()
        facts = facts if facts is not None else {}
        for event in state.finish(ts):
            self._emit(event, state.stream_id, policies, facts, source, out)
        return out

    def _retire(
        self,
        state: StreamTemporalState,
        policies: PolicySet,
        facts: dict[str, PolicyFacts],
        source: str | None,
    ) -> Judgement:
        """Take up ``policies``' rules; close the incidents of policies no longer in it."""
        state.set_rules(policies.rules)
        out = Judgement()
        for event in state.retire(policies.rules):
            self._emit(event, state.stream_id, policies, facts, source, out)
        return out

    def _emit(
        self,
        event: IncidentEvent,
        stream_id: str,
        policies: PolicySet,
        facts: dict[str, PolicyFacts],
        source: str | None,
        out: Judgement,
    ) -> None:
        memo = f"{event.key}@{round(event.start_ts * 1000)}"
        known = facts.get(memo)
        if known is None:
            known = facts[memo] = PolicyFacts.lookup(policies, event)
        if event.state == "closed":
            facts.pop(memo, None)
        flag = FlagEvent(
            event_id=event.event_id(stream_id, known.version),
            state=event.state,
            stream_id=stream_id,
            policy=event.policy,
            policy_version=known.version,
            label=event.label,
            severity=known.severity,  # type: ignore[arg-type]
            action=known.action,  # type: ignore[arg-type]
            start_ts=event.start_ts,
            end_ts=event.end_ts,
            peak_score=round(event.peak_score, 6),
            peak_ts=event.peak_ts,
            threshold=event.threshold,
            margin=None if event.margin is None else round(event.margin, 6),
            top_prompt=event.top_prompt,
            model=self.model_name,
            source=source,
            match=None if event.match is None else HashMatchInfo.model_validate(event.match),
        )
        (out.shadow if event.shadow else out.flags).append(flag)


def _enforced(key: str, enforced: set[str]) -> bool:
    """Whether a hash policy's decision key belongs to an enforced policy."""
    return f"{key.partition('/')[0]}/" in enforced


def _per_frame(
    refs: Sequence[FrameRef], decisions: Sequence[Sequence[Decision]]
) -> list[tuple[float, list[Decision]]]:
    """Merge the tiles of each frame: per label the best-scoring tile, passing if any passes."""
    frames: list[tuple[float, list[Decision]]] = []
    last: tuple[int, int] | None = None
    for ref, ds in zip(refs, decisions, strict=True):
        where = (ref.seq, ref.frame_index)
        if where != last or not frames:
            frames.append((ref.ts, list(ds)))
            last = where
            continue
        merged = frames[-1][1]
        for i, d in enumerate(ds):
            best = merged[i]
            passed = best.passed or d.passed
            top = d if d.score > best.score else best
            if top.passed != passed:
                top = replace(top, passed=passed)
            merged[i] = top
    return frames
