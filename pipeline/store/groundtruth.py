"""Review labels as ground truth for a backtest: precision and recall per label.

Reviewers mark incidents correct, incorrect or unsure in the policy studio, which keeps each
verdict with what the incident covers (stream, source, start and end, policy and label) in a
small SQLite database: ``_labels.sqlite`` beside the frames of a local store
(:data:`~pipeline.store.location.LABELS_FILE`). :func:`read_reviews` reads it (read-only; a
database from a studio that kept only the incident's id is read through its review queue), and
:func:`review_scores` scores a :class:`~pipeline.store.results.BacktestResult`'s incidents,
those of the edited policies and those of the deployed ones, against the reviewed spans of
the same stream, policy and label at incident level (:data:`RULE`).

A reviewed span counts when the backtest judged frames of its stream at its time (its stream
was read and the span meets the stream's first to last judged frame) and, when it names one,
of the backtest's model; the others are counted as ``outside``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from pipeline.errors import StoreError
from pipeline.store.results import BacktestResult, Incident

__all__ = [
    "MAX_REVIEWS",
    "RULE",
    "LabelReview",
    "ReviewSummary",
    "Reviewed",
    "Reviews",
    "Scores",
    "read_reviews",
    "review_scores",
]

#: How a backtest's incidents are scored against reviewed spans (the help and the report say it).
RULE: Final = (
    "incident level, per label: an incident that overlaps a span reviewers marked correct "
    "(same stream, the spans meet) is a true positive; one that overlaps only spans marked "
    "incorrect is a false positive; a span marked correct that no incident overlaps is a false "
    "negative. Precision = TP / (TP + FP); recall = correct spans overlapped / correct spans. "
    "Incidents that overlap no reviewed span, and spans marked unsure, are not scored."
)
#: A labels database holding more reviews than this is refused.
MAX_REVIEWS: Final = 2_000_000
_MAX_TEXT: Final = 4096


@dataclass(frozen=True, slots=True)
class Reviewed:
    """One reviewer verdict on the span an incident covered."""

    stream_id: str
    source: str | None
    policy: str
    label: str
    start_ts: float
    end_ts: float
    verdict: str  # correct, incorrect or unsure
    model: str | None = None

    @property
    def key(self) -> str:
        return f"{self.policy}/{self.label}"

    def meets(self, i: Incident) -> bool:
        return (
            i.stream_id == self.stream_id
            and i.start_ts <= self.end_ts
            and self.start_ts <= i.end_ts
        )


@dataclass(frozen=True, slots=True)
class Reviews:
    """What a labels database holds: the reviewed spans, and how many labels name no span
    (made by an older studio for an incident no longer in its queue)."""

    spans: list[Reviewed]
    unplaced: int = 0


@dataclass
class Scores:
    """One label's incidents (of one policy version) against the reviewed spans."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    covered: int = 0  # correct spans an incident overlaps
    unreviewed: int = 0  # incidents that overlap no reviewed span

    @property
    def precision(self) -> float | None:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else None

    @property
    def recall(self) -> float | None:
        return self.covered / (self.covered + self.fn) if self.covered + self.fn else None

    def to_json(self) -> dict[str, Any]:
        return {
            "true_positives": self.tp,
            "false_positives": self.fp,
            "false_negatives": self.fn,
            "precision": _round(self.precision),
            "recall": _round(self.recall),
            "unreviewed_incidents": self.unreviewed,
        }


@dataclass
class LabelReview:
    """One label's reviewed spans and the scores of both versions against them."""

    key: str
    labelled: int = 0  # reviewed spans in the backtested frames
    verdicts: dict[str, int] = field(default_factory=dict)  # verdict -> spans
    outside: int = 0  # reviewed spans of this label the backtest did not judge
    edited: Scores = field(default_factory=Scores)
    deployed: Scores = field(default_factory=Scores)

    def to_json(self) -> dict[str, Any]:
        return {
            "labelled": self.labelled,
            "correct": self.verdicts.get("correct", 0),
            "incorrect": self.verdicts.get("incorrect", 0),
            "unsure": self.verdicts.get("unsure", 0),
            "outside": self.outside,
            "edited": self.edited.to_json(),
            "deployed": self.deployed.to_json(),
        }


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 6)


# --------------------------------------------------------------------------------------------
# reading


def read_reviews(path: str | Path) -> Reviews:
    """The reviewed spans in the labels database at ``path`` (opened read-only).
    :class:`StoreError` when it is missing, not a labels database, or too large."""
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"{path}: no labels database there")
    try:
        db = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as e:
        raise StoreError(f"{path}: cannot open the labels database: {e}") from e
    try:
        return _read(db, path)
    except sqlite3.Error as e:
        raise StoreError(f"{path}: not a labels database the studio wrote: {e}") from e
    finally:
        db.close()


