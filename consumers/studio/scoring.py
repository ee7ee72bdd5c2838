"""The studio's scoring engine: the model (loaded once, on first use), the sandboxed decode
pool for uploads, and the policies compiled for the model; every decision made through the
judge of the worker and of ``clipguard policy`` (:mod:`pipeline.policies.tools.judging`)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from pipeline.decode import DecodeOptions, Limits, Sampling
from pipeline.errors import DecodeError
from pipeline.policies.schema import Example, LoadedPolicies, LoadedPolicy
from pipeline.policies.score import Decision
from pipeline.policies.tools.examples import ExampleResult, run_examples
from pipeline.policies.tools.judging import (
    Incident,
    compile_policies,
    encode_images,
    incidents,
    judge_frames,
)

if TYPE_CHECKING:
    from pipeline.decode import DecodePool
    from pipeline.models.base import ImageTextModel
    from pipeline.models.encoders import ImageEncoder

__all__ = ["DEMO_MODEL", "FrameResult", "LabeledScore", "Scorer", "TryResult"]

DEMO_MODEL = "clipguard-demo"
Image = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class FrameResult:
    t: float  # seconds from the first frame
    decisions: tuple[Decision, ...]  # one per label, in TryResult.labels order


@dataclass(frozen=True)
class TryResult:
    policy: str
    version: int
    model: str
    kind: Literal["image", "video"]
    labels: tuple[str, ...]
    cutoffs: tuple[float, ...]  # each label's rule value
    frames: tuple[FrameResult, ...]
    incidents: tuple[Incident, ...]
    embeddings: Any = None  # (frames, E) unit image embeddings, for searching the store


@dataclass(frozen=True)
class LabeledScore:
    """One label's score on one regression example (its best frame for a video)."""

    path: str
    label: str
    positive: bool  # the example expects this label (or any label) to flag
    score: float  # in the rule's unit
    margin_ok: bool  # passes the label's margin rule (True without one)


