"""One image-encoder API for every device: :func:`load_encoder`.

>>> encoder = load_encoder("ViT-B/32")           # device="auto", precision="auto"
>>> encoder.encode(frames)                        # uint8 [B, R, R, 3] -> float32 [B, E], unit rows
>>> encoder.precision, encoder.backend            # e.g. ("int8", "openvino")

Where the image tower runs:

* **CPU**: OpenVINO (:mod:`pipeline.models.openvino_backend`), converted once per model,
  weights, precision and runtime version into the converted-model cache
  (:mod:`pipeline.models.converted`). ``precision="auto"`` takes the fastest precision that
  passes the accuracy guard (:mod:`pipeline.models.guard`): int8, else bf16 where the CPU has
  native bf16, else fp32; a precision the guard measured slower than fp32 on this host is
  passed over too. ``backend="torch"`` runs torch eager instead (fp32, or bf16 where the
  CPU has it).
* **CUDA**: torch, fp16 by default (bf16 on request); the guard checks half precision against
  fp32 on the GPU at every start (it takes well under a second there).

A precision asked for explicitly is used only if the device offers it (else
:class:`~pipeline.errors.ConfigError` listing what it offers) and it passes the guard (else
:class:`~pipeline.errors.AccuracyGuardError` with the figures). fp32 is the reference and is
never refused. ``encoder.model`` is the fp32 torch model on the device, for the text tower.
"""

from __future__ import annotations

import copy
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from pipeline.errors import AccuracyGuardError, ConfigError
from pipeline.events import EncoderInfo
from pipeline.models.base import ImageTextModel
from pipeline.models.converted import (
    ConvertedModel,
    converted_dir,
    ensure_converted,
    entry_name,
    find_converted,
    locked,
    record_check,
)
from pipeline.models.guard import (
    GuardReport,
    GuardSettings,
    RegressionSet,
    check_tower,
    folder_frames,
    generated_frames,
    validation_digest,
)
from pipeline.models.loading import load_model

__all__ = [
    "Backend",
    "ImageEncoder",
    "OpenVINOImageEncoder",
    "Precision",
    "TorchImageEncoder",
    "load_encoder",
    "reference_encoder",
]

_log = logging.getLogger(__name__)

Precision = Literal["auto", "fp32", "bf16", "fp16", "int8"]
Backend = Literal["auto", "openvino", "torch"]
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_CALIBRATION_FRAMES = 64  # int8 calibration: generated frames, another seed than validation
_CALIBRATION_SEED = 1
Frames = npt.NDArray[np.uint8]


