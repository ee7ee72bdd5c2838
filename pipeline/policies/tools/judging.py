"""The authoring tools' one path to a decision: decode a file, encode its frames, and judge
them with :class:`~pipeline.policies.judge.Judge`, the judge of the worker and of scans.

``policy test``, ``explain`` and ``calibrate`` differ only in what they read from the
:class:`~pipeline.policies.judge.Judgement`: the decisions per frame, or the incidents that the
policy's temporal rule made of them. Nothing here imports torch until a model is used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from pipeline.decode import Sampling
from pipeline.events import FlagEvent
from pipeline.policies.judge import FrameRef, Judge, Judgement
from pipeline.policies.schema import LoadedPolicies
from pipeline.policies.snapshot import PolicySet

if TYPE_CHECKING:
    from pipeline.models.base import ImageTextModel

__all__ = [
    "Incident",
    "Media",
    "compile_policies",
    "decode_media",
    "encode_images",
    "incidents",
    "judge_frames",
    "sampling",
]

Image = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class Incident:
    """An incident the policy's temporal rule found in a video (from its closed event)."""

    label: str
    start_s: float  # first passing frame
    end_s: float  # last passing frame
    peak_score: float
    peak_s: float


@dataclass(frozen=True)
class Media:
    """A decoded file: its sampled, fitted frames and their times (seconds from its start)."""

    kind: Literal["image", "video"]
    images: list[Image]
    times: list[float]


def sampling(sample_fps: float) -> Sampling:
    """Sample ``sample_fps`` frames a second (ConfigError when not a positive number)."""
    return Sampling(mode="fps", fps=sample_fps)


def decode_media(path: Path, model: ImageTextModel, rule: Sampling) -> Media:
    """Decode an image or video file for ``model`` (:class:`DecodeError` if it cannot be)."""
    from pipeline.decode import DecodeOptions, decode_uri

    result = decode_uri(path, DecodeOptions(size=model.input_resolution, fit="pad", sampling=rule))
    kind: Literal["image", "video"] = (
        "image" if result.content_type.startswith("image/") else "video"
    )
    return Media(
        kind=kind, images=[f.image for f in result.frames], times=[f.t for f in result.frames]
    )


def compile_policies(
    policies: LoadedPolicies, model: ImageTextModel, cache_dir: Path | None
) -> PolicySet:
    """The policies compiled for ``model`` through the compile cache."""
    from pipeline.policies.compile import PolicyCompiler

    return PolicyCompiler(model, cache_dir=cache_dir).compile(policies)


def encode_images(model: ImageTextModel, images: Sequence[Image]) -> Any:
    """Image embeddings, one row per image (an empty batch gives zero rows)."""
    from pipeline.models.encoders import reference_encoder

    return reference_encoder(model).encode(images)


def judge_frames(
    policies: PolicySet,
    model: ImageTextModel,
    stream_id: str,
    times: Sequence[float],
    embeddings: Any,
) -> Judgement:
    """Judge one file's frames (times in seconds, one embedding row each) as a whole stream:
    every frame's decisions and records, then the stream's end."""
    judge = Judge(model.name)
    state = judge.new_state(stream_id, policies)
    refs = [FrameRef(seq=0, frame_index=i, ts=float(t)) for i, t in enumerate(times)]
    out = judge.judge(state, refs, embeddings, policies, source=stream_id)
    out.extend(judge.finish(state, policies, source=stream_id))
    return out


def incidents(judgement: Judgement) -> tuple[Incident, ...]:
    """Every incident closed in a judgement, in closing order (enforced policies' first, then
    shadow-mode policies'; a judgement of one policy has only one kind)."""
    closed: list[FlagEvent] = [
        f
        for f in judgement.flags + judgement.shadow
        if f.state == "closed" and f.end_ts is not None
    ]
    return tuple(
        Incident(
            label=f.label,
            start_s=f.start_ts,
            end_s=f.end_ts if f.end_ts is not None else f.start_ts,
            peak_score=f.peak_score,
            peak_s=f.peak_ts,
        )
        for f in closed
    )
