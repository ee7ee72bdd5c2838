"""What a backtest finds: incidents, per-label differences, the whole result.

:func:`pipeline.store.backtest.backtest` returns a :class:`BacktestResult`; its
:meth:`~BacktestResult.to_json` is the report's ``backtest.json``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from pipeline.store.groundtruth import ReviewSummary

__all__ = ["HISTOGRAM_BINS", "BacktestResult", "Incident", "LabelDiff", "Scores", "fill_diffs"]

#: Bins of a label's score histograms.
HISTOGRAM_BINS: Final = 40
_F32 = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class Incident:
    """An incident a policy set finds in stored frames: what its flag event would say."""

    event_id: str
    stream_id: str
    policy: str
    label: str
    policy_version: int
    severity: str
    action: str
    mode: str
    start_ts: float
    end_ts: float
    peak_ts: float
    peak_score: float
    threshold: float
    margin: float | None
    top_prompt: str
    peak_seq: int  # where the peak frame is stored (its thumbnail, its frame id)
    peak_frame_index: int
    peak_tile: int
    match: dict[str, Any] | None = None  # hash policies: the bank entry matched at the peak

    @property
    def key(self) -> str:
        """``"policy/label"``."""
        return f"{self.policy}/{self.label}"

    def overlaps(self, other: Incident) -> bool:
        """Same stream and label, and their spans meet."""
        return (
            self.stream_id == other.stream_id
            and self.key == other.key
            and self.start_ts <= other.end_ts
            and other.start_ts <= self.end_ts
        )

    def to_json(self) -> dict[str, Any]:
        out = {
            "event_id": self.event_id,
            "stream_id": self.stream_id,
            "policy": self.policy,
            "label": self.label,
            "policy_version": self.policy_version,
            "severity": self.severity,
            "action": self.action,
            "mode": self.mode,
            "start_ts": self.start_ts,
            "end_ts": self.end_ts,
            "peak_ts": self.peak_ts,
            "peak_score": self.peak_score,
            "threshold": self.threshold,
            "margin": self.margin,
            "top_prompt": self.top_prompt,
            "peak": {
                "seq": self.peak_seq,
                "frame_index": self.peak_frame_index,
                "tile": self.peak_tile,
            },
        }
        if self.match is not None:
            out["match"] = self.match
        return out


@dataclass
class LabelDiff:
    """One label (``policy/label``) under the edited set and under the baseline."""

    key: str
    mode: str  # in the edited set; "" when only the baseline has the label
    kind: str  # the score its rule judges (edited set, else baseline)
    cutoff: float | None
    incidents: int = 0
    baseline_incidents: int = 0
    added: list[Incident] = field(default_factory=list)
    removed: list[Incident] = field(default_factory=list)
    changed: list[tuple[Incident, list[Incident]]] = field(default_factory=list)  # new, old
    unchanged: int = 0
    frames_passing: int = 0
    baseline_frames_passing: int = 0
    bins: list[float] = field(default_factory=list)  # HISTOGRAM_BINS + 1 edges
    histogram: list[int] = field(default_factory=list)
    baseline_histogram: list[int] = field(default_factory=list)

    def compare(self, mine: Sequence[Incident], theirs: Sequence[Incident]) -> None:
        """Fill the counts, added, removed, changed and unchanged from this label's incidents
        under the edited set (``mine``) and the baseline (``theirs``)."""
        self.incidents, self.baseline_incidents = len(mine), len(theirs)
        # Incident.overlaps, with the stream and label compared once per group
        by_stream: dict[tuple[str, str], list[Incident]] = {}
        for i in theirs:
            by_stream.setdefault((i.stream_id, i.key), []).append(i)
        matched: set[int] = set()
        for i in mine:
            start, end = i.start_ts, i.end_ts
            overlapping = [
                o
                for o in by_stream.get((i.stream_id, i.key), [])
                if o.start_ts <= end and start <= o.end_ts
            ]
            matched.update(id(o) for o in overlapping)
            if not overlapping:
                self.added.append(i)
            elif len(overlapping) == 1 and (overlapping[0].start_ts, overlapping[0].end_ts) == (
                i.start_ts,
                i.end_ts,
            ):
                self.unchanged += 1
            else:
                self.changed.append((i, overlapping))
        self.removed = [o for o in theirs if id(o) not in matched]

    def fill_histograms(self, new: _F32 | None, old: _F32 | None) -> None:
        """The score histograms of the edited set (``new``) and the baseline (``old``), on
        shared bins that take in the cutoff."""
        # each side's finite scores, in float64 as the edges are
        sides = [None if x is None else x[np.isfinite(x)].astype(np.float64) for x in (new, old)]
        values = [x for x in sides if x is not None and len(x)]
        if not values:
            return
        lo = min(float(x.min()) for x in values)
        hi = max(float(x.max()) for x in values)
        if self.cutoff is not None:
            lo, hi = min(lo, self.cutoff), max(hi, self.cutoff)
        if hi <= lo:
            hi = lo + 1e-6
        edges = np.linspace(lo, hi, HISTOGRAM_BINS + 1)
        self.bins = [round(float(e), 6) for e in edges]

        def counts(x: npt.NDArray[np.float64] | None) -> list[int]:
            if x is None:
                return [0] * HISTOGRAM_BINS
            # bins by count and range, on these same edges: NumPy's arithmetic path, which
            # checks each value against them (an array of edges makes it sort every value:
            # 0.15 s of a 2-million-frame backtest)
            h, _ = np.histogram(x, bins=HISTOGRAM_BINS, range=(lo, hi))
            return [int(c) for c in h]

        self.histogram, self.baseline_histogram = counts(sides[0]), counts(sides[1])

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "mode": self.mode,
            "kind": self.kind,
            "cutoff": self.cutoff,
            "incidents": self.incidents,
            "baseline_incidents": self.baseline_incidents,
            "added": [i.to_json() for i in self.added],
            "removed": [i.to_json() for i in self.removed],
            "changed": [
                {"new": new.to_json(), "old": [o.to_json() for o in old]}
                for new, old in self.changed
            ],
            "unchanged": self.unchanged,
            "frames_passing": self.frames_passing,
            "baseline_frames_passing": self.baseline_frames_passing,
            "histogram": {
                "bins": self.bins,
                "new": self.histogram,
                "baseline": self.baseline_histogram,
            },
        }


@dataclass
class BacktestResult:
    """What :func:`backtest` found (see the module docstring)."""

    model: str
    weights_sha256: str
    policy_set: str  # the edited set's id
    baseline: list[str]  # ids of the sets compared with (stored snapshots or ``against``)
    since: dt.datetime | None
    until: dt.datetime | None
    streams: list[str]
    rows: int  # stored rows read (of the model, in the range)
    other_weights: int  # of those, rows under other weights, left out
    frames: int  # frames judged: replays dropped, tiles merged
    incidents: list[Incident]  # what the edited set finds (enforce and shadow), stream order
    baseline_incidents: list[Incident]
    labels: dict[str, LabelDiff]
    seconds: float = 0.0
    # stream -> (first, last) time of its judged frames (which reviewed spans a backtest saw)
    stream_spans: dict[str, tuple[float, float]] = field(default_factory=dict)
    review: ReviewSummary | None = None  # precision and recall against review labels, if given

    @property
    def added(self) -> list[Incident]:
        return [i for d in self.labels.values() for i in d.added]

    @property
    def removed(self) -> list[Incident]:
        return [i for d in self.labels.values() for i in d.removed]

    @property
    def changed(self) -> list[tuple[Incident, list[Incident]]]:
        return [c for d in self.labels.values() for c in d.changed]

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        """JSON-ready data (``backtest.json``)."""
        return {
            "format": 1,
            "model": self.model,
            "weights_sha256": self.weights_sha256,
            "policy_set": self.policy_set,
            "baseline": self.baseline,
            "since": None if self.since is None else self.since.isoformat(),
            "until": None if self.until is None else self.until.isoformat(),
            "streams": len(self.streams),
            "rows": self.rows,
            "other_weights": self.other_weights,
            "frames": self.frames,
            "seconds": round(self.seconds, 3),
            "summary": {
                "incidents": len(self.incidents),
                "baseline_incidents": len(self.baseline_incidents),
                "added": len(self.added),
                "removed": len(self.removed),
                "changed": len(self.changed),
            },
            "labels": {k: d.to_json() for k, d in sorted(self.labels.items())},
            "incidents": [i.to_json() for i in self.incidents],
            **({} if self.review is None else {"review": self.review.to_json()}),
        }


class Scores(Protocol):
    """One label's per-frame scores and pass/fail under one side of a backtest."""

    @property
    def score(self) -> _F32: ...

    @property
    def passed(self) -> npt.NDArray[np.bool_]: ...


def fill_diffs(
    labels: Mapping[str, LabelDiff],
    new: Mapping[str, Scores],
    old: Mapping[str, Scores],
    new_found: Sequence[Incident],
    old_found: Sequence[Incident],
) -> None:
    """Fill every label's diff: its incidents compared, passing frames, histograms."""
    for key, d in labels.items():
        d.compare([i for i in new_found if i.key == key], [i for i in old_found if i.key == key])
        a, b = new.get(key), old.get(key)
        d.frames_passing = 0 if a is None else int(a.passed.sum())
        d.baseline_frames_passing = 0 if b is None else int(b.passed.sum())
        d.fill_histograms(None if a is None else a.score, None if b is None else b.score)