class ImageEncoder(ABC):
    """An image tower ready to encode: ``encode(frames)`` plus what it is.

    ``precision`` is the mode in force (``fp32``, ``bf16``, ``fp16`` or ``int8``), ``backend``
    the runtime (``openvino`` or ``torch``), ``guard`` the accuracy figures it was accepted
    with (None for fp32), ``refused`` the messages of precisions tried first and refused.
    """

    backend: str = ""

    def __init__(
        self,
        model: ImageTextModel,
        precision: str,
        *,
        batch_size: int,
        guard: GuardReport | None = None,
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, not {batch_size}")
        self.model = model
        self.name = model.name
        self.precision = precision
        self.batch_size = batch_size
        self.guard = guard
        self.refused: tuple[str, ...] = ()
        self.embed_dim = model.embed_dim
        self.input_resolution = model.input_resolution

    @property
    def runtime(self) -> str:
        """The runtime and its version, e.g. ``torch-2.13.0`` or ``openvino-2026.4.1-...``."""
        return f"torch-{torch.__version__}"

    def describe(self) -> dict[str, str]:
        """What produced an embedding, for output records' ``model`` block."""
        return {
            "name": self.name,
            "weights_sha256": self.model.fingerprint(),
            "precision": self.precision,
            "backend": self.backend,
            "runtime": self.runtime,
        }

    def info(self) -> EncoderInfo:
        """:meth:`describe` as the block every score record carries."""
        return EncoderInfo(
            weights_sha256=self.model.fingerprint(),
            precision=self.precision,  # type: ignore[arg-type]
            backend=self.backend,
            runtime=self.runtime,
        )

    def encode(self, frames: Frames | Sequence[Frames]) -> npt.NDArray[np.float32]:
        """uint8 RGB ``[B, R, R, 3]`` (R = ``input_resolution``) -> unit float32 ``[B, E]``."""
        if isinstance(frames, np.ndarray):
            batch = frames
        elif len(frames) == 0:
            return np.zeros((0, self.embed_dim), np.float32)
        else:
            batch = np.stack(frames)
        res = self.input_resolution
        if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[1:] != (res, res, 3):
            raise ConfigError(
                f"frames must be uint8 RGB [B, {res}, {res}, 3] (fitted to the model input), "
                f"got {batch.dtype} {batch.shape}"
            )
        out = np.empty((len(batch), self.embed_dim), np.float32)  # (B, E)
        for i in range(0, len(batch), self.batch_size):
            out[i : i + self.batch_size] = self._encode(batch[i : i + self.batch_size])
        return out

    @abstractmethod
    def _encode(self, batch: Frames) -> npt.NDArray[np.float32]:
        """One chunk of at most ``batch_size`` checked frames -> unit embeddings."""


class TorchImageEncoder(ImageEncoder):
    """The image tower in torch eager, on the model's device, in fp32, bf16 or fp16."""

    backend = "torch"

    def __init__(
        self,
        model: ImageTextModel,
        precision: str,
        *,
        batch_size: int,
        guard: GuardReport | None = None,
    ) -> None:
        super().__init__(model, precision, batch_size=batch_size, guard=guard)
        dtype = _DTYPES[precision]
        # the half-precision tower is a copy: ``model`` stays fp32 for the text tower
        self._tower: ImageTextModel = (
            model if dtype == model.dtype else copy.deepcopy(model).to(dtype)  # type: ignore[attr-defined]
        )

    def _encode(self, batch: Frames) -> npt.NDArray[np.float32]:
        tower = self._tower
        with torch.inference_mode():
            pixels = tower.preprocess(torch.from_numpy(np.ascontiguousarray(batch)))
            emb = F.normalize(tower.encode_image(pixels).float(), dim=-1)
        return emb.cpu().numpy()  # type: ignore[no-any-return]


class OpenVINOImageEncoder(ImageEncoder):
    """The image tower converted for OpenVINO, on the CPU."""

    backend = "openvino"

    def __init__(
        self,
        model: ImageTextModel,
        converted: ConvertedModel,
        *,
        threads: int,
        batch_size: int,
        converted_now: bool,
    ) -> None:
        from pipeline.models.openvino_backend import OpenVINOTower

        super().__init__(model, converted.precision, batch_size=batch_size)
        self.converted = converted
        self.converted_now = converted_now  # this call converted it (else: from the cache)
        self._tower = OpenVINOTower(converted.path, converted.precision, threads=threads)

    @property
    def runtime(self) -> str:
        return self.converted.runtime_version

    def _encode(self, batch: Frames) -> npt.NDArray[np.float32]:
        return self._tower(batch)


def _torch_precisions(device: torch.device) -> tuple[str, ...]:
    """Precisions torch runs well on ``device``, the default first."""
    if device.type == "cuda":
        with torch.cuda.device(device):
            bf16 = torch.cuda.is_bf16_supported()
        return ("fp16", "bf16", "fp32") if bf16 else ("fp16", "fp32")
    native_bf16 = bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)())
    return ("bf16", "fp32") if native_bf16 else ("fp32",)


def _device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device} asked for, but torch sees no CUDA device")
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"device must be auto, cpu or cuda[:N], not {device}")
    return dev


def _candidates(precision: str, offered: tuple[str, ...], where: str) -> tuple[str, ...]:
    if precision == "auto":
        return offered
    if precision not in offered:
        raise ConfigError(
            f"precision {precision} is not available {where}; available: "
            f"{', '.join(offered)} (or auto)"
        )
    return (precision,)


