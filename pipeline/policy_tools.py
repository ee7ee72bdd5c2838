"""Policy authoring tools: lint, regression examples, explanations, threshold calibration.

What ``clipguard policy`` runs, as library functions that return plain dataclasses (the command
line formats them):

- :func:`lint`: load and validate policy files, and check that every example and exemplar
  they name exists and is a kind of file clipguard decodes;
- :func:`run_examples`: score each policy's ``examples`` the way the pipeline would (decode,
  encode, score; for videos the policy's temporal rule too) and say which pass;
- :func:`explain`: why a label passed or not on one image (its ensemble score, margin,
  probability and every single prompt's and negative's cosine), or a per-frame timeline of
  a video;
- :func:`calibrate`: score folders of labelled positive and negative images, sweep each
  label's threshold over the observed scores and suggest the one with the best recall at a
  target precision; :func:`write_pr_plot` draws the precision-recall curves and
  :func:`write_threshold` writes a chosen threshold back into the policy file, keeping its
  comments and layout.

Nothing here imports torch until a function needs the model, so linting stays fast.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal

import cv2
import numpy as np
import numpy.typing as npt
import yaml

from pipeline.decode import Sampling
from pipeline.errors import ConfigError, DecodeError, PolicyError
from pipeline.policy import (
    Example,
    LoadedPolicy,
    PolicySet,
    load_policy,
    parse_policy,
    policy_files,
)

if TYPE_CHECKING:
    import torch

    from pipeline.models.model import CLIP
    from pipeline.scoring import CompiledPolicies, Decision

__all__ = [
    "Calibration",
    "CalibrationCurve",
    "CurvePoint",
    "ExampleResult",
    "Explanation",
    "ImageExplanation",
    "Incident",
    "LabelExplanation",
    "LintReport",
    "PromptScore",
    "TimelineFrame",
    "VideoExplanation",
    "calibrate",
    "explain",
    "lint",
    "run_examples",
    "write_pr_plot",
    "write_threshold",
    "write_thresholds",
]

Outcome = Literal["flag", "no_flag"]
Rule = Literal["threshold", "probability"]

#: Image files :func:`calibrate` reads from its folders (matched case-insensitively).
IMAGE_SUFFIXES: Final = frozenset({".jpg", ".jpeg", ".png", ".webp"})
_DECIMALS: Final = 4  # thresholds are swept and written with this many decimals


# --------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class LintReport:
    """What :func:`lint` found: the number of valid policies and every problem, one a line
    (``file:line:col: ...`` where the problem has a place in a file)."""

    policies: int
    errors: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.errors


@dataclass(frozen=True)
class Incident:
    """An incident the policy's temporal rule found in a video (from its closed event)."""

    label: str
    start_s: float  # first passing frame
    end_s: float  # last passing frame
    peak_score: float
    peak_s: float


@dataclass(frozen=True)
class ExampleResult:
    """One regression example of one policy, scored."""

    policy: str  # policy id
    path: str  # the example's path as written in the policy
    file: Path  # that path resolved against the policy file
    label: str | None  # the label it is about; None: any label of the policy
    expected: Outcome
    got: Outcome | None  # None when the file could not be decoded
    passed: bool  # got == expected (an error never passes)
    best_score: float | None  # highest cosine of the label(s) on any frame
    kind: Literal["image", "video"] | None
    window: tuple[float, float] | None  # videos with start_s/end_s: where an incident must be
    incidents: tuple[Incident, ...] = ()  # videos: every incident of the policy's labels
    error: str | None = None


@dataclass(frozen=True)
class PromptScore:
    text: str
    score: float  # cosine with the frame


@dataclass(frozen=True)
class LabelExplanation:
    """One label on one image: the numbers its decision was made from."""

    label: str
    passed: bool
    score: float  # cosine of the frame with the label's prompt ensemble
    threshold: float | None  # the rule in the file: a cosine threshold...
    probability_rule: float | None  # ...or a minimum probability
    margin_rule: float | None  # and the margin it must beat its best negative by, if any
    margin: float | None  # score minus the best negative's cosine (None without negatives)
    probability: float | None  # softmax of the label against its negatives
    top_prompt: str
    prompts: tuple[PromptScore, ...]  # every prompt in every template
    negatives: tuple[PromptScore, ...]


