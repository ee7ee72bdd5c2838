"""Tune: a label's labelled scores (regression examples and review verdicts), and precision and
recall at a threshold. The page recomputes the same figures in the browser as the slider moves
(``static/studio.js``, ``precisionRecall``); this module gives the first render and the tests'
reference."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from consumers.studio.labels import Label
from consumers.studio.scoring import LabeledScore

__all__ = ["Measured", "Point", "TuneData", "at_threshold", "tune_data"]


@dataclass(frozen=True)
class Point:
    score: float
    margin_ok: bool
    source: str  # "example: path" or "review: incident id"


@dataclass(frozen=True)
class TuneData:
    policy: str
    label: str
    rule: str  # threshold | probability | sigmoid
    cutoff: float  # the value in the file now
    positives: list[Point] = field(default_factory=list)
    negatives: list[Point] = field(default_factory=list)
    queue_peaks: list[float] = field(default_factory=list)  # the review queue's incidents
    reviewed: dict[str, int] = field(default_factory=dict)  # verdict -> count


@dataclass(frozen=True)
class Measured:
    threshold: float
    precision: float | None  # None when nothing passes
    recall: float | None  # None without positives
    true_positives: int
    false_positives: int
    queue: int  # incidents of the review queue whose peak reaches the threshold


def at_threshold(data: TuneData, threshold: float) -> Measured:
    """Precision and recall of the labelled points at ``threshold`` (a point passes when its
    score reaches the threshold and it passes the margin rule)."""
    tp = sum(p.score >= threshold and p.margin_ok for p in data.positives)
    fp = sum(p.score >= threshold and p.margin_ok for p in data.negatives)
    return Measured(
        threshold=threshold,
        precision=tp / (tp + fp) if tp + fp else None,
        recall=tp / len(data.positives) if data.positives else None,
        true_positives=tp,
        false_positives=fp,
        queue=sum(s >= threshold for s in data.queue_peaks),
    )


def tune_data(
    *,
    policy: str,
    label: str,
    rule: str,
    cutoff: float,
    examples: Sequence[LabeledScore],
    labels: Sequence[Label],
    queue_peaks: Sequence[float],
    frames: Mapping[str, Sequence[tuple[float, bool]]] | None = None,
) -> TuneData:
    """The points of one label: its regression examples' scores, and the incidents reviewers
    marked correct (positives) or incorrect (negatives): with a store, every stored frame
    inside the incident's span (``frames``: incident id -> each frame's score and whether it
    passes the margin rule), else (no stored frame there) the incident's peak score;
    ``queue_peaks`` are the peak scores of the label's queued incidents."""
    data = TuneData(policy=policy, label=label, rule=rule, cutoff=cutoff)
    for ex in examples:
        if ex.label != label:
            continue
        point = Point(ex.score, ex.margin_ok, f"example: {ex.path}")
        (data.positives if ex.positive else data.negatives).append(point)
    for lab in labels:
        if lab.policy != policy or lab.label != label:
            continue
        data.reviewed[lab.verdict] = data.reviewed.get(lab.verdict, 0) + 1
        if lab.verdict not in ("correct", "incorrect"):
            continue
        stored = (frames or {}).get(lab.incident)
        points = (
            [Point(s, ok, f"review: {lab.incident} (stored frame)") for s, ok in stored]
            if stored
            else [Point(lab.peak_score, True, f"review: {lab.incident}")]
        )
        (data.positives if lab.verdict == "correct" else data.negatives).extend(points)
    data.queue_peaks.extend(queue_peaks)
    return data