class _Validation:
    """The validation frames and the fp32 reference embeddings, computed once when needed."""

    def __init__(
        self, model: ImageTextModel, settings: GuardSettings, regressions: Sequence[RegressionSet]
    ) -> None:
        self.model = model
        self.settings = settings
        self.regressions = regressions
        self.digest = validation_digest(settings, model.input_resolution, regressions)
        self._frames: Frames | None = None
        self._reference = TorchImageEncoder(model, "fp32", batch_size=64)

    @property
    def frames(self) -> Frames:
        if self._frames is None:
            res = self.model.input_resolution
            sets = [generated_frames(res, self.settings.generated)]
            if self.settings.extra_images is not None:
                sets.append(folder_frames(self.settings.extra_images, res))
            self._frames = np.concatenate(sets)  # (N, R, R, 3)
        return self._frames

    def check(
        self, precision: str, candidate: Callable[[Frames], npt.NDArray[np.float32]]
    ) -> GuardReport:
        return check_tower(
            precision,
            self._reference.encode,
            candidate,
            self.frames,
            regressions=self.regressions,
            digest=self.digest,
        )


def load_encoder(
    name_or_path: str | Path | ImageTextModel,
    *,
    device: str | torch.device = "auto",
    precision: Precision | str = "auto",
    backend: Backend | str = "auto",
    threads: int | None = None,
    batch_size: int = 64,
    guard: GuardSettings | None = None,
    regressions: Sequence[RegressionSet] = (),
    cache_dir: Path | None = None,
) -> ImageEncoder:
    """The image encoder for a registry name, a weights file or folder, or a loaded fp32 model
    (CLIP, SigLIP or SigLIP 2).

    ``precision``: ``auto`` (the fastest that passes the guard) or one of ``fp32``, ``bf16``,
    ``fp16``, ``int8``. ``backend``: ``auto`` (OpenVINO on the CPU, torch on CUDA), ``openvino``
    or ``torch``. ``threads``: CPU threads of the runtime (default: torch's thread count).
    ``guard``: the accuracy guard's thresholds and extra validation images; ``regressions``:
    frames whose decisions must not change (e.g. the policies' regression examples).
    ``cache_dir``: the converted-model cache (default
    :func:`pipeline.models.converted.converted_dir`).
    """
    if precision not in get_args(Precision):
        raise ConfigError(f"precision must be one of {', '.join(get_args(Precision))}")
    if backend not in get_args(Backend):
        raise ConfigError(f"backend must be one of {', '.join(get_args(Backend))}")
    dev = _device(device)
    model: ImageTextModel
    if isinstance(name_or_path, str | Path):
        model = load_model(name_or_path, device=dev)
    else:
        model = name_or_path
        if model.dtype != torch.float32 or model.device.type != dev.type:
            raise ConfigError(
                f"load_encoder takes a model in fp32 on {dev}, got {model.dtype} on "
                f"{model.device}; pass its name or path instead"
            )
    if backend == "auto":
        backend = "openvino" if dev.type == "cpu" else "torch"
    if backend == "openvino" and dev.type != "cpu":
        raise ConfigError(f"the openvino backend runs on the CPU, not on {dev}")
    settings = guard or GuardSettings()
    validation = _Validation(model, settings, regressions)
    if backend == "openvino":
        from pipeline.models.openvino_backend import cpu_precisions

        offered = cpu_precisions()
        where = "from OpenVINO on this CPU"
    else:
        offered = _torch_precisions(dev)
        where = f"from torch on {dev}"
    refused: list[str] = []
    for p in _candidates(str(precision), offered, where):
        if backend == "openvino":
            encoder: ImageEncoder = _openvino(
                model, p, validation, threads=threads, batch_size=batch_size, root=cache_dir
            )
        else:
            encoder = TorchImageEncoder(model, p, batch_size=batch_size)
            if p != "fp32":
                encoder.guard = validation.check(p, encoder.encode)
        message = _refusal(encoder, settings, speed=precision == "auto" and dev.type == "cpu")
        if message is None:
            encoder.refused = tuple(refused)
            _log_choice(encoder, dev)
            return encoder
        if precision != "auto":
            raise AccuracyGuardError(
                f"{message}; use precision auto to fall back to the next precision, or lower "
                "the guard's min_mean_cosine if this loss is acceptable"
            )
        nxt = offered[offered.index(p) + 1]  # fp32, last, is never refused
        _log.warning("%s; trying %s", message, nxt)
        refused.append(message)
    raise AssertionError("unreachable: fp32 is always accepted")