class Scorer:
    """Loads models lazily and keeps one small decode pool for untrusted uploads."""

    def __init__(
        self,
        *,
        model: str | None,
        data_dir: Path,
        max_upload_bytes: int,
        sample_fps: float,
        precision: str = "fp32",
    ) -> None:
        self.model_override = model
        self.precision = precision  # of uploads' image embeddings (fp32: the reference)
        self.cache_dir = data_dir / "compiled"
        self.sample_fps = sample_fps
        self._limits = Limits(max_input_bytes=max_upload_bytes, max_duration=600.0, timeout=120.0)
        self._models: dict[str, ImageTextModel] = {}
        self._encoders: dict[str, ImageEncoder] = {}
        self._pool: DecodePool | None = None
        self._lock = threading.Lock()
        self._examples: dict[tuple[str, str], list[ExampleResult]] = {}
        self._scores: dict[tuple[str, str], list[LabeledScore]] = {}

    def model_name(self, lp: LoadedPolicy) -> str:
        return self.model_override or lp.policy.model or DEMO_MODEL

    def model(self, name: str) -> ImageTextModel:
        with self._lock:
            if name not in self._models:
                from pipeline.models import load_model

                self._models[name] = load_model(name)
            return self._models[name]

    def encode(self, model: ImageTextModel, frames: Any) -> npt.NDArray[np.float32]:
        """Unit image embeddings of ``frames`` in the studio's precision: ``fp32`` is the
        reference that ``clipguard policy test`` uses; another precision (``auto`` included)
        scores as a worker at that precision would, through :func:`load_encoder`."""
        if self.precision == "fp32":
            return encode_images(model, frames)  # type: ignore[no-any-return]
        with self._lock:
            if model.name not in self._encoders:
                from pipeline.models.encoders import load_encoder

                self._encoders[model.name] = load_encoder(model, precision=self.precision)
            encoder = self._encoders[model.name]
        return encoder.encode(frames)

    def pool(self) -> DecodePool:
        with self._lock:
            if self._pool is None:
                from pipeline.decode import DecodePool

                self._pool = DecodePool(1, limits=self._limits, threads=1)
            return self._pool

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.close()
                self._pool = None

    # ------------------------------------------------------------------ regression examples

    def examples(self, lp: LoadedPolicy) -> list[ExampleResult]:
        """``clipguard policy test`` for one policy (cached per file content and model)."""
        name = self.model_name(lp)
        key = (lp.sha256 + _files_stamp(lp), name)
        if key not in self._examples:
            model = self.model(name)
            self._examples[key] = run_examples(
                [lp], model, sample_fps=self.sample_fps, cache_dir=self.cache_dir
            )
        return self._examples[key]

    def example_scores(self, lp: LoadedPolicy) -> list[LabeledScore]:
        """Every label's score on every regression example: Tune's labelled data."""
        name = self.model_name(lp)
        key = (lp.sha256 + _files_stamp(lp), name)
        if key in self._scores:
            return self._scores[key]
        model = self.model(name)
        policies = compile_policies(LoadedPolicies([lp]), model, self.cache_dir)
        labels = [lab.label for lab in policies.compiled.labels]
        out: list[LabeledScore] = []
        for example in lp.policy.examples:
            try:
                frames, times = self._decode_file(lp.resolve(example.path), model)
            except DecodeError:
                continue  # the Policies page shows it as a failing example
            embeddings = self.encode(model, frames)
            judged = judge_frames(policies, model, example.path, times, embeddings)
            for j, name_ in enumerate(labels):
                if example.expect == "flag" and example.label not in (None, name_):
                    continue  # a positive of another label says nothing about this one
                out.append(_best(example, name_, lp, [d[j] for d in judged.decisions]))
        self._scores[key] = out
        return out

    # ------------------------------------------------------------------ uploads

    def try_file(self, lp: LoadedPolicy, path: Path, content_type: str) -> TryResult:
        """Score an uploaded file, decoded in the sandboxed pool: every label on every sampled
        frame, and for a video the incidents the policy's temporal rule opens."""
        name = self.model_name(lp)
        model = self.model(name)
        policies = compile_policies(LoadedPolicies([lp]), model, self.cache_dir)
        options = DecodeOptions(
            model.input_resolution,
            fit="pad",
            sampling=Sampling(mode="fps", fps=self.sample_fps),
        )
        result = self.pool().decode_uri(path, options, content_type=content_type)
        frames = [f.image for f in result.frames]
        times = [f.t for f in result.frames]
        embeddings = self.encode(model, frames)
        judged = judge_frames(policies, model, path.name, times, embeddings)
        compiled = policies.compiled.labels
        kind: Literal["image", "video"] = (
            "image" if result.content_type.startswith("image/") else "video"
        )
        return TryResult(
            policy=lp.policy.id,
            version=lp.policy.version,
            model=name,
            kind=kind,
            labels=tuple(lab.label for lab in compiled),
            cutoffs=tuple(lp.policy.label(lab.label).cutoff for lab in compiled),
            frames=tuple(
                FrameResult(t=t, decisions=tuple(d))
                for t, d in zip(times, judged.decisions, strict=True)
            ),
            incidents=incidents(judged),
            embeddings=embeddings,
        )

    def _decode_file(self, path: Path, model: ImageTextModel) -> tuple[list[Image], list[float]]:
        options = DecodeOptions(
            model.input_resolution, fit="pad", sampling=Sampling(mode="fps", fps=self.sample_fps)
        )
        result = self.pool().decode_uri(path, options)
        return [f.image for f in result.frames], [f.t for f in result.frames]


def _best(example: Example, label: str, lp: LoadedPolicy, ds: list[Decision]) -> LabeledScore:
    rule = lp.policy.label(label)
    best = max(ds, key=lambda d: d.score)
    margin_ok = rule.margin is None or (best.margin is not None and best.margin >= rule.margin)
    positive = example.expect == "flag" and example.label in (None, label)
    return LabeledScore(
        path=example.path,
        label=label,
        positive=positive,
        score=float(best.score),
        margin_ok=margin_ok,
    )


def _files_stamp(lp: LoadedPolicy) -> str:
    """Changes when an example file changes (its size and modification time)."""
    parts = []
    for example in lp.policy.examples:
        try:
            st = lp.resolve(example.path).stat()
            parts.append(f"{st.st_size}:{st.st_mtime_ns}")
        except OSError:
            parts.append("-")
    return "|".join(parts)
