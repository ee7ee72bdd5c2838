"""The CPU runtime for the image tower: OpenVINO, with int8 from NNCF.

Why OpenVINO: measured on the build machine (2 cores of an Intel Xeon with AVX-512, VNNI and
BF16; random weights, 2 threads; ``bench/compare_cpu_runtimes.py``, one run), images per second
through the whole tower, uint8 frames in and unit embeddings out, with the cosine to torch fp32
(mean / min over 64 generated frames):

RUNTIME_FIGURES

ONNX Runtime's CPU provider has no bf16 path on x86, and its dynamic int8 (weights QInt8
per-channel, activations quantised at run time) was well behind OpenVINO's static int8 from
NNCF (SmoothQuant under the transformer preset keeps CLIP's activation outliers in range), so
OpenVINO is the one runtime shipped. Torch stays for CUDA, for the text tower and as the
fallback.

Conversion (:func:`convert_tower`): the tower with its input normalisation and the final L2
normalisation folded in (uint8 NHWC frames in, unit float32 embeddings out, any batch size) is
traced by ``openvino.convert_model``; ``fp32`` is saved as it is; ``bf16`` is the same graph with
weights stored in fp16 (half the disk; OpenVINO runs it in bf16 with
``INFERENCE_PRECISION_HINT``); ``int8`` is quantised by ``nncf.quantize`` on calibration frames
(the transformer preset, with SmoothQuant, for vision transformers; the default preset for
ResNets), the operations left in float running in f32. The final L2 normalisation runs in
numpy on the float32 output.
"""

from __future__ import annotations

import logging
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from pipeline.errors import ConfigError, ModelError
from pipeline.models.model import CLIP

__all__ = [
    "OpenVINOTower",
    "TowerModule",
    "convert_tower",
    "cpu_precisions",
    "runtime_version",
]

_log = logging.getLogger(__name__)
_XML = "tower.xml"


class TowerModule(nn.Module):
    """uint8 ``[B, R, R, 3]`` RGB frames -> float32 embeddings ``[B, E]``: the image tower with
    its input normalisation, as one graph for a runtime to run. The L2 normalisation stays
    outside (:class:`OpenVINOTower`): quantised, it no longer gives unit vectors."""

    def __init__(self, model: CLIP) -> None:
        super().__init__()
        self.visual = model.visual
        mean = torch.tensor(model.image_mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        std = torch.tensor(model.image_std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        self.mean: torch.Tensor
        self.inv_std: torch.Tensor
        self.register_buffer("mean", mean)
        self.register_buffer("inv_std", 1.0 / std)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames.permute(0, 3, 1, 2).float()  # NHWC -> NCHW
        x = (x - self.mean) * self.inv_std
        return self.visual(x).float()  # type: ignore[no-any-return]


@cache
def runtime_version() -> str:
    """OpenVINO's and NNCF's versions: part of every conversion's cache key."""
    import nncf
    import openvino as ov

    return f"openvino-{ov.get_version().split('-')[0]}-nncf-{nncf.__version__}"


@cache
def _core() -> Any:
    import openvino as ov

    return ov.Core()


def cpu_precisions() -> tuple[str, ...]:
    """Precisions OpenVINO runs natively on this CPU, fastest first."""
    caps = set(_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    order = [("int8", "INT8"), ("bf16", "BF16")]
    return (*(p for p, cap in order if cap in caps), "fp32")


def convert_tower(
    model: CLIP, precision: str, folder: Path, calibration: npt.NDArray[np.uint8]
) -> None:
    """Write ``model``'s image tower in ``precision`` as OpenVINO IR into ``folder``."""
    import openvino as ov

    if precision not in ("fp32", "bf16", "int8"):
        raise ConfigError(f"OpenVINO converts fp32, bf16 or int8, not {precision!r}")
    if model.dtype != torch.float32 or model.device.type != "cpu":
        raise ConfigError(f"convert_tower needs the fp32 model on the CPU, not {model.dtype}")
    res = model.input_resolution
    tower = TowerModule(model).eval()
    try:
        with torch.no_grad():
            ov_model = ov.convert_model(
                tower,
                example_input=torch.from_numpy(np.ascontiguousarray(calibration[:2])),
                input=[(ov.PartialShape([-1, res, res, 3]), ov.Type.u8)],
            )
        if precision == "int8":
            ov_model = _quantize(ov_model, model, calibration)
        ov.save_model(ov_model, str(folder / _XML), compress_to_fp16=precision == "bf16")
    except (RuntimeError, ValueError, TypeError) as e:
        raise ModelError(f"OpenVINO could not convert {model.name} to {precision}: {e}") from e


def _quantize(ov_model: Any, model: CLIP, calibration: npt.NDArray[np.uint8]) -> Any:
    import nncf

    batches = [calibration[i : i + 1] for i in range(len(calibration))]  # (1, R, R, 3) each
    vit = model.config.vision.kind == "vit"
    return nncf.quantize(
        ov_model,
        nncf.Dataset(batches),
        model_type=nncf.ModelType.TRANSFORMER if vit else None,
        subset_size=len(batches),
    )


class OpenVINOTower:
    """A converted tower compiled for the CPU: ``tower(frames) -> embeddings``.

    Not safe to call from several threads at once (one infer request); the stream worker
    encodes from one thread.
    """

    def __init__(self, folder: Path, precision: str, *, threads: int) -> None:
        if threads < 1:
            raise ConfigError(f"threads must be >= 1, not {threads}")
        config: dict[str, Any] = {
            "INFERENCE_NUM_THREADS": threads,
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": 1,
            # int8 leaves some operations in float: those run in f32, measured both faster and
            # closer to fp32 than bf16 on the build machine (ViT-B/16 16.7 against 15.5 img/s)
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
        }
        try:
            compiled = _core().compile_model(str(folder / _XML), "CPU", config)
        except RuntimeError as e:
            raise ModelError(f"OpenVINO could not load {folder}: {e}") from e
        self._request = compiled.create_infer_request()
        self.precision = precision
        self.threads = threads

    def __call__(self, frames: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        out = self._request.infer({0: np.ascontiguousarray(frames)})
        emb = np.asarray(out[0], dtype=np.float32)  # (B, E)
        norms = np.linalg.norm(emb, axis=1, keepdims=True)  # (B, 1)
        return emb / np.maximum(norms, 1e-12)  # type: ignore[no-any-return]
