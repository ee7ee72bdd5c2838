"""What a backtest finds: incidents, per-label differences, the whole result.

:func:`pipeline.store.backtest.backtest` returns a :class:`BacktestResult`; its
:meth:`~BacktestResult.to_json` is the report's ``backtest.json``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from pipeline.store.groundtruth import ReviewSummary

__all__ = ["HISTOGRAM_BINS", "BacktestResult", "Incident", "LabelDiff"]

#: Bins of a label's score histograms.
HISTOGRAM_BINS: Final = 40


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
        return {
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
