"""The CPU runtime for the image tower: OpenVINO, with int8 from NNCF.

Why OpenVINO: measured on the build machine (2 cores of an Intel Xeon with AVX-512, VNNI and
BF16, no AMX; random weights, 2 threads; ``bench/compare_cpu_runtimes.py``, one run; torch
2.13, OpenVINO 2026.4.1, NNCF 3.4.0, ONNX Runtime 1.32.0). Images per second through the whole
tower (uint8 frames in, embeddings out), best of 3 interleaved runs, at batch 16 / batch 64
(other jobs shared the machine during some batch-64 runs: compare within a column):

==============================  ============  ============  ============
mode                            ViT-B/32      ViT-B/16      RN50
==============================  ============  ============  ============
torch eager fp32                21.6 / 18.5   5.2 / 4.1     13.2 / 7.8
torch eager bf16                14.5 / 12.7   3.5 / 3.1     10.2 / 6.5
transformers fp32               22.7 / 17.9   4.7 / 4.3     -
OpenVINO fp32                   21.4 / 17.9   5.7 / 5.6     19.5 / 18.2
OpenVINO bf16                   15.5 / 14.5   4.1 / 3.8     13.3 / 8.1
OpenVINO int8, rest bf16        61.7 / 62.4   15.5 / 13.1   73.3 / 61.0
OpenVINO int8, rest f32         68.9 / 63.6   16.7 / 13.1   71.5 / 51.9
ONNX Runtime fp32               21.1 / 20.8   5.2 / 4.3     23.6 / 11.8
ONNX Runtime int8, dynamic      39.0 / 37.2   11.4 / 10.7   2.6 / 2.8
  (QInt8 weights per channel)
ONNX Runtime int8, dynamic      22.5 / 22.7   6.0 / 5.4     11.4 / 9.4
  (QUInt8 weights per tensor)
==============================  ============  ============  ============

Cosine to torch fp32, mean / min over 64 generated frames:

==============================  ===============  ===============  ===============
mode                            ViT-B/32         ViT-B/16         RN50
==============================  ===============  ===============  ===============
torch / OpenVINO bf16           .99995 / .99994  .99996 / .99995  .99998 / .99998
OpenVINO int8, rest f32         .99945 / .99469  .99936 / .99571  .99969 / .99906
ONNX Runtime int8 QInt8 p.c.    .99985 / .99982  .99986 / .99983  .99947 / .99940
==============================  ===============  ===============  ===============

OpenVINO's int8 from NNCF (static, SmoothQuant under the transformer preset, which keeps CLIP's
activation outliers in range) was the fastest mode on every tower: 3.2-3.4x torch fp32 on the
ViTs, 5.4-6.7x on RN50, at a mean cosine of 0.9994-0.9997. ONNX Runtime's dynamic int8 was
slightly closer to fp32 but slower on the ViTs (1.8-2.6x) and far slower on RN50 (its integer
convolutions ran at 0.2-0.4x fp32), and its CPU provider has no bf16 path. So OpenVINO is the
one runtime shipped. bf16 was slower than fp32 here in both torch and OpenVINO, which is why
``precision="auto"`` also times a candidate against fp32 (:mod:`pipeline.models.guard`); int8
runs its remaining float operations in f32 (faster here than bf16, and closer to fp32). Torch
stays for CUDA, for the text tower and as the fallback.

Conversion (:func:`convert_tower`): the tower with its input normalisation folded in (uint8
NHWC frames in, float32 embeddings out, any batch size) is traced by ``openvino.convert_model``.
``fp32`` is saved as it is; ``bf16`` is the same graph with weights stored in fp16 (half the
disk; OpenVINO runs it in bf16 through ``INFERENCE_PRECISION_HINT``); ``int8`` is quantised by
``nncf.quantize_with_accuracy_control`` on calibration frames (the transformer preset, with
SmoothQuant, for vision transformers; the default preset for ResNets), which puts back in float
the few operations that cost most cosine to fp32. Why: on an AVX2-only CPU (AMD EPYC, no VNNI)
plain ``nncf.quantize`` of the fine-tuned demo ResNet gave mean cosine 0.9923 (min 0.927) on
the guard's frames; leaving out one operation at a time showed the loss sits in the stem (the
first two convolutions: either one left in float gave 0.9955-0.9957), not in the calibration
set (calibrating on the guard's own frames gave 0.9922) nor in the attention pool; NNCF's
options alone fell short (overflow fix on every layer 0.9944, mixed preset 0.9912, full bias
correction 0.9934). Under accuracy control (mean cosine on the calibration frames within 0.002
of fp32) it gave 0.9981 (min 0.990) with 11 of 46 operations in float when the search ranked
single frames (47 s of CPU), and 0.9979 (min 0.985) ranking batches of 8 frames (9 s). A
tower that already meets the bound is left fully quantised, at the cost of one fp32 and one
int8 pass over the calibration frames. The final L2 normalisation runs in numpy on the
float32 output (quantised, it no longer gave unit vectors).
"""

from __future__ import annotations

