"""Per-stream temporal state: per-frame decisions in, incidents (flag events) out.

A single frame passing a label is weak evidence; a flag that opens and closes with every
blip is noise. An :class:`IncidentTracker` watches one (stream, policy, label) and applies
the policy's :class:`~pipeline.policies.schema.Temporal` rule to its sampled frames, in timestamp
order:

- **open**: at least ``k`` of the last ``n`` frames passed and, when ``min_duration_s`` is
  set, the current run has lasted that long: from its first passing frame to this (passing)
  frame. A *run* begins when the k-of-n condition first holds, at the earliest passing frame
  in the window then, and lasts while the condition keeps holding. An incident opens only on
  a passing frame, never within ``cooldown_s`` of the previous incident's end: frames in the
  cooldown are skipped, so the next incident starts at or after the cooldown's end.
- **while open**: the peak score (the first frame to reach it), its time and the decision
  there (threshold, margin, top prompt) are kept; the end is the last passing frame.
- **close**: after ``close_after`` failing frames in a row, or at the stream's end
  (:meth:`IncidentTracker.finish`). The k-of-n window is then cleared.

``start_ts`` is the incident's first passing frame (not the frame at which the rule fired),
``end_ts`` its last passing frame, and ``start_ts <= peak_ts <= end_ts``. Frames whose
timestamp is not after the last one seen are ignored: replays after a restart are harmless.

A :class:`StreamTemporalState` holds every tracker of one stream, keyed by "policy/label"
and created on first sight; :meth:`StreamTemporalState.retire` closes and drops the trackers of
policies no longer in force (a reload removed them). Shadow-mode policies are tracked like the
others; their events say ``shadow=True`` (count them, never publish them as flags). Both
classes checkpoint to JSON-serialisable dicts (:meth:`~IncidentTracker.to_dict`,
:meth:`~IncidentTracker.from_dict`) and, restored, continue exactly as the original would have.

An incident's open and closed events share one :meth:`IncidentEvent.event_id`, computed from
the stream, policy, policy version, label and start time, so a replayed stream yields the
same ids (idempotent publishing downstream).
"""

from __future__ import annotations

import json
import math
import uuid
from collections import deque
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from pydantic import ValidationError

from pipeline.errors import ConfigError
from pipeline.policies.schema import (
    HashPolicy,
    LoadedHashPolicy,
    LoadedPolicy,
    Policy,
    Temporal,
)
from pipeline.policies.score import Decision, Mode

__all__ = [
    "EVENT_NAMESPACE",
    "IncidentEvent",
    "IncidentState",
    "IncidentTracker",
    "Mode",
    "Rules",
    "StreamTemporalState",
    "incident_event_id",
    "temporal_rules",
]

IncidentState = Literal["open", "closed"]
#: policy id -> (its temporal rule, its mode); or a function giving that for a policy id
#: (raising KeyError for an unknown one).
Rules = Mapping[str, tuple[Temporal, Mode]] | Callable[[str], tuple[Temporal, Mode]]

#: The uuid5 namespace of incident event ids.
EVENT_NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_URL, "urn:clipguard:incident")

_FORMAT: Final = 1  # version of the checkpoint dicts


@dataclass(frozen=True)
class IncidentEvent:
    """An incident opening or closing, for one (policy, label) of a stream.

    ``end_ts`` is None on the open event. The peak fields describe the highest-scoring
    passing frame so far: its score, time, and the decision's threshold, margin and top
    prompt there (None when the tracker was fed no :class:`Decision`).
    """

    state: IncidentState
    policy: str
    label: str
    start_ts: float
    end_ts: float | None
    peak_score: float
    peak_ts: float
    threshold: float | None
    margin: float | None
    top_prompt: str | None
    shadow: bool = False
    match: dict[str, Any] | None = None  # hash policies: the entry matched at the peak

    @property
    def key(self) -> str:
        """``"policy/label"``, as in decisions and output records."""
        return f"{self.policy}/{self.label}"

    def event_id(self, stream_id: str, policy_version: int) -> str:
        """A UUID naming the incident: the same for its open and closed events, and for the
        same incident found again when a stream is replayed (:func:`incident_event_id`)."""
        return incident_event_id(stream_id, self.policy, policy_version, self.label, self.start_ts)


def incident_event_id(
    stream_id: str, policy: str, policy_version: int, label: str, start_ts: float
) -> str:
    """The event id of the incident of ``policy/label`` (that version) in a stream starting at
    ``start_ts``: a uuid5 of them, ``start_ts`` counted to the millisecond."""
    name = json.dumps(
        [stream_id, policy, policy_version, label, round(start_ts * 1000)],
        separators=(",", ":"),
    )
    return str(uuid.uuid5(EVENT_NAMESPACE, name))


