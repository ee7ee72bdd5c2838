"""The accuracy guard: a converted image tower is used only if it still agrees with fp32.

At conversion, embeddings of the converted tower are compared with the torch fp32 tower on a
validation set made of

* generated frames (:func:`generated_frames`: smooth colour fields, shapes, printed text,
  noise textures and mixtures of them, seeded, so every host builds the same set),
* optional extra images from a folder the operator names (:func:`folder_frames`), and
* regression examples passed in by the caller (:class:`RegressionSet`: frames plus a function
  turning their embeddings into decisions, such as a compiled policy set's pass/fail per label).

A precision passes when the mean cosine to fp32 over the validation set is at least
:attr:`GuardSettings.min_mean_cosine` (0.995 by default) and every regression decision is the
same as with fp32. Both towers are timed on the validation set too: ``precision="auto"`` on a
CPU also passes over a precision measured slower than fp32 (seen: bf16 on a virtual machine
whose CPU reports AVX-512 BF16 ran a ViT at 0.7-0.8x fp32). :func:`check_tower` measures;
:class:`GuardReport` holds the figures, which are stored beside the converted model and listed
with it.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from pipeline.errors import ConfigError

__all__ = [
    "DEFAULT_MIN_MEAN_COSINE",
    "GuardReport",
    "GuardSettings",
    "RegressionSet",
    "check_tower",
    "folder_frames",
    "generated_frames",
    "validation_digest",
]

DEFAULT_MIN_MEAN_COSINE = 0.995
_GENERATOR_VERSION = 1  # bump when generated_frames changes: stored verdicts are then redone
_IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp"})
_MAX_FOLDER_IMAGES = 512  # a validation folder is a sample, not a data set
_MAX_IMAGE_BYTES = 64 << 20

Frames = npt.NDArray[np.uint8]  # (N, R, R, 3) RGB
Embed = Callable[[Frames], npt.NDArray[np.float32]]  # frames -> (N, E) unit embeddings


@dataclass(frozen=True)
class GuardSettings:
    """Thresholds of the accuracy guard."""

    min_mean_cosine: float = DEFAULT_MIN_MEAN_COSINE  # mean cosine to fp32 a precision needs
    generated: int = 48  # generated validation frames
    extra_images: Path | None = None  # a folder of operator images joining the validation set

    def __post_init__(self) -> None:
        if not -1.0 <= self.min_mean_cosine <= 1.5:  # above 1 is allowed: it refuses everything
            raise ConfigError(f"min_mean_cosine must be a cosine, not {self.min_mean_cosine}")
        if not 1 <= self.generated <= 1024:
            raise ConfigError(f"generated must be 1..1024 frames, not {self.generated}")


@dataclass(frozen=True)
class RegressionSet:
    """Frames whose decisions must not change: ``decide`` maps ``(N, E)`` unit embeddings to
    one hashable decision per frame (e.g. the tuple of labels that pass)."""

    name: str  # shown in a refusal message
    frames: Frames  # (N, R, R, 3) uint8 RGB at the model's input resolution
    decide: Callable[[npt.NDArray[np.float32]], Sequence[Hashable]]
    fingerprint: str = ""  # what the decisions depend on (e.g. the compiled policy set)


@dataclass(frozen=True)
class GuardReport:
    """What the guard measured for one precision against fp32."""

    precision: str
    mean_cosine: float  # over the validation set
    min_cosine: float
    frames: int  # validation frames compared
    changed: tuple[str, ...] = ()  # "set[index]: fp32 decision -> this precision's", if any
    digest: str = ""  # validation_digest of the inputs the figures were measured on
    images_per_s: float = 0.0  # this precision on the validation set (0: not measured)
    fp32_images_per_s: float = 0.0  # torch fp32 on the same frames, same threads
    extra: dict[str, Any] = field(default_factory=dict)

    def slower_than_fp32(self) -> bool:
        """Measured slower than fp32 (some CPUs report bf16 but run it slower)."""
        return 0.0 < self.images_per_s < self.fp32_images_per_s

    def passed(self, settings: GuardSettings) -> bool:
        return self.mean_cosine >= settings.min_mean_cosine and not self.changed

    def reason(self, settings: GuardSettings) -> str:
        """Why this precision is refused ('' when it passes)."""
        parts = []
        if self.mean_cosine < settings.min_mean_cosine:
            parts.append(
                f"mean cosine to fp32 {self.mean_cosine:.5f} < {settings.min_mean_cosine:.5f} "
                f"(min {self.min_cosine:.5f}, {self.frames} frames)"
            )
        if self.changed:
            shown = "; ".join(self.changed[:5])
            more = f" and {len(self.changed) - 5} more" if len(self.changed) > 5 else ""
            parts.append(f"{len(self.changed)} regression decisions changed: {shown}{more}")
        return ", ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {
            "precision": self.precision,
            "mean_cosine": self.mean_cosine,
            "min_cosine": self.min_cosine,
            "frames": self.frames,
            "changed": list(self.changed),
            "digest": self.digest,
            "images_per_s": self.images_per_s,
            "fp32_images_per_s": self.fp32_images_per_s,
            **({"extra": self.extra} if self.extra else {}),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GuardReport:
        return cls(
            precision=str(data["precision"]),
            mean_cosine=float(data["mean_cosine"]),
            min_cosine=float(data["min_cosine"]),
            frames=int(data["frames"]),
            changed=tuple(str(c) for c in data.get("changed", ())),
            digest=str(data.get("digest", "")),
            images_per_s=float(data.get("images_per_s", 0.0)),
            fp32_images_per_s=float(data.get("fp32_images_per_s", 0.0)),
            extra=dict(data.get("extra", {})),
        )


def generated_frames(resolution: int, count: int = 48, *, seed: int = 0) -> Frames:
    """``count`` deterministic ``(R, R, 3)`` uint8 RGB frames with the statistics that matter
    to an image tower: flat and smooth regions, hard edges, saturated colours, small text and
    high-frequency noise, alone and mixed."""
    if resolution < 8 or count < 1:
        raise ConfigError(f"need a resolution >= 8 and count >= 1, not {resolution}, {count}")
    rng = np.random.default_rng(seed)
    out = np.empty((count, resolution, resolution, 3), np.uint8)  # (N, R, R, 3)
    for i in range(count):
        kind = i % 4
        img = _smooth_field(rng, resolution)
        if kind in (1, 3):
            _draw_shapes(rng, img)
        if kind == 2:
            img = _noise_texture(rng, resolution)
        if kind == 3:
            noise = rng.normal(0, 12, img.shape)
            img = np.clip(img.astype(np.float32) + noise, 0, 255).astype(np.uint8)
        out[i] = img
    return out


def _smooth_field(rng: np.random.Generator, res: int) -> npt.NDArray[np.uint8]:
    cells = int(rng.integers(2, 9))
    low = rng.integers(0, 256, (cells, cells, 3)).astype(np.uint8)  # (c, c, 3)
    return np.asarray(cv2.resize(low, (res, res), interpolation=cv2.INTER_CUBIC), np.uint8)


def _noise_texture(rng: np.random.Generator, res: int) -> npt.NDArray[np.uint8]:
    noise: npt.NDArray[np.float32] = rng.normal(128, 60, (res, res, 3)).astype(np.float32)
    sigma = float(rng.uniform(0.0, 3.0))
    if sigma > 0.3:
        noise = np.asarray(cv2.GaussianBlur(noise, (0, 0), sigma), np.float32)
    return np.clip(noise, 0, 255).astype(np.uint8)


def _draw_shapes(rng: np.random.Generator, img: npt.NDArray[np.uint8]) -> None:
    res = img.shape[0]
    for _ in range(int(rng.integers(1, 5))):
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        x, y = (int(v) for v in rng.integers(0, res, 2))
        size = int(rng.integers(max(2, res // 12), max(3, res // 2)))
        shape = int(rng.integers(0, 4))
        if shape == 0:
            cv2.rectangle(img, (x, y), (x + size, y + size), color, -1)
        elif shape == 1:
            cv2.circle(img, (x, y), size // 2, color, -1)
        elif shape == 2:
            pts = rng.integers(0, res, (3, 2)).astype(np.int32)
            cv2.fillPoly(img, [pts], color)
        else:
            word = "".join(chr(int(c)) for c in rng.integers(65, 91, int(rng.integers(2, 7))))
            cv2.putText(img, word, (x // 2, y), cv2.FONT_HERSHEY_SIMPLEX, res / 160, color, 2)


def folder_frames(
    folder: str | Path, resolution: int, *, limit: int = _MAX_FOLDER_IMAGES
) -> Frames:
    """Every image in ``folder`` (png, jpeg, webp; sorted, at most ``limit``), decoded and
    fitted to the model input exactly as frames are (``fit="pad"``)."""
    from pipeline.decode import DecodeOptions, decode_uri  # the same fitting as live frames

    frames = []
    for path in _folder_images(Path(folder))[:limit]:
        if path.stat().st_size > _MAX_IMAGE_BYTES:
            raise ConfigError(f"validation image {path} is larger than {_MAX_IMAGE_BYTES} bytes")
        result = decode_uri(path, DecodeOptions(resolution, fit="pad"))
        frames.append(result.frames[0].image)
    return np.stack(frames)  # (N, R, R, 3)


def _folder_images(root: Path) -> list[Path]:
    if not root.is_dir():
        raise ConfigError(f"validation image folder {root} is not a directory")
    paths = sorted(p for p in root.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
    if not paths:
        raise ConfigError(f"validation image folder {root} has no png, jpeg or webp images")
    return paths[:_MAX_FOLDER_IMAGES]


def validation_digest(
    settings: GuardSettings, resolution: int, regressions: Sequence[RegressionSet] = ()
) -> str:
    """What a guard verdict depends on besides the converted model: the generated set, the
    operator's images and the regression sets (their frames and fingerprints)."""
    h = hashlib.sha256()
    h.update(json.dumps([_GENERATOR_VERSION, settings.generated, resolution]).encode())
    if settings.extra_images is not None:
        for path in _folder_images(Path(settings.extra_images)):
            h.update(path.name.encode())
            h.update(hashlib.sha256(path.read_bytes()).digest())
    for reg in regressions:
        h.update(reg.name.encode())
        h.update(reg.fingerprint.encode())
        h.update(np.ascontiguousarray(reg.frames).tobytes())
    return h.hexdigest()


