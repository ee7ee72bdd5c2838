"""``policy calibrate``: precision and recall of a policy's labels on labelled images, and the
threshold that reaches a target precision with the best recall."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

import numpy as np
import numpy.typing as npt

from pipeline.decode import Sampling
from pipeline.errors import ConfigError, DecodeError
from pipeline.policies.schema import LoadedPolicies, LoadedPolicy, Rule
from pipeline.policies.score import Decision
from pipeline.policies.snapshot import PolicySet
from pipeline.policies.tools.judging import (
    compile_policies,
    decode_media,
    encode_images,
    judge_frames,
)

if TYPE_CHECKING:
    from pipeline.models.base import ImageTextModel

__all__ = [
    "DECIMALS",
    "IMAGE_SUFFIXES",
    "Calibration",
    "CalibrationCurve",
    "CurvePoint",
    "calibrate",
]


#: Image files :func:`calibrate` reads from its folders (matched case-insensitively).
IMAGE_SUFFIXES: Final = frozenset({".jpg", ".jpeg", ".png", ".webp"})
#: Thresholds are swept and written with this many decimals.
DECIMALS: Final = 4


@dataclass(frozen=True)
class CurvePoint:
    threshold: float  # the rule's value (a cosine, or a probability for probability labels)
    precision: float
    recall: float
    true_positives: int
    false_positives: int


@dataclass(frozen=True)
class CalibrationCurve:
    """Precision and recall of one label at every observed score, lowest threshold first."""

    policy: str
    label: str
    rule: Rule  # which value is swept: the cosine, softmax or sigmoid cutoff
    margin: float | None  # the label's margin rule, applied at every point
    current: float  # the value in the policy file now
    current_point: CurvePoint | None  # the file's value on this data; None if nothing passes
    target_precision: float
    suggested: CurvePoint | None  # lowest threshold reaching the target; None if none does
    points: tuple[CurvePoint, ...]
    positives: int
    negatives: int


@dataclass(frozen=True)
class Calibration:
    policy: str
    positives: int  # images scored in the positives folder
    negatives: int
    skipped: tuple[str, ...]  # "file: why" for images that could not be decoded
    curves: tuple[CalibrationCurve, ...]


def calibrate(
    policy: LoadedPolicy,
    model: ImageTextModel,
    positives_dir: str | Path,
    negatives_dir: str | Path,
    *,
    target_precision: float = 0.95,
    label: str | None = None,
    cache_dir: Path | None = None,
) -> Calibration:
    """Precision-recall curves of the policy's labels (or of ``label``) on labelled images.

    Every ``.jpg``, ``.jpeg``, ``.png`` and ``.webp`` under the two folders (recursively) is
    decoded, encoded and scored. Per label, the rule's value (the cosine threshold, or the
    probability for a probability label) is swept over the observed values, rounded down to
    four decimals; the label's margin rule, if it has one, is kept at every point. The
    suggestion is the lowest threshold whose precision is at least ``target_precision`` (the
    highest recall reaching it), moved up past images that cost precision without adding
    recall, and then down into the middle of the score gap below it (flagging the same
    images). Images that cannot be decoded are skipped and listed in
    :attr:`Calibration.skipped`.
    """
    if not (isinstance(target_precision, int | float) and 0.0 < target_precision <= 1.0):
        raise ConfigError(f"target precision must be in (0, 1], not {target_precision!r}")
    names = [lab.name for lab in policy.policy.labels]
    if label is not None and label not in names:
        raise ConfigError(
            f"policy {policy.policy.id!r} has no label {label!r}; its labels: {', '.join(names)}"
        )
    pos_files = _images_in(Path(positives_dir), "positives")
    neg_files = _images_in(Path(negatives_dir), "negatives")
    policies = compile_policies(LoadedPolicies([policy]), model, cache_dir)
    pos, pos_skipped = _score_images(pos_files, policies, model)
    neg, neg_skipped = _score_images(neg_files, policies, model)
    if not pos or not neg:
        which = "positive" if not pos else "negative"
        raise ConfigError(f"none of the {which} images could be decoded")
    curves = []
    for j, lab in enumerate(policies.compiled.labels):
        if label is not None and lab.label != label:
            continue
        curves.append(
            _curve(
                policy,
                lab.label,
                [frame[j] for frame in pos],
                [frame[j] for frame in neg],
                target_precision,
            )
        )
    return Calibration(
        policy=policy.policy.id,
        positives=len(pos),
        negatives=len(neg),
        skipped=tuple(pos_skipped + neg_skipped),
        curves=tuple(curves),
    )


def _images_in(folder: Path, what: str) -> list[Path]:
    if not folder.is_dir():
        raise ConfigError(f"{what} folder {folder} is not a folder")
    files = sorted(
        p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    )
    if not files:
        raise ConfigError(
            f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in the {what} folder {folder}"
        )
    return files


def _score_images(
    files: Sequence[Path], policies: PolicySet, model: ImageTextModel
) -> tuple[list[list[Decision]], list[str]]:
    """Each decodable image's decisions (one per label of ``policies``); "file: why" for the
    others."""
    every = Sampling(mode="all")
    images: list[npt.NDArray[np.uint8]] = []
    skipped: list[str] = []
    for f in files:
        try:
            media = decode_media(f, model, every)
        except DecodeError as e:
            skipped.append(f"{f}: {e}")
            continue
        images.append(media.images[0])
    if not images:
        return [], skipped
    embeddings = encode_images(model, images)
    times = [float(i) for i in range(len(images))]  # one frame a second: each image alone
    judgement = judge_frames(policies, model, "calibration", times, embeddings)
    return judgement.decisions, skipped


def _curve(
    lp: LoadedPolicy,
    name: str,
    pos: Sequence[Decision],
    neg: Sequence[Decision],
    target: float,
) -> CalibrationCurve:
    label = lp.policy.label(name)
    rule: Rule = label.rule

    def values(ds: Sequence[Decision]) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
        v = np.array([d.score for d in ds], dtype=np.float64)  # in the rule's unit
        if label.margin is None:
            ok = np.ones(len(ds), dtype=bool)
        else:
            ok = np.array([d.margin is not None and d.margin >= label.margin for d in ds])
        return v, ok

    pos_v, pos_ok = values(pos)
    neg_v, neg_ok = values(neg)

    def point(t: float) -> CurvePoint | None:
        tp = int(((pos_v >= t) & pos_ok).sum())
        fp = int(((neg_v >= t) & neg_ok).sum())
        if tp + fp == 0:
            return None
        return CurvePoint(
            threshold=t,
            precision=tp / (tp + fp),
            recall=tp / len(pos_v),
            true_positives=tp,
            false_positives=fp,
        )

    scale = 10**DECIMALS
    low, high = (-1.0, 1.0) if rule == "threshold" else (0.0, 1.0)
    # Only values of images that pass the margin rule: any other threshold flags the same
    # images as the next of these above it.
    passing = np.concatenate([pos_v[pos_ok], neg_v[neg_ok]])
    candidates = sorted({round(math.floor(v * scale) / scale, DECIMALS) for v in passing})
    points = [
        p
        for t in candidates
        if low < t < high or (rule == "threshold" and t == high)
        if (p := point(t)) is not None
    ]
    suggested = _suggest(points, target, point)
    current = label.cutoff
    return CalibrationCurve(
        policy=lp.policy.id,
        label=name,
        rule=rule,
        margin=label.margin,
        current=current,
        current_point=point(current),
        target_precision=target,
        suggested=suggested,
        points=tuple(points),
        positives=len(pos_v),
        negatives=len(neg_v),
    )


def _suggest(
    points: Sequence[CurvePoint], target: float, point: Callable[[float], CurvePoint | None]
) -> CurvePoint | None:
    """The highest recall whose precision reaches ``target`` (recall only falls as the
    threshold rises, so: the lowest threshold reaching it); of equal recalls the highest
    precision. The threshold is then moved down to the middle of the gap below it, where no
    image scores, so that it sits between the images it excludes and those it flags."""
    reaching = [p for p in points if p.precision >= target]
    if not reaching:
        return None
    best = min(reaching, key=lambda p: (-p.recall, -p.precision, p.threshold))
    below = [p.threshold for p in points if p.threshold < best.threshold]
    if not below:
        return best
    step = 10.0**-DECIMALS
    middle = round(math.floor((max(below) + best.threshold) / 2 / step) * step, DECIMALS)
    if middle < max(below) + step:  # no room: the image just below would be flagged too
        return best
    moved = point(middle)
    same = moved is not None and (moved.true_positives, moved.false_positives) == (
        best.true_positives,
        best.false_positives,
    )
    return moved if same else best