import contextlib
import io
import logging
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from pipeline.errors import ConfigError, ModelError
from pipeline.models.base import ImageTextModel

__all__ = [
    "OpenVINOTower",
    "TowerModule",
    "convert_tower",
    "cpu_precisions",
    "runtime_version",
]

_log = logging.getLogger(__name__)
_XML = "tower.xml"
# int8 accuracy control: the mean cosine to fp32 on the calibration frames may drop by at most
# this much (the accuracy guard asks 0.995 on other frames: this leaves it a margin), and at
# most this many quantised operations go back to float to get there
_MAX_COSINE_DROP = 0.002
_RECIPE = "r3"  # bump when convert_tower changes what it writes (r3: batched accuracy control)
_MAX_REVERTED = 24
_ITEM_FRAMES = 8  # calibration frames per item of the accuracy-control search


class TowerModule(nn.Module):
    """uint8 ``[B, R, R, 3]`` RGB frames -> float32 embeddings ``[B, E]``: the image tower with
    its input normalisation, as one graph for a runtime to run. The L2 normalisation stays
    outside (:class:`OpenVINOTower`): quantised, it no longer gives unit vectors."""

    def __init__(self, model: ImageTextModel) -> None:
        super().__init__()
        self.tower = model.image_tower
        mean = torch.tensor(model.image_mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        std = torch.tensor(model.image_std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        self.mean: torch.Tensor
        self.inv_std: torch.Tensor
        self.register_buffer("mean", mean)
        self.register_buffer("inv_std", 1.0 / std)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames.permute(0, 3, 1, 2).float()  # NHWC -> NCHW
        x = (x - self.mean) * self.inv_std
        return self.tower(x).float()  # type: ignore[no-any-return]


@cache
def runtime_version() -> str:
    """OpenVINO's and NNCF's versions and the conversion recipe: part of every conversion's
    cache key."""
    import nncf
    import openvino as ov

    return f"openvino-{ov.get_version().split('-')[0]}-nncf-{nncf.__version__}-{_RECIPE}"


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
    model: ImageTextModel, precision: str, folder: Path, calibration: npt.NDArray[np.uint8]
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


def _quantize(ov_model: Any, model: ImageTextModel, calibration: npt.NDArray[np.uint8]) -> Any:
    """Static int8 from NNCF, under accuracy control: the operations that cost most cosine to
    fp32 on the calibration frames go back to float until the mean cosine is within
    :data:`_MAX_COSINE_DROP` of fp32 (at most :data:`_MAX_REVERTED` of them)."""
    import nncf

    with torch.no_grad():  # the fp32 embeddings each calibration frame is held to
        reference = TowerModule(model).eval()(torch.from_numpy(calibration)).numpy()
    # items of _ITEM_FRAMES frames: NNCF's search runs the model on every item once per
    # quantiser group it ranks and per operation it reverts; batched, that is a few dozen
    # inferences a pass instead of 64 (the demo model's conversion: 9 s of CPU, was 47 s)
    items = [
        (calibration[i : i + _ITEM_FRAMES], reference[i : i + _ITEM_FRAMES])
        for i in range(0, len(calibration), _ITEM_FRAMES)
    ]
    dataset = nncf.Dataset(items, lambda item: item[0])  # (n, R, R, 3) each
    vit = getattr(getattr(model, "config", None), "vision", None)
    vit = getattr(vit, "kind", "vit") == "vit"  # SigLIP's towers are ViTs too
    # NNCF logs every step of the search (each reverted operation by name) at INFO, and draws
    # progress bars on standard output (rich, whatever the log level): a worker's or the
    # demo's output should say that a conversion ran, not how it went. Log handlers keep the
    # stream they were made with, so only the bars are held back.
    nncf_log = logging.getLogger("nncf")
    level = nncf_log.level
    nncf_log.setLevel(max(level, logging.WARNING))
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return _search(nncf, ov_model, dataset, vit)
    finally:
        nncf_log.setLevel(level)


def _search(nncf: Any, ov_model: Any, dataset: Any, vit: bool) -> Any:
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

    return nncf.quantize_with_accuracy_control(
        ov_model,
        dataset,
        dataset,
        validation_fn=_mean_cosine,
        max_drop=_MAX_COSINE_DROP,
        model_type=nncf.ModelType.TRANSFORMER if vit else None,
        subset_size=dataset.get_length(),
        advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(
            max_num_iterations=_MAX_REVERTED
        ),
    )


def _mean_cosine(compiled: Any, items: Any) -> tuple[float, list[float]]:
    """NNCF's metric: the mean cosine to fp32 over every frame of the ``(frames, fp32
    embeddings)`` items, and each item's mean (what NNCF ranks by)."""
    cosines: list[float] = []
    per_item: list[float] = []
    for frames, want in items:
        got = np.asarray(compiled(frames)[0], np.float64)  # (n, E)
        ref = want.astype(np.float64)
        denom = np.maximum(np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1), 1e-12)
        item = (got * ref).sum(axis=1) / denom
        cosines.extend(item.tolist())
        per_item.append(float(item.mean()))
    return float(np.mean(cosines)), per_item


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
