"""Which CPU runtime for the image tower: OpenVINO (NNCF int8) or ONNX Runtime, against torch.

For each image tower (random weights, registry configurations), batch size and runtime mode:
images per second through the whole tower (uint8 frames in, unit embeddings out; the best of
interleaved runs) and the mean and minimum cosine to torch fp32 on generated validation frames.
One run; every mode gets the same frames, the same batch and the same thread count. This
script decided the backend that clipguard ships (see ``pipeline/models/openvino_backend.py``);
ONNX Runtime is not a dependency: install ``onnxruntime onnx onnxscript`` to include it. Modes
whose package is missing are skipped.

    python bench/compare_cpu_runtimes.py [--models ViT-B/32 ViT-B/16 RN50] [--batches 16 64]
        [--threads 2] [--repeats 3] [--only torch openvino onnxruntime transformers]
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.models import CLIP, get_model_info, load_clip
from pipeline.models.guard import generated_frames

Run = Callable[[np.ndarray], np.ndarray]


class Tower(torch.nn.Module):
    """uint8 NHWC frames -> unit embeddings: what every runtime gets to run."""

    def __init__(self, model: CLIP) -> None:
        super().__init__()
        self.visual = model.visual
        mean = torch.tensor(model.image_mean).view(1, 3, 1, 1) * 255.0
        std = torch.tensor(model.image_std).view(1, 3, 1, 1) * 255.0
        self.register_buffer("mean", mean)
        self.register_buffer("inv_std", 1.0 / std)

    def proj_dtype(self) -> torch.dtype:
        return next(self.visual.parameters()).dtype

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames.permute(0, 3, 1, 2).float()  # NHWC -> NCHW
        x = ((x - self.mean) * self.inv_std).to(self.proj_dtype())
        return F.normalize(self.visual(x).float(), dim=-1)


def _hf_config(name: str) -> Any:
    import transformers

    vis = get_model_info(name).config.vision
    return transformers.CLIPConfig(
        text_config={"hidden_size": 512, "intermediate_size": 2048, "num_attention_heads": 8},
        vision_config={
            "hidden_size": vis.width,
            "intermediate_size": 4 * vis.width,
            "num_attention_heads": vis.heads,
            "num_hidden_layers": vis.layers,
            "image_size": vis.image_resolution,
            "patch_size": vis.patch_size,
            "hidden_act": "quick_gelu",
        },
        projection_dim=get_model_info(name).embed_dim,
    )


def build(name: str) -> tuple[CLIP, Any]:
    """Our CLIP with random weights, and for ViTs transformers' vision model with the same."""
    info = get_model_info(name)
    torch.manual_seed(0)
    if info.config.vision.kind == "vit" and importlib.util.find_spec("transformers"):
        import transformers

        full = transformers.CLIPModel(_hf_config(name)).eval()
        with tempfile.TemporaryDirectory() as tmp:
            full.save_pretrained(tmp)
            ours = load_clip(Path(tmp) / "model.safetensors")
            ref = transformers.CLIPVisionModelWithProjection.from_pretrained(tmp).eval()
        return ours, ref
    model = CLIP(info.config)
    model.init_weights(torch.Generator().manual_seed(0))
    with torch.no_grad():  # BatchNorm statistics a trained network would have, roughly
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    return model.eval().requires_grad_(False), None