def _refusal(encoder: ImageEncoder, settings: GuardSettings, *, speed: bool) -> str | None:
    """Why ``encoder``'s precision is not taken (None: it is). ``speed``: a precision measured
    slower than fp32 is passed over too."""
    report = encoder.guard
    if report is None:  # fp32: the reference
        return None
    if not report.passed(settings):
        return f"{encoder.name}: {encoder.precision} refused by the accuracy guard: " + (
            report.reason(settings)
        )
    if speed and report.slower_than_fp32():
        return (
            f"{encoder.name}: {encoder.precision} passed over: slower than fp32 on this CPU "
            f"({report.images_per_s:.1f} against {report.fp32_images_per_s:.1f} images/s)"
        )
    return None


def _openvino(
    model: ImageTextModel,
    precision: str,
    validation: _Validation,
    *,
    threads: int | None,
    batch_size: int,
    root: Path | None,
) -> OpenVINOImageEncoder:
    """Convert (once per host) or reuse the tower in ``precision``, guard-checked."""
    from pipeline.models.openvino_backend import convert_tower, runtime_version

    root = root or converted_dir()
    version = runtime_version()
    sha = model.fingerprint()
    n_threads = threads or torch.get_num_threads()
    key = {"weights_sha256": sha, "precision": precision, "runtime_version": version}
    done = find_converted(root, model.name, **key)
    if done is not None and (precision == "fp32" or done.check(validation.digest)):
        # converted and checked before: no lock, so a read-only cache works too
        encoder = OpenVINOImageEncoder(
            model, done, threads=n_threads, batch_size=batch_size, converted_now=False
        )
        encoder.guard = done.check(validation.digest)
        return encoder
    with locked(root / entry_name(model.name, sha, precision, version)):
        converted, now = ensure_converted(
            root,
            model.name,
            **key,
            backend="openvino",
            convert=lambda folder: convert_tower(model, precision, folder, _calibration(model)),
        )
        encoder = OpenVINOImageEncoder(
            model, converted, threads=n_threads, batch_size=batch_size, converted_now=now
        )
        if precision != "fp32":
            report = converted.check(validation.digest)
            if report is None:
                report = validation.check(precision, encoder.encode)
                encoder.converted = record_check(converted, report)
            encoder.guard = report
    if now:
        _log.info(
            "converted %s to OpenVINO %s in %.1f s: %s",
            model.name,
            precision,
            converted.conversion_s,
            converted.path,
        )
    return encoder


def _calibration(model: ImageTextModel) -> Frames:
    return generated_frames(model.input_resolution, _CALIBRATION_FRAMES, seed=_CALIBRATION_SEED)


def _log_choice(encoder: ImageEncoder, device: torch.device) -> None:
    figures = ""
    if encoder.guard is not None:
        figures = (
            f", cosine to fp32 mean {encoder.guard.mean_cosine:.5f} min "
            f"{encoder.guard.min_cosine:.5f} on {encoder.guard.frames} frames"
        )
    _log.info(
        "image encoder %s: %s %s on %s%s",
        encoder.name,
        encoder.backend,
        encoder.precision,
        device,
        figures,
    )


def reference_encoder(model: ImageTextModel, *, batch_size: int = 64) -> TorchImageEncoder:
    """The model's own image tower in fp32 torch: the reference every precision is held to,
    used where embeddings must match the compiled policies' (exemplars, authoring tools)."""
    if model.dtype != torch.float32:
        raise ConfigError(f"the reference encoder runs in fp32, not {model.dtype}")
    return TorchImageEncoder(model, "fp32", batch_size=batch_size)