def _cosines(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    norms = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    return (a64 * b64).sum(axis=1) / np.maximum(norms, 1e-12)  # type: ignore[no-any-return]


def check_tower(
    precision: str,
    reference: Embed,
    candidate: Embed,
    frames: Frames,
    *,
    regressions: Sequence[RegressionSet] = (),
    digest: str = "",
) -> GuardReport:
    """Compare ``candidate`` with ``reference`` (torch fp32) on ``frames`` and on every
    regression set (whose frames count towards the cosine too), and time both."""
    sets = [frames, *(r.frames for r in regressions)]
    all_frames = np.concatenate([s for s in sets if len(s)])  # (N, R, R, 3)
    # warm-up, so that first-call set-up is not timed: the candidate at the timed batch's own
    # shape (OpenVINO prepares its kernels for each new input shape on first use: timed cold,
    # an int8 demo tower measured 50 images/s against 700 warm, and was passed over as slower)
    reference(all_frames[:2]), candidate(all_frames)
    start = time.perf_counter()
    ref = reference(all_frames)
    ref_s = time.perf_counter() - start
    start = time.perf_counter()
    got = candidate(all_frames)
    got_s = time.perf_counter() - start
    cos = _cosines(ref, got)
    changed: list[str] = []
    at = len(frames)
    for reg in regressions:
        n = len(reg.frames)
        want = list(reg.decide(ref[at : at + n]))
        have = list(reg.decide(got[at : at + n]))
        changed += [
            f"{reg.name}[{i}]: {w!r} -> {g!r}"
            for i, (w, g) in enumerate(zip(want, have, strict=True))
            if w != g
        ]
        at += n
    return GuardReport(
        precision=precision,
        mean_cosine=float(cos.mean()),
        min_cosine=float(cos.min()),
        frames=len(all_frames),
        changed=tuple(changed),
        digest=digest,
        images_per_s=len(all_frames) / max(got_s, 1e-9),
        fp32_images_per_s=len(all_frames) / max(ref_s, 1e-9),
    )