# --------------------------------------------------------------------------------------------
# One tracker


@dataclass(frozen=True, slots=True)
class _Sample:
    ts: float
    passed: bool
    score: float
    threshold: float | None
    margin: float | None
    top_prompt: str | None
    match: dict[str, Any] | None = None


@dataclass(slots=True)
class _Run:
    """Passing frames since the k-of-n condition began to hold; an incident once open."""

    start: float  # first passing frame
    last_pass: float
    peak: _Sample
    open: bool = False
    fails: int = 0  # failing frames in a row since the last passing one (while open)


class IncidentTracker:
    """Temporal state of one (stream, policy, label): frames in, incident events out."""

    def __init__(
        self, temporal: Temporal, *, policy: str, label: str, shadow: bool = False
    ) -> None:
        self.temporal = temporal
        self.policy = policy
        self.label = label
        self.shadow = shadow
        self._window: deque[_Sample] = deque(maxlen=temporal.n)
        self._run: _Run | None = None
        self._last_ts: float | None = None
        self._cooldown_until: float | None = None

    @property
    def key(self) -> str:
        return f"{self.policy}/{self.label}"

    @property
    def last_ts(self) -> float | None:
        """The latest timestamp accepted; frames at or before it are ignored."""
        return self._last_ts

    @property
    def is_open(self) -> bool:
        return self._run is not None and self._run.open

    def update(
        self, *, ts: float, passed: bool, score: float, decision: Decision | None = None
    ) -> list[IncidentEvent]:
        """Take one sampled frame; the events it causes (none, an open, or a close).

        A frame with ``ts`` not after the last accepted one is ignored and gives ``[]``.
        """
        if self._last_ts is not None and ts <= self._last_ts:
            return []
        self._last_ts = ts
        sample = _Sample(
            ts=ts,
            passed=bool(passed),
            score=float(score),
            threshold=decision.threshold if decision is not None else None,
            margin=decision.margin if decision is not None else None,
            top_prompt=decision.top_prompt if decision is not None else None,
            match=_match_of(decision),
        )
        run = self._run
        if run is not None and run.open:
            return self._while_open(run, sample)
        if self._cooldown_until is not None and ts < self._cooldown_until:
            return []
        self._window.append(sample)
        passes = [s for s in self._window if s.passed]
        if len(passes) < self.temporal.k:
            self._run = None
            return []
        if run is None:
            # The condition holds from this frame (which therefore passed) on.
            run = self._run = _Run(start=passes[0].ts, last_pass=ts, peak=_highest(passes))
        elif sample.passed:
            _extend(run, sample)
        if not sample.passed or ts - run.start < self.temporal.min_duration_s:
            return []
        run.open = True
        self._window.clear()
        return [self._event("open", run)]

    def finish(self, *, ts: float | None = None) -> list[IncidentEvent]:
        """The stream ended (at ``ts``, if given): close an open incident, forget a pending
        run. A later frame must still come after ``ts`` and every frame seen."""
        if ts is not None and (self._last_ts is None or ts > self._last_ts):
            self._last_ts = ts
        run = self._run
        if run is not None and run.open:
            return [self._close(run)]
        self._run = None
        self._window.clear()
        return []

    def _while_open(self, run: _Run, sample: _Sample) -> list[IncidentEvent]:
        if sample.passed:
            _extend(run, sample)
            run.fails = 0
            return []
        run.fails += 1
        if run.fails < self.temporal.close_after:
            return []
        return [self._close(run)]

    def _close(self, run: _Run) -> IncidentEvent:
        event = self._event("closed", run)
        self._run = None
        self._window.clear()
        cooldown = self.temporal.cooldown_s
        self._cooldown_until = run.last_pass + cooldown if cooldown > 0 else None
        return event

    def _event(self, state: IncidentState, run: _Run) -> IncidentEvent:
        peak = run.peak
        return IncidentEvent(
            state=state,
            policy=self.policy,
            label=self.label,
            start_ts=run.start,
            end_ts=run.last_pass if state == "closed" else None,
            peak_score=peak.score,
            peak_ts=peak.ts,
            threshold=peak.threshold,
            margin=peak.margin,
            top_prompt=peak.top_prompt,
            shadow=self.shadow,
            match=peak.match,
        )

    # ---- checkpoints

    def to_dict(self) -> dict[str, Any]:
        """The tracker's whole state (rule included) as a JSON-serialisable dict."""
        run = self._run
        return {
            "format": _FORMAT,
            "policy": self.policy,
            "label": self.label,
            "shadow": self.shadow,
            "temporal": self.temporal.model_dump(mode="json"),
            "last_ts": self._last_ts,
            "cooldown_until": self._cooldown_until,
            "window": [_sample_to_dict(s) for s in self._window],
            "run": None
            if run is None
            else {
                "start": run.start,
                "last_pass": run.last_pass,
                "peak": _sample_to_dict(run.peak),
                "open": run.open,
                "fails": run.fails,
            },
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> IncidentTracker:
        """A tracker from :meth:`to_dict`'s output; :class:`ConfigError` if it is not one."""
        try:
            return cls._from_dict(data)
        except (KeyError, TypeError, ValueError, ValidationError) as e:
            raise ConfigError(f"not an incident tracker checkpoint: {e}") from e

    @classmethod
    def _from_dict(cls, data: Mapping[str, Any]) -> IncidentTracker:
        if data["format"] != _FORMAT:
            raise ValueError(f"format {data['format']!r}, expected {_FORMAT}")
        tracker = cls(
            Temporal.model_validate(data["temporal"]),
            policy=_str(data["policy"], "policy"),
            label=_str(data["label"], "label"),
            shadow=_bool(data["shadow"], "shadow"),
        )
        tracker._last_ts = _opt_num(data["last_ts"], "last_ts")
        tracker._cooldown_until = _opt_num(data["cooldown_until"], "cooldown_until")
        window = [_sample_from_dict(s) for s in data["window"]]
        if len(window) > tracker.temporal.n:
            raise ValueError(f"window of {len(window)} frames, n is {tracker.temporal.n}")
        tracker._window.extend(window)
        run = data["run"]
        if run is not None:
            tracker._run = _Run(
                start=_num(run["start"], "run.start"),
                last_pass=_num(run["last_pass"], "run.last_pass"),
                peak=_sample_from_dict(run["peak"]),
                open=_bool(run["open"], "run.open"),
                fails=_int(run["fails"], "run.fails"),
            )
        return tracker


def _highest(samples: Iterable[_Sample]) -> _Sample:
    """The first sample with the highest score."""
    best: _Sample | None = None
    for s in samples:
        if best is None or s.score > best.score:
            best = s
    assert best is not None
    return best


def _extend(run: _Run, sample: _Sample) -> None:
    run.last_pass = sample.ts
    if sample.score > run.peak.score:
        run.peak = sample


def _match_of(decision: Decision | None) -> dict[str, Any] | None:
    if decision is None or decision.match is None:
        return None
    return decision.match.model_dump(mode="json")


def _sample_to_dict(s: _Sample) -> dict[str, Any]:
    out: dict[str, Any] = {
        "ts": s.ts,
        "passed": s.passed,
        "score": s.score,
        "threshold": s.threshold,
        "margin": s.margin,
        "top_prompt": s.top_prompt,
    }
    if s.match is not None:  # only hash policies' samples have one (older checkpoints: none)
        out["match"] = s.match
    return out


def _sample_from_dict(d: Mapping[str, Any]) -> _Sample:
    top = d["top_prompt"]
    match = d.get("match")
    if match is not None and not isinstance(match, dict):
        raise TypeError(f"match must be a mapping, got {match!r}")
    return _Sample(
        ts=_num(d["ts"], "ts"),
        passed=_bool(d["passed"], "passed"),
        score=_num(d["score"], "score"),
        threshold=_opt_num(d["threshold"], "threshold"),
        margin=_opt_num(d["margin"], "margin"),
        top_prompt=None if top is None else _str(top, "top_prompt"),
        match=match,
    )


def _num(v: Any, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or math.isnan(v):
        raise TypeError(f"{what} must be a number, got {v!r}")
    return float(v)


def _opt_num(v: Any, what: str) -> float | None:
    return None if v is None else _num(v, what)


def _int(v: Any, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise TypeError(f"{what} must be a non-negative integer, got {v!r}")
    return v


def _bool(v: Any, what: str) -> bool:
    if not isinstance(v, bool):
        raise TypeError(f"{what} must be true or false, got {v!r}")
    return v


def _str(v: Any, what: str) -> str:
    if not isinstance(v, str):
        raise TypeError(f"{what} must be a string, got {v!r}")
    return v


# --------------------------------------------------------------------------------------------
# One stream


def temporal_rules(
    policies: Iterable[Policy | LoadedPolicy | HashPolicy | LoadedHashPolicy],
) -> dict[str, tuple[Temporal, Mode]]:
    """The :data:`Rules` mapping of a set of policies of either kind (e.g. a ``PolicySet``'s
    CLIP and hash policies)."""
    out: dict[str, tuple[Temporal, Mode]] = {}
    for p in policies:
        policy = p.policy if isinstance(p, LoadedPolicy | LoadedHashPolicy) else p
        out[policy.id] = (policy.temporal, policy.mode)
    return out


class StreamTemporalState:
    """Every :class:`IncidentTracker` of one stream, keyed by "policy/label", each created
    when its key is first seen, with its policy's rule and mode from ``rules``."""

    def __init__(self, stream_id: str, rules: Rules) -> None:
        self.stream_id = stream_id
        self._rules = rules
        self._trackers: dict[str, IncidentTracker] = {}
        self._last_ts: float | None = None

    @property
    def trackers(self) -> Mapping[str, IncidentTracker]:
        """The trackers so far, by "policy/label", in the order they were created."""
        return self._trackers

    @property
    def last_ts(self) -> float | None:
        return self._last_ts

    def set_rules(self, rules: Rules) -> None:
        """Use ``rules`` for trackers created from now on (after a policy reload); existing
        trackers keep the rule they were created with."""
        self._rules = rules

    def update(self, ts: float, decisions: Sequence[Decision]) -> list[IncidentEvent]:
        """One sampled frame's decisions (one per label); the events they cause, in the
        order of ``decisions``. A frame not after the last one seen is ignored."""
        if self._last_ts is not None and ts <= self._last_ts:
            return []
        self._last_ts = ts
        events: list[IncidentEvent] = []
        for d in decisions:
            tracker = self._tracker(d.key)
            events += tracker.update(ts=ts, passed=d.passed, score=d.score, decision=d)
        return events

    def finish(self, ts: float | None = None) -> list[IncidentEvent]:
        """The stream ended: close every open incident."""
        if ts is not None and (self._last_ts is None or ts > self._last_ts):
            self._last_ts = ts
        events: list[IncidentEvent] = []
        for tracker in self._trackers.values():
            events += tracker.finish(ts=ts)
        return events

    def retire(self, policies: Collection[str]) -> list[IncidentEvent]:
        """Close the open incidents of every policy not in ``policies`` (ids of the policies
        in force) and forget those trackers; the closing events, in creation order."""
        events: list[IncidentEvent] = []
        for key in [k for k, t in self._trackers.items() if t.policy not in policies]:
            events += self._trackers.pop(key).finish()
        return events

    def _tracker(self, key: str) -> IncidentTracker:
        tracker = self._trackers.get(key)
        if tracker is None:
            policy, _, label = key.partition("/")
            if not policy or not label:
                raise ConfigError(f"decision key {key!r} is not 'policy/label'")
            temporal, mode = self._rule(policy)
            tracker = IncidentTracker(temporal, policy=policy, label=label, shadow=mode == "shadow")
            self._trackers[key] = tracker
        return tracker

    def _rule(self, policy: str) -> tuple[Temporal, Mode]:
        if isinstance(self._rules, Mapping):
            try:
                return self._rules[policy]
            except KeyError:
                raise KeyError(f"no temporal rule for policy {policy!r}") from None
        return self._rules(policy)

    def to_dict(self) -> dict[str, Any]:
        """The stream's state, every tracker with its rule, as a JSON-serialisable dict."""
        return {
            "format": _FORMAT,
            "stream_id": self.stream_id,
            "last_ts": self._last_ts,
            "trackers": [t.to_dict() for t in self._trackers.values()],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], rules: Rules) -> StreamTemporalState:
        """A stream's state from :meth:`to_dict`'s output. Restored trackers keep the rule
        they were saved with; ``rules`` is for the trackers created from now on."""
        try:
            if data["format"] != _FORMAT:
                raise ValueError(f"format {data['format']!r}, expected {_FORMAT}")
            state = cls(_str(data["stream_id"], "stream_id"), rules)
            state._last_ts = _opt_num(data["last_ts"], "last_ts")
            trackers = list(data["trackers"])
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"not a stream temporal state checkpoint: {e}") from e
        for t in trackers:
            tracker = IncidentTracker.from_dict(t)
            if tracker.key in state._trackers:
                raise ConfigError(f"not a stream temporal state checkpoint: two {tracker.key!r}")
            state._trackers[tracker.key] = tracker
        return state