def _read(db: sqlite3.Connection, path: Path) -> Reviews:
    columns = {row[1] for row in db.execute("PRAGMA table_info(labels)")}
    if not {"incident", "policy", "label", "verdict"} <= columns:
        raise StoreError(f"{path}: not a labels database (no labels table of the studio's)")
    total = db.execute("SELECT count(*) FROM labels").fetchone()[0]
    if total > MAX_REVIEWS:
        raise StoreError(f"{path}: {total} labels, over the {MAX_REVIEWS} a backtest reads")
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "start_ts" in columns:
        rows = db.execute(
            "SELECT stream_id, source, policy, label, start_ts, end_ts, verdict, model FROM labels"
        ).fetchall()
    elif "incidents" in tables:  # a database an older studio wrote: spans from its queue
        rows = db.execute(
            "SELECT json_extract(i.data, '$.stream_id'), json_extract(i.data, '$.source'), "
            "l.policy, l.label, json_extract(i.data, '$.start_ts'), "
            "coalesce(json_extract(i.data, '$.end_ts'), json_extract(i.data, '$.peak_ts')), "
            "l.verdict, json_extract(i.data, '$.model') "
            "FROM labels AS l LEFT JOIN incidents AS i ON i.id = l.incident"
        ).fetchall()
    else:
        return Reviews([], unplaced=int(total))
    return _spans(rows, path)


def _spans(rows: Iterable[Sequence[Any]], path: Path) -> Reviews:
    spans, unplaced = [], 0
    for stream, source, policy, label, start, end, verdict, model in rows:
        if stream is None or start is None or end is None:
            unplaced += 1
            continue
        texts = (stream, source, policy, label, verdict, model)
        if any(t is not None and (not isinstance(t, str) or len(t) > _MAX_TEXT) for t in texts):
            raise StoreError(f"{path}: a label holds a value that is not a short text")
        if verdict not in ("correct", "incorrect", "unsure"):
            raise StoreError(f"{path}: a label's verdict is {verdict!r}")
        try:
            first, last = float(start), float(end)
        except (TypeError, ValueError):
            raise StoreError(f"{path}: a label's start or end is not a number") from None
        spans.append(
            Reviewed(stream, source, policy, label, first, max(first, last), verdict, model)
        )
    return Reviews(spans, unplaced)


# --------------------------------------------------------------------------------------------
# scoring


@dataclass
class ReviewSummary:
    """The review section of a backtest (``review`` in ``backtest.json``)."""

    source: str  # the labels database
    labels: dict[str, LabelReview]
    unplaced: int = 0  # labels that name no span
    rule: str = RULE

    def to_json(self) -> dict[str, Any]:
        return {
            "labels_database": self.source,
            "rule": self.rule,
            "unplaced": self.unplaced,
            "labels": {k: r.to_json() for k, r in sorted(self.labels.items())},
        }


def review_scores(result: BacktestResult, reviews: Reviews, *, source: str = "") -> ReviewSummary:
    """Per label of ``result`` that reviewers labelled: the spans, and the edited and deployed
    incidents scored against them (:data:`RULE`)."""
    out: dict[str, LabelReview] = {}
    scored: dict[str, list[Reviewed]] = {}
    for r in reviews.spans:
        if r.key not in result.labels:
            continue
        review = out.setdefault(r.key, LabelReview(r.key))
        if not _inside(r, result):
            review.outside += 1
            continue
        review.labelled += 1
        review.verdicts[r.verdict] = review.verdicts.get(r.verdict, 0) + 1
        if r.verdict != "unsure":
            scored.setdefault(r.key, []).append(r)
    for key, review in out.items():
        spans = scored.get(key, [])
        review.edited = _score([i for i in result.incidents if i.key == key], spans)
        review.deployed = _score([i for i in result.baseline_incidents if i.key == key], spans)
    return ReviewSummary(source, out, reviews.unplaced)


def _inside(r: Reviewed, result: BacktestResult) -> bool:
    """Whether the backtest judged frames of ``r``'s stream (and model) at its time."""
    seen = result.stream_spans.get(r.stream_id)
    model_ok = r.model is None or r.model == result.model
    return seen is not None and model_ok and r.start_ts <= seen[1] and seen[0] <= r.end_ts


def _score(incidents: Sequence[Incident], spans: Sequence[Reviewed]) -> Scores:
    by_stream: dict[str, list[Reviewed]] = {}
    for r in spans:
        by_stream.setdefault(r.stream_id, []).append(r)
    s = Scores()
    covered: set[int] = set()
    for i in incidents:
        meeting = [r for r in by_stream.get(i.stream_id, ()) if r.meets(i)]
        good = [r for r in meeting if r.verdict == "correct"]
        covered.update(id(r) for r in good)
        if good:
            s.tp += 1
        elif meeting:
            s.fp += 1
        else:
            s.unreviewed += 1
    correct = [r for r in spans if r.verdict == "correct"]
    s.covered = sum(id(r) in covered for r in correct)
    s.fn = len(correct) - s.covered
    return s
