"""``policy explain``: why a policy flags a file or not, with the numbers of its decision."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.policies.schema import LoadedPolicies, LoadedPolicy
from pipeline.policies.tools.judging import (
    Incident,
    compile_policies,
    decode_media,
    encode_images,
    incidents,
    judge_frames,
    sampling,
)

if TYPE_CHECKING:
    from pipeline.models.base import ImageTextModel

__all__ = [
    "Explanation",
    "ImageExplanation",
    "LabelExplanation",
    "PromptScore",
    "TimelineFrame",
    "VideoExplanation",
    "explain",
]


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
    sigmoid_rule: float | None = None  # ...or a minimum sigmoid probability (SigLIP)
    sigmoid: float | None = None  # sigmoid(scale * score + bias): SigLIP models only


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


def explain(
    policy: LoadedPolicy,
    model: ImageTextModel,
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
    rule = sampling(sample_fps)
    policies = compile_policies(LoadedPolicies([policy]), model, cache_dir)
    media = decode_media(path, model, rule)
    embeddings = encode_images(model, media.images)
    judgement = judge_frames(policies, model, str(path), media.times, embeddings)
    decisions = judgement.decisions
    labels = policies.compiled.labels
    if media.kind == "video":
        return VideoExplanation(
            policy=policy.policy.id,
            version=policy.policy.version,
            path=path,
            sample_fps=rule.fps,
            labels=tuple(lab.label for lab in labels),
            frames=tuple(
                TimelineFrame(
                    t=t,
                    scores=tuple(d.score for d in frame),
                    passed=tuple(d.passed for d in frame),
                )
                for t, frame in zip(media.times, decisions, strict=True)
            ),
            incidents=incidents(judgement),
        )
    row = policies.compiled.cosines(embeddings[:1])[0]  # every row's cosine: the why
    explained = []
    for lab, d in zip(labels, decisions[0], strict=True):
        label = policy.policy.label(lab.label)
        explained.append(
            LabelExplanation(
                label=lab.label,
                passed=d.passed,
                score=d.cosine if d.cosine is not None else d.score,
                threshold=label.threshold,
                probability_rule=label.probability,
                margin_rule=label.margin,
                margin=d.margin,
                probability=d.probability,
                top_prompt=d.top_prompt,
                sigmoid_rule=label.sigmoid,
                sigmoid=d.score if d.kind == "sigmoid" else None,
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
