"""The judge stage: frame embeddings of one stream in, score records and flag events out.

Both the stream worker and the batch scanner end every input the same way: the encoder's
embeddings of a stream's sampled frames go through the compiled policies (one matmul), each
frame becomes a :class:`~pipeline.events.ScoreRecord`, and the per-stream temporal state turns
the frames' decisions into incidents, published as :class:`~pipeline.events.FlagEvent`
records. This module is that step, shared so the two paths cannot drift apart::

    judge = Judge(model_name="clipguard-demo")
    state = judge.new_state("cam-7", store.policies)
    out = judge.judge(state, refs, embeddings, store.compiled, store.policies)
    out.scores, out.flags, out.shadow        # records to publish; shadow incidents to count
    judge.finish(state, store.policies)      # the stream ended: close open incidents

Frames cut into tiles (``fit="tiles"``) give one score record per tile; for the temporal rule
the tiles of one frame count as one sample whose score is the best tile's (a label passes on a
frame when it passes on any tile).

An incident's events carry the version, severity and action its policy had when it opened,
so its open and closed events share one event id even when the policy is edited (or removed)
in between.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from pipeline.events import FlagEvent, ScoreRecord
from pipeline.policy import Policy, PolicySet
from pipeline.scoring import CompiledPolicies, Decision
from pipeline.temporal import IncidentEvent, StreamTemporalState, temporal_rules

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
    def of(cls, policy: Policy) -> PolicyFacts:
        return cls(version=policy.version, severity=policy.severity, action=policy.action)


@dataclass
class Judgement:
    """What one call of :meth:`Judge.judge` produced, in publishing order."""

    scores: list[ScoreRecord] = field(default_factory=list)
    flags: list[FlagEvent] = field(default_factory=list)
    shadow: list[IncidentEvent] = field(default_factory=list)  # shadow-mode: count, never flag


class Judge:
    """Scores one stream's frames at a time against a compiled policy set.

    ``model_name`` goes into every record. The per-stream state lives in the caller's
    :class:`~pipeline.temporal.StreamTemporalState` objects (:meth:`new_state`), so the caller
    decides where state lives and when it is checkpointed.
    """

    def __init__(self, model_name: str) -> None:
        self.model_name = model_name

    def new_state(self, stream_id: str, policies: PolicySet) -> StreamTemporalState:
        """A fresh temporal state for a stream, with the rules of ``policies``.

        Rules are looked up when a tracker is first created, so a state built with one policy
        set keeps working after a reload adds policies (pass the current set's rules via
        :meth:`refresh_rules`)."""
        return StreamTemporalState(stream_id, temporal_rules(policies))

    @staticmethod
    def refresh_rules(state: StreamTemporalState, policies: PolicySet) -> None:
        """Use ``policies``' temporal rules for trackers created from now on."""
        state.set_rules(temporal_rules(policies))

    def judge(
        self,
        state: StreamTemporalState,
        refs: Sequence[FrameRef],
        embeddings: torch.Tensor,
        compiled: CompiledPolicies,
        policies: PolicySet,
        *,
        source: str | None = None,
        facts: dict[str, PolicyFacts] | None = None,
    ) -> Judgement:
        """Score ``embeddings`` (one row per ref, in presentation order) and advance ``state``.

        ``facts`` (incident key -> policy facts at opening) is the memory that keeps an
        incident's events consistent across policy edits; pass the same dict for a stream
        every call (the caller may checkpoint it with the state)."""
        if len(refs) != len(embeddings):
            raise ValueError(f"{len(refs)} frame refs for {len(embeddings)} embeddings")
        out = Judgement()
        if not refs:
            return out
        facts = facts if facts is not None else {}
        decisions = compiled.decide(compiled.scores(embeddings))
        enforced = {lab.key for lab in compiled.labels if lab.enforce}
        for ref, ds in zip(refs, decisions, strict=True):
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
                    flagged=[d.key for d in ds if d.passed and d.key in enforced],
                    source=source,
                )
            )
        for ts, ds in _per_frame(refs, decisions):
            for event in state.update(ts, ds):
                self._emit(event, state.stream_id, policies, facts, source, out)
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

    def _emit(
        self,
        event: IncidentEvent,
        stream_id: str,
        policies: PolicySet,
        facts: dict[str, PolicyFacts],
        source: str | None,
        out: Judgement,
    ) -> None:
        if event.shadow:
            out.shadow.append(event)
            return
        memo = f"{event.key}@{round(event.start_ts * 1000)}"
        known = facts.get(memo)
        if known is None:
            try:
                known = PolicyFacts.of(policies.get(event.policy).policy)
            except KeyError:  # removed before its incident opened: unknown version
                known = PolicyFacts(version=0, severity="low", action="flag")
            facts[memo] = known
        if event.state == "closed":
            facts.pop(memo, None)
        out.flags.append(
            FlagEvent(
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
            )
        )


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
                top = Decision(
                    key=top.key,
                    passed=passed,
                    score=top.score,
                    threshold=top.threshold,
                    probability=top.probability,
                    margin=top.margin,
                    top_prompt=top.top_prompt,
                )
            merged[i] = top
    return frames