@dataclass(frozen=True)
class ImageExplanation:
    policy: str
    version: int
    path: Path
    labels: tuple[LabelExplanation, ...]


@dataclass(frozen=True)
class TimelineFrame:
    t: float  # seconds since the video's first frame
    scores: tuple[float, ...]  # one per label, in VideoExplanation.labels order
    passed: tuple[bool, ...]


@dataclass(frozen=True)
class VideoExplanation:
    policy: str
    version: int
    path: Path
    sample_fps: float
    labels: tuple[str, ...]
    frames: tuple[TimelineFrame, ...]
    incidents: tuple[Incident, ...]  # what the policy's temporal rule made of the frames


Explanation = ImageExplanation | VideoExplanation


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
    rule: Rule  # which value is swept: the cosine threshold or the probability
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


# --------------------------------------------------------------------------------------------
# Lint


def lint(paths: Iterable[str | Path]) -> LintReport:
    """Validate the policy files named (or found in the named folders) and check that the
    examples and exemplars they name exist; every problem is collected, none raised."""
    paths = list(paths)
    try:
        files = policy_files(paths)
    except PolicyError as e:
        return LintReport(policies=0, errors=tuple(str(e).splitlines()))
    if not files:
        where = ", ".join(map(str, paths))
        return LintReport(policies=0, errors=(f"no policy files (*.yaml) found in {where}",))
    loaded: list[LoadedPolicy] = []
    errors: list[str] = []
    for f in files:
        try:
            lp = load_policy(f)
        except PolicyError as e:
            errors += str(e).splitlines()
            continue
        errors += _missing_files(lp)
        loaded.append(lp)
    try:
        PolicySet(loaded)
    except PolicyError as e:
        errors += str(e).splitlines()
    return LintReport(policies=len(loaded), errors=tuple(errors))