def torch_modes(model: CLIP, ref: Any) -> dict[str, Run]:
    modes: dict[str, Run] = {}
    fp32 = Tower(model).eval()
    bf16 = copy.deepcopy(fp32)
    bf16.visual.to(torch.bfloat16)

    def run(tower: torch.nn.Module) -> Run:
        def go(x: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return tower(torch.from_numpy(x)).float().numpy()  # type: ignore[no-any-return]

        return go

    modes["torch fp32"] = run(fp32)
    modes["torch bf16"] = run(bf16)
    if ref is not None:
        mean = torch.tensor(model.image_mean).view(1, 3, 1, 1) * 255.0
        std = torch.tensor(model.image_std).view(1, 3, 1, 1) * 255.0

        def hf(x: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                px = (torch.from_numpy(x).permute(0, 3, 1, 2).float() - mean) / std
                return F.normalize(ref(pixel_values=px).image_embeds, dim=-1).numpy()  # type: ignore[no-any-return]

        modes["transformers fp32"] = hf
    return modes


def openvino_modes(model: CLIP, calib: np.ndarray, threads: int) -> dict[str, Run]:
    import nncf
    import openvino as ov

    res = model.input_resolution
    core = ov.Core()
    tower = Tower(model).eval()
    t0 = time.perf_counter()
    ov_model = ov.convert_model(
        tower,
        example_input=torch.from_numpy(calib[:2]),
        input=[(ov.PartialShape([-1, res, res, 3]), ov.Type.u8)],
    )
    print(f"    openvino convert {time.perf_counter() - t0:.1f} s", flush=True)
    kind = model.config.vision.kind
    t0 = time.perf_counter()
    q_model = nncf.quantize(
        ov_model,
        nncf.Dataset([calib[i : i + 1] for i in range(len(calib))]),
        model_type=nncf.ModelType.TRANSFORMER if kind == "vit" else None,
        subset_size=len(calib),
    )
    print(f"    nncf quantize {time.perf_counter() - t0:.1f} s", flush=True)

    def compiled(m: Any, hint: str | None) -> Run:
        cfg: dict[str, Any] = {
            "INFERENCE_NUM_THREADS": threads,
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": 1,
        }
        if hint:
            cfg["INFERENCE_PRECISION_HINT"] = hint
        net = core.compile_model(m, "CPU", cfg)
        req = net.create_infer_request()

        def go(x: np.ndarray) -> np.ndarray:
            return np.asarray(req.infer({0: x})[0])

        return go

    return {
        "openvino fp32": compiled(ov_model, "f32"),
        "openvino bf16": compiled(ov_model, "bf16"),
        "openvino int8 (rest bf16)": compiled(q_model, None),
        "openvino int8 (rest f32)": compiled(q_model, "f32"),
    }


def onnxruntime_modes(model: CLIP, calib: np.ndarray, threads: int, tmp: Path) -> dict[str, Run]:
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    path = tmp / "tower.onnx"
    t0 = time.perf_counter()
    torch.onnx.export(
        Tower(model).eval(),
        (torch.from_numpy(calib[:2]),),
        str(path),
        input_names=["frames"],
        output_names=["embeddings"],
        dynamic_shapes={"frames": {0: torch.export.Dim("batch")}},
        dynamo=True,
        external_data=False,
    )
    print(f"    onnx export {time.perf_counter() - t0:.1f} s", flush=True)
    q8 = tmp / "tower-int8.onnx"
    q8u = tmp / "tower-uint8.onnx"
    quantize_dynamic(str(path), str(q8), weight_type=QuantType.QInt8, per_channel=True)
    quantize_dynamic(str(path), str(q8u), weight_type=QuantType.QUInt8, per_channel=False)

    def session(p: Path, *, level: Any = None) -> Run:
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = level or ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        s = ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"])

        def go(x: np.ndarray) -> np.ndarray:
            return np.asarray(s.run(None, {"frames": x})[0])

        return go

    return {
        "onnxruntime fp32": session(path),
        "onnxruntime int8 dyn QInt8 per-channel": session(q8),
        "onnxruntime int8 dyn QUInt8 per-tensor": session(q8u),
    }


def _interleaved(modes: dict[str, Run], x: np.ndarray, repeats: int) -> dict[str, float]:
    """Images per second of every mode: warm-up, then ``repeats`` rounds of one run of each
    mode in turn; the fastest run of each counts (the least disturbed by other processes)."""
    for run in modes.values():
        run(x)
    times: dict[str, list[float]] = {label: [] for label in modes}
    for _ in range(repeats):
        for label, run in modes.items():
            start = time.perf_counter()
            run(x)
            times[label].append(time.perf_counter() - start)
    return {label: len(x) / min(t) for label, t in times.items()}


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))  # type: ignore[no-any-return]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["ViT-B/32", "ViT-B/16", "RN50"])
    ap.add_argument("--batches", nargs="+", type=int, default=[16, 64])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--calibration", type=int, default=64, help="int8 calibration frames")
    ap.add_argument(
        "--only", nargs="+", default=["torch", "transformers", "openvino", "onnxruntime"]
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {args.threads} threads, best of {args.repeats} "
        "interleaved runs"
    )
    for name in args.models:
        load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
        print(f"\n== {name} (load average before: {load})", flush=True)
        model, ref = build(name)
        res = model.input_resolution
        frames = generated_frames(res, max(args.batches), seed=1)
        calib = generated_frames(res, args.calibration, seed=2)
        modes = torch_modes(model, ref if "transformers" in args.only else None)
        if "torch" not in args.only:
            modes = {k: v for k, v in modes.items() if not k.startswith("torch ")} | {
                "torch fp32": modes["torch fp32"]
            }
        with tempfile.TemporaryDirectory() as tmp:
            if "openvino" in args.only and importlib.util.find_spec("openvino"):
                modes |= openvino_modes(model, calib, args.threads)
            if "onnxruntime" in args.only and importlib.util.find_spec("onnxruntime"):
                modes |= onnxruntime_modes(model, calib, args.threads, Path(tmp))
            reference = modes["torch fp32"](frames)
            cosines = {label: _cos(run(frames), reference) for label, run in modes.items()}
            print(
                f"  {'mode':42s} {'batch':>5s} {'img/s':>8s} {'x fp32':>7s} {'mean cos':>9s} "
                f"{'min cos':>8s}"
            )
            for batch in args.batches:
                ips = _interleaved(modes, frames[:batch], args.repeats)
                for label, value in ips.items():
                    cos = cosines[label]
                    print(
                        f"  {label:42s} {batch:5d} {value:8.1f} "
                        f"{value / ips['torch fp32']:6.2f}x {cos.mean():9.5f} {cos.min():8.5f}",
                        flush=True,
                    )
    print(f"\nload average after: {', '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