def _missing_files(lp: LoadedPolicy) -> list[str]:
    """Examples and exemplars that are not files, or not of a type clipguard decodes."""
    from pipeline.decode import content_type_for

    root = yaml.compose(lp.path.read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    problems: list[str] = []

    def check(node: yaml.Node, where: str, *, media: bool) -> None:
        if not isinstance(node, yaml.ScalarNode):
            return
        file = lp.resolve(str(node.value))
        at = f"{lp.path}:{node.start_mark.line + 1}:{node.start_mark.column + 1}: {where}"
        if not file.is_file():
            problems.append(f"{at}: no such file: {file}")
            return
        if media:
            try:
                content_type_for(file)
            except DecodeError as e:
                problems.append(f"{at}: {e}")

    labels = _child(root, "labels")
    if isinstance(labels, yaml.SequenceNode):
        for i, label in enumerate(labels.value):
            exemplars = _child(label, "exemplars")
            if isinstance(exemplars, yaml.SequenceNode):
                for j, node in enumerate(exemplars.value):
                    check(node, f"labels.{i}.exemplars.{j}", media=False)
    examples = _child(root, "examples")
    if isinstance(examples, yaml.SequenceNode):
        for i, example in enumerate(examples.value):
            node = _child(example, "path")
            if node is not None:
                check(node, f"examples.{i}.path", media=True)
    return problems


def _child(node: yaml.Node | None, key: str) -> yaml.Node | None:
    """The value node of ``key`` in a mapping node (None if absent or not a mapping)."""
    if not isinstance(node, yaml.MappingNode):
        return None
    for k, v in node.value:
        if isinstance(k, yaml.ScalarNode) and k.value == key:
            assert isinstance(v, yaml.Node)
            return v
    return None


# --------------------------------------------------------------------------------------------
# Decoding, encoding, scoring


@dataclass(frozen=True)
class _Media:
    kind: Literal["image", "video"]
    images: list[npt.NDArray[np.uint8]]
    times: list[float]


def _sampling(sample_fps: float) -> Sampling:
    return Sampling(mode="fps", fps=sample_fps)  # ConfigError when not a positive number


def _decode(path: Path, model: CLIP, sampling: Sampling) -> _Media:
    from pipeline.decode import DecodeOptions, decode_uri

    result = decode_uri(
        path, DecodeOptions(size=model.input_resolution, fit="pad", sampling=sampling)
    )
    kind: Literal["image", "video"] = (
        "image" if result.content_type.startswith("image/") else "video"
    )
    return _Media(
        kind=kind, images=[f.image for f in result.frames], times=[f.t for f in result.frames]
    )


def _compile(policies: PolicySet, model: CLIP, cache_dir: Path | None) -> CompiledPolicies:
    from pipeline.compiler import PolicyCompiler

    return PolicyCompiler(model, cache_dir=cache_dir).compile(policies)


def _encode(model: CLIP, images: Sequence[npt.NDArray[np.uint8]]) -> torch.Tensor:
    from pipeline.encoder import Encoder

    return Encoder(model).encode(images)


def _columns(compiled: CompiledPolicies, policy_id: str) -> list[int]:
    return [i for i, lab in enumerate(compiled.labels) if lab.policy == policy_id]


def _decisions(
    compiled: CompiledPolicies,
    model: CLIP,
    images: Sequence[npt.NDArray[np.uint8]],
    cols: list[int],
) -> list[list[Decision]]:
    """Per frame, the decisions of the labels at ``cols`` of the compiled set."""
    frames = compiled.decide(compiled.scores(_encode(model, images)))
    return [[frame[i] for i in cols] for frame in frames]


def _incidents(
    lp: LoadedPolicy, times: Sequence[float], decisions: Sequence[Sequence[Decision]]
) -> tuple[Incident, ...]:
    """Run the policy's temporal rule over a video's frames: its incidents, in closing order."""
    from pipeline.temporal import StreamTemporalState, temporal_rules

    state = StreamTemporalState(str(lp.path), temporal_rules([lp]))
    events = []
    for t, frame in zip(times, decisions, strict=True):
        events += state.update(t, frame)
    events += state.finish()
    return tuple(
        Incident(
            label=e.label,
            start_s=e.start_ts,
            end_s=e.end_ts,
            peak_score=e.peak_score,
            peak_s=e.peak_ts,
        )
        for e in events
        if e.state == "closed" and e.end_ts is not None
    )


# --------------------------------------------------------------------------------------------
# Examples


def run_examples(
    policies: PolicySet | Sequence[LoadedPolicy],
    model: CLIP,
    *,
    sample_fps: float = 2.0,
    cache_dir: Path | None = None,
) -> list[ExampleResult]:
    """Score every example of every policy with ``model``, in file order.

    An image flags when at least one label of the policy (or the example's ``label``) passes
    on it. A video is sampled at ``sample_fps`` and run through the policy's temporal rule; it
    flags when an incident opens (of the example's ``label``, if named) and, when
    ``start_s``/``end_s`` are given, the incident overlaps ``[start_s - 1/fps, end_s + 1/fps]``.
    Shadow-mode policies are tested like enforced ones. A file that cannot be decoded gives a
    result with ``error`` set, which counts as a failure. Policies compile through the policy
    cache (``cache_dir``, default :func:`pipeline.compiler.default_cache_dir`).
    """
    policy_set = policies if isinstance(policies, PolicySet) else PolicySet(policies)
    sampling = _sampling(sample_fps)
    compiled = _compile(policy_set, model, cache_dir)
    decoded: list[tuple[LoadedPolicy, Example, _Media | DecodeError]] = []
    for lp in policy_set:
        for example in lp.policy.examples:
            try:
                decoded.append((lp, example, _decode(lp.resolve(example.path), model, sampling)))
            except DecodeError as e:
                decoded.append((lp, example, e))
    # every frame of every example in one encode: far fewer model calls than one per example
    images = [im for *_, media in decoded if isinstance(media, _Media) for im in media.images]
    frames = compiled.decide(compiled.scores(_encode(model, images))) if images else []
    results: list[ExampleResult] = []
    at = 0
    for lp, example, media in decoded:
        if isinstance(media, DecodeError):
            results.append(_judge(lp, example, media, [], sampling.fps))
            continue
        cols = _columns(compiled, lp.policy.id)
        n = len(media.images)
        decisions = [[frame[i] for i in cols] for frame in frames[at : at + n]]
        at += n
        results.append(_judge(lp, example, media, decisions, sampling.fps))
    return results


def _judge(
    lp: LoadedPolicy,
    example: Example,
    media: _Media | DecodeError,
    decisions: Sequence[Sequence[Decision]],
    fps: float,
) -> ExampleResult:
    """One example's result from its frames' decisions (the policy's labels only)."""

    def result(
        got: Outcome | None,
        best: float | None,
        kind: Literal["image", "video"] | None,
        *,
        window: tuple[float, float] | None = None,
        incidents: tuple[Incident, ...] = (),
        error: str | None = None,
    ) -> ExampleResult:
        return ExampleResult(
            policy=lp.policy.id,
            path=example.path,
            file=lp.resolve(example.path),
            label=example.label,
            expected=example.expect,
            got=got,
            passed=got == example.expect,
            best_score=best,
            kind=kind,
            window=window,
            incidents=incidents,
            error=error,
        )

    if isinstance(media, DecodeError):
        return result(None, None, None, error=str(media))
    wanted = None if example.label is None else f"{lp.policy.id}/{example.label}"
    relevant = [[d for d in frame if wanted is None or d.key == wanted] for frame in decisions]
    best = max((d.score for frame in relevant for d in frame), default=None)
    if media.kind == "image":
        flagged = any(d.passed for d in relevant[0])
        return result("flag" if flagged else "no_flag", best, "image")
    incidents = _incidents(lp, media.times, decisions)
    window = _window(example, fps)
    lo, hi = window if window is not None else (-math.inf, math.inf)
    flagged = any(
        (example.label is None or i.label == example.label) and i.start_s <= hi and i.end_s >= lo
        for i in incidents
    )
    got: Outcome = "flag" if flagged else "no_flag"
    return result(got, best, "video", window=window, incidents=incidents)


def _window(example: Example, fps: float) -> tuple[float, float] | None:
    """Where an incident must overlap: the example's range, widened by one sampling interval."""
    if example.start_s is None and example.end_s is None:
        return None
    slack = 1.0 / fps
    lo = example.start_s - slack if example.start_s is not None else -math.inf
    hi = example.end_s + slack if example.end_s is not None else math.inf
    return lo, hi


# --------------------------------------------------------------------------------------------
# Explain


def explain(
    policy: LoadedPolicy,
    model: CLIP,
    media_path: str | Path,
    *,
    sample_fps: float = 2.0,
    cache_dir: Path | None = None,
) -> Explanation:
    """Why ``policy`` flags ``media_path`` or not.

    For an image, per label: the ensemble score, the rule (threshold or probability, margin),
    the margin over the best negative, the probability, whether it passed, and the cosine of
    every single prompt and negative. For a video, sampled at ``sample_fps``: every label's
    score and pass at each sampled frame, and the incidents the temporal rule makes of them.
    Raises :class:`~pipeline.errors.DecodeError` when the file cannot be decoded.
    """
    path = Path(media_path)
    sampling = _sampling(sample_fps)
    compiled = _compile(PolicySet([policy]), model, cache_dir)
    cols = _columns(compiled, policy.policy.id)
    media = _decode(path, model, sampling)
    scores = compiled.scores(_encode(model, media.images))  # (frames, rows)
    decisions = [[frame[i] for i in cols] for frame in compiled.decide(scores)]
    labels = [compiled.labels[i] for i in cols]
    if media.kind == "video":
        return VideoExplanation(
            policy=policy.policy.id,
            version=policy.policy.version,
            path=path,
            sample_fps=sampling.fps,
            labels=tuple(lab.label for lab in labels),
            frames=tuple(
                TimelineFrame(
                    t=t,
                    scores=tuple(d.score for d in frame),
                    passed=tuple(d.passed for d in frame),
                )
                for t, frame in zip(media.times, decisions, strict=True)
            ),
            incidents=_incidents(policy, media.times, decisions),
        )
    row = scores[0].detach().float().cpu().numpy()
    explained = []
    for lab, d in zip(labels, decisions[0], strict=True):
        label = policy.policy.label(lab.label)
        explained.append(
            LabelExplanation(
                label=lab.label,
                passed=d.passed,
                score=d.score,
                threshold=label.threshold,
                probability_rule=label.probability,
                margin_rule=label.margin,
                margin=d.margin,
                probability=d.probability,
                top_prompt=d.top_prompt,
                prompts=tuple(
                    PromptScore(text, float(row[r]))
                    for text, r in zip(lab.prompts, lab.prompt_rows, strict=True)
                ),
                negatives=tuple(
                    PromptScore(text, float(row[r]))
                    for text, r in zip(label.negative_texts(), lab.negative_rows, strict=True)
                ),
            )
        )
    return ImageExplanation(
        policy=policy.policy.id,
        version=policy.policy.version,
        path=path,
        labels=tuple(explained),
    )


# --------------------------------------------------------------------------------------------
# Calibrate


def calibrate(
    policy: LoadedPolicy,
    model: CLIP,
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
    compiled = _compile(PolicySet([policy]), model, cache_dir)
    cols = _columns(compiled, policy.policy.id)
    pos, pos_skipped = _score_images(pos_files, compiled, model, cols)
    neg, neg_skipped = _score_images(neg_files, compiled, model, cols)
    if not pos or not neg:
        which = "positive" if not pos else "negative"
        raise ConfigError(f"none of the {which} images could be decoded")
    curves = []
    for j, i in enumerate(cols):
        lab = compiled.labels[i]
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
    files: Sequence[Path], compiled: CompiledPolicies, model: CLIP, cols: list[int]
) -> tuple[list[list[Decision]], list[str]]:
    """Each decodable image's decisions (for the labels at ``cols``); "file: why" for the
    others."""
    sampling = Sampling(mode="all")
    images: list[npt.NDArray[np.uint8]] = []
    skipped: list[str] = []
    for f in files:
        try:
            media = _decode(f, model, sampling)
        except DecodeError as e:
            skipped.append(f"{f}: {e}")
            continue
        images.append(media.images[0])
    if not images:
        return [], skipped
    return _decisions(compiled, model, images, cols), skipped


def _curve(
    lp: LoadedPolicy,
    name: str,
    pos: Sequence[Decision],
    neg: Sequence[Decision],
    target: float,
) -> CalibrationCurve:
    label = lp.policy.label(name)
    rule: Rule = "threshold" if label.threshold is not None else "probability"

    def values(ds: Sequence[Decision]) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
        if rule == "threshold":
            v = np.array([d.score for d in ds], dtype=np.float64)
        else:
            v = np.array([d.probability or 0.0 for d in ds], dtype=np.float64)
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

    scale = 10**_DECIMALS
    low, high = (-1.0, 1.0) if rule == "threshold" else (0.0, 1.0)
    # Only values of images that pass the margin rule: any other threshold flags the same
    # images as the next of these above it.
    passing = np.concatenate([pos_v[pos_ok], neg_v[neg_ok]])
    candidates = sorted({round(math.floor(v * scale) / scale, _DECIMALS) for v in passing})
    points = [
        p
        for t in candidates
        if low < t < high or (rule == "threshold" and t == high)
        if (p := point(t)) is not None
    ]
    suggested = _suggest(points, target, point)
    current = label.threshold if label.threshold is not None else label.probability
    assert current is not None  # a label has exactly one rule
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
    step = 10.0**-_DECIMALS
    middle = round(math.floor((max(below) + best.threshold) / 2 / step) * step, _DECIMALS)
    if middle < max(below) + step:  # no room: the image just below would be flagged too
        return best
    moved = point(middle)
    same = moved is not None and (moved.true_positives, moved.false_positives) == (
        best.true_positives,
        best.false_positives,
    )
    return moved if same else best


# --------------------------------------------------------------------------------------------
# PR plot

_W, _H = 760, 560  # canvas
_LEFT, _RIGHT, _TOP, _BOTTOM = 80, 30, 60, 70  # plot area margins
_FONT: Final = cv2.FONT_HERSHEY_SIMPLEX
_BLACK: Final = (0, 0, 0)
_GREY: Final = (225, 225, 225)
_PALETTE: Final = ((200, 90, 30), (40, 40, 200), (40, 150, 40), (160, 40, 160), (0, 140, 220))


def write_pr_plot(curves: Sequence[CalibrationCurve], path: str | Path) -> Path:
    """Draw the precision-recall curves as a PNG at ``path``: recall across, precision up,
    each label's suggested threshold marked with a filled dot, the file's current threshold
    with a ring, the target precision as a dashed line."""
    canvas = np.full((_H, _W, 3), 255, dtype=np.uint8)
    x0, x1, y0, y1 = _LEFT, _W - _RIGHT, _H - _BOTTOM, _TOP

    def xy(recall: float, precision: float) -> tuple[int, int]:
        return round(x0 + recall * (x1 - x0)), round(y0 - precision * (y0 - y1))

    for k in range(11):  # grid, ticks and tick labels every 0.1
        v = k / 10
        gx, gy = xy(v, v)
        cv2.line(canvas, (gx, y1), (gx, y0), _GREY, 1)
        cv2.line(canvas, (x0, gy), (x1, gy), _GREY, 1)
        cv2.line(canvas, (gx, y0), (gx, y0 + 5), _BLACK, 1)
        cv2.line(canvas, (x0 - 5, gy), (x0, gy), _BLACK, 1)
        if k % 2 == 0:
            cv2.putText(canvas, f"{v:.1f}", (gx - 12, y0 + 22), _FONT, 0.45, _BLACK, 1, cv2.LINE_AA)
            cv2.putText(canvas, f"{v:.1f}", (x0 - 38, gy + 5), _FONT, 0.45, _BLACK, 1, cv2.LINE_AA)
    cv2.rectangle(canvas, (x0, y1), (x1, y0), _BLACK, 1)
    cv2.putText(
        canvas, "recall", ((x0 + x1) // 2 - 25, _H - 22), _FONT, 0.6, _BLACK, 1, cv2.LINE_AA
    )
    cv2.putText(canvas, "precision", (10, y1 - 12), _FONT, 0.6, _BLACK, 1, cv2.LINE_AA)
    title = "precision-recall: " + (curves[0].policy if curves else "no data")
    cv2.putText(canvas, title, (x0, 30), _FONT, 0.7, _BLACK, 2, cv2.LINE_AA)
    if curves:
        _, ty = xy(0.0, curves[0].target_precision)
        for sx in range(x0, x1, 12):  # dashed target line
            cv2.line(canvas, (sx, ty), (min(sx + 6, x1), ty), (120, 120, 120), 1)
        cv2.putText(
            canvas,
            f"target {curves[0].target_precision:g}",
            (x0 + 6, ty - 6),
            _FONT,
            0.45,
            (120, 120, 120),
            1,
            cv2.LINE_AA,
        )
    for n, curve in enumerate(curves):
        colour = _PALETTE[n % len(_PALETTE)]
        pts = np.array([xy(p.recall, p.precision) for p in curve.points], dtype=np.int32)
        if len(pts) > 1:
            cv2.polylines(canvas, [pts.reshape(-1, 1, 2)], False, colour, 2, cv2.LINE_AA)
        elif len(pts) == 1:
            cv2.circle(canvas, (int(pts[0][0]), int(pts[0][1])), 3, colour, -1, cv2.LINE_AA)
        if curve.current_point is not None:
            c = xy(curve.current_point.recall, curve.current_point.precision)
            cv2.circle(canvas, c, 8, colour, 2, cv2.LINE_AA)
        if curve.suggested is not None:
            s = curve.suggested
            c = xy(s.recall, s.precision)
            cv2.circle(canvas, c, 6, colour, -1, cv2.LINE_AA)
            text = f"{s.threshold:.4g} (P {s.precision:.2f}, R {s.recall:.2f})"
            tx = min(c[0] + 10, x1 - 9 * len(text))
            cv2.putText(canvas, text, (tx, c[1] + 20), _FONT, 0.45, colour, 1, cv2.LINE_AA)
        ly = y0 - 20 - 22 * n  # legend, bottom left
        cv2.line(canvas, (x0 + 12, ly - 4), (x0 + 40, ly - 4), colour, 2, cv2.LINE_AA)
        legend = f"{curve.label} ({curve.rule}; dot: suggested, ring: current)"
        cv2.putText(canvas, legend, (x0 + 48, ly), _FONT, 0.45, colour, 1, cv2.LINE_AA)
    ok, png = cv2.imencode(".png", canvas)
    if not ok:
        raise ConfigError("cannot encode the PR plot as PNG")
    out = Path(path)
    try:
        out.write_bytes(png.tobytes())
    except OSError as e:
        raise ConfigError(f"cannot write the PR plot to {out}: {e.strerror or e}") from e
    return out


# --------------------------------------------------------------------------------------------
# Writing thresholds back


def write_threshold(loaded_policy: LoadedPolicy, label: str, threshold: float) -> LoadedPolicy:
    """Set ``label``'s threshold in the policy file (its ``probability`` for a probability
    label), add 1 to ``version`` and set ``calibrated: true`` where the file has that key.

    The file is edited as text, so comments and layout stay as they were; the result is
    validated before it replaces the file (atomically). Returns the policy loaded again.
    Raises :class:`~pipeline.errors.PolicyError` if the file changed since it was loaded.
    """
    return write_thresholds(loaded_policy, {label: threshold})


def write_thresholds(loaded_policy: LoadedPolicy, thresholds: Mapping[str, float]) -> LoadedPolicy:
    """:func:`write_threshold` for several labels at once (one version bump)."""
    lp = loaded_policy
    path = lp.path
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise PolicyError(f"{path}: cannot read policy file: {e.strerror or e}") from e
    if hashlib.sha256(raw).hexdigest() != lp.sha256:
        raise PolicyError(f"{path}: the file changed since it was loaded; load it again")
    text = raw.decode("utf-8")
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    edits: list[tuple[int, int, str]] = []  # (start, end, new text) in characters
    expected: dict[str, tuple[Rule, float]] = {}
    for name, value in thresholds.items():
        try:
            label = lp.policy.label(name)
        except KeyError:
            names = ", ".join(lab.name for lab in lp.policy.labels)
            raise ConfigError(
                f"policy {lp.policy.id!r} has no label {name!r}; its labels: {names}"
            ) from None
        rule: Rule = "threshold" if label.threshold is not None else "probability"
        literal = _number(value)
        node = _child(_label_node(root, name), rule)
        if not isinstance(node, yaml.ScalarNode):
            raise PolicyError(f"{path}: cannot find the {rule} of label {name!r} to edit")
        edits.append((node.start_mark.index, node.end_mark.index, literal))
        expected[name] = (rule, float(literal))
    version = _child(root, "version")
    if not isinstance(version, yaml.ScalarNode):
        raise PolicyError(f"{path}: cannot find the version to edit")
    edits.append((version.start_mark.index, version.end_mark.index, str(lp.policy.version + 1)))
    calibrated = _child(root, "calibrated")
    if isinstance(calibrated, yaml.ScalarNode):
        edits.append((calibrated.start_mark.index, calibrated.end_mark.index, "true"))
    new = text
    for start, end, literal in sorted(edits, reverse=True):
        new = new[:start] + literal + new[end:]
    policy = parse_policy(new, path=path)  # PolicyError, with the line, if the value is invalid
    for name, (rule, value) in expected.items():
        written = policy.label(name).threshold if rule == "threshold" else None
        if rule == "probability":
            written = policy.label(name).probability
        if written != value:
            raise PolicyError(f"{path}: editing the {rule} of {name!r} did not take; not written")
    if policy.version != lp.policy.version + 1:
        raise PolicyError(f"{path}: editing the version did not take; not written")
    _replace(path, new.encode("utf-8"))
    return load_policy(path)


def _label_node(root: yaml.Node | None, name: str) -> yaml.Node | None:
    labels = _child(root, "labels")
    if isinstance(labels, yaml.SequenceNode):
        for node in labels.value:
            n = _child(node, "name")
            if isinstance(n, yaml.ScalarNode) and n.value == name:
                assert isinstance(node, yaml.Node)
                return node
    return None


def _number(value: float) -> str:
    """``value`` as a short YAML float: 4 decimals, trailing zeros dropped (0.45, -0.1, 1.0)."""
    if not (isinstance(value, int | float) and math.isfinite(value)):
        raise ConfigError(f"a threshold must be a finite number, not {value!r}")
    text = f"{value:.{_DECIMALS}f}".rstrip("0")
    text = text + "0" if text.endswith(".") else text
    return "0.0" if text == "-0.0" else text


def _replace(path: Path, data: bytes) -> None:
    """Write ``data`` over ``path`` atomically, keeping its permissions."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, path.stat().st_mode & 0o7777)
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise PolicyError(f"{path}: cannot write policy file: {e.strerror or e}") from e
