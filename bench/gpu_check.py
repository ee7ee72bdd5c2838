"""GPU check: one run (at most ``--budget-s``, 10 minutes by default) on a CUDA machine.

Answers, as one table:

1. encoder parity on CUDA: fp16 and bf16 image towers against fp32 (mean and min cosine, on
   generated frames), and which precision ``load_encoder`` picks by default;
2. NVDEC: H.264 clips generated here (720p and 1080p, with B-frames) decoded through PyAV's
   hardware acceleration (``HWAccel("cuda")``, no software fallback) against CPU decode of the
   same bytes: frame count, timestamps, PSNR of the RGB frames;
3. ViT-B/32 and ViT-L/14 (random weights) images per second at batch 64 to 512;
4. decode and encode end to end on the GPU (NVDEC, resize to the model input, fp16 encode) on
   the 720p and 1080p clips, in frames per second. This is the pipeline's two GPU stages
   chained, not the Kafka worker (which has no GPU decode option yet).

Without CUDA it says so and exits 2. ``--device cpu`` runs the same code reduced to seconds
(a tiny model, small clips, CPU decode in place of NVDEC: threaded against single-threaded), so
the script itself is tested (``tests/test_gpu_check.py``). Exit 1 when a check fails.

    python bench/gpu_check.py [--device cuda] [--budget-s 600]
"""

from __future__ import annotations

import argparse
import io
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import av
import numpy as np
import torch

from pipeline.models import CLIP, CLIPConfig, TextConfig, VisionConfig, get_model_info
from pipeline.models.encoders import TorchImageEncoder, load_encoder
from pipeline.models.guard import generated_frames


@dataclass
class Row:
    check: str
    item: str
    result: str
    ok: bool | None  # None: a figure, not a pass/fail check


@dataclass(frozen=True)
class Plan:
    device: torch.device
    parity_model: str
    throughput_models: tuple[str, ...]
    batches: tuple[int, ...]
    clips: tuple[tuple[str, int, int], ...]  # (label, width, height)
    clip_frames: int
    hwaccel: bool


def _plan(device: str) -> Plan:
    if device == "cuda":
        return Plan(
            device=torch.device("cuda"),
            parity_model="ViT-B/32",
            throughput_models=("ViT-B/32", "ViT-L/14"),
            batches=(64, 128, 256, 512),
            clips=(("720p", 1280, 720), ("1080p", 1920, 1080)),
            clip_frames=120,
            hwaccel=True,
        )
    return Plan(
        device=torch.device("cpu"),
        parity_model="tiny",
        throughput_models=("tiny",),
        batches=(4, 8),
        clips=(("240p", 320, 240),),
        clip_frames=12,
        hwaccel=False,
    )


def _model(name: str, device: torch.device) -> CLIP:
    """Random weights: ``tiny`` (a 2-layer ViT at 32 px) or a registry architecture."""
    if name == "tiny":
        config = CLIPConfig(
            embed_dim=32,
            vision=VisionConfig(
                kind="vit", image_resolution=32, width=64, layers=2, heads=2, patch_size=8
            ),
            text=TextConfig(context_length=8, vocab_size=64, width=32, heads=1, layers=1),
        )
    else:
        config = get_model_info(name).config
    model = CLIP(config)
    model.init_weights(torch.Generator().manual_seed(0))
    model.name = f"random-{name}"
    return model.to(device).eval().requires_grad_(False)


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))  # type: ignore[no-any-return]


def check_parity(plan: Plan) -> list[Row]:
    model = _model(plan.parity_model, plan.device)
    frames = generated_frames(model.input_resolution, 64, seed=5)
    ref = TorchImageEncoder(model, "fp32", batch_size=64).encode(frames)
    rows = []
    halves = ("fp16", "bf16") if plan.device.type == "cuda" else ("bf16",)
    for p in halves:
        cos = _cos(TorchImageEncoder(model, p, batch_size=64).encode(frames), ref)
        rows.append(
            Row(
                "encoder parity",
                f"{plan.parity_model} {p} vs fp32 on {plan.device.type}",
                f"cosine mean {cos.mean():.5f} min {cos.min():.5f}",
                bool(cos.mean() >= 0.995),
            )
        )
    default = load_encoder(model, device=plan.device, backend="torch")
    guard = default.guard
    figures = "" if guard is None else f", guard mean cosine {guard.mean_cosine:.5f}"
    rows.append(
        Row("encoder parity", "load_encoder default", f"{default.precision}{figures}", None)
    )
    return rows


def make_clip(width: int, height: int, frames: int) -> bytes:
    """An H.264 MP4 with B-frames: moving shapes over a gradient, 25 fps."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"bf": "2", "g": "25", "preset": "veryfast", "crf": "20"}
        y, x = np.mgrid[0:height, 0:width]
        for i in range(frames):
            img = np.zeros((height, width, 3), np.uint8)  # (H, W, 3)
            img[..., 0] = (x * 255 // width + 4 * i) % 256
            img[..., 1] = y * 255 // height
            cx, cy = (i * 17) % width, (i * 11) % height
            img[(np.abs(x - cx) < width // 8) & (np.abs(y - cy) < height // 8)] = (250, 40, 40)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, 25)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return buf.getvalue()


def _decode(data: bytes, hwaccel: Any, **ctx: Any) -> tuple[list[np.ndarray], list[float], float]:
    start = time.perf_counter()
    images, times = [], []
    with av.open(io.BytesIO(data), hwaccel=hwaccel) as container:
        stream = container.streams.video[0]
        for key, value in ctx.items():
            setattr(stream.codec_context, key, value)
        for frame in container.decode(stream):
            images.append(frame.to_ndarray(format="rgb24"))
            times.append(float(frame.time))
    return images, times, time.perf_counter() - start


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def check_decode(plan: Plan, clips: dict[str, bytes]) -> list[Row]:
    rows = []
    for label, data in clips.items():
        cpu, cpu_t, cpu_s = _decode(data, None, thread_type="NONE")
        if plan.hwaccel:
            accel = av.codec.hwaccel.HWAccel("cuda", allow_software_fallback=False)
            other, other_t, other_s = _decode(data, accel)
            name = "NVDEC"
        else:
            other, other_t, other_s = _decode(data, None, thread_type="AUTO")
            name = "CPU threaded"
        n = min(len(cpu), len(other))
        psnr = [_psnr(a, b) for a, b in zip(cpu[:n], other[:n], strict=True)]
        same = len(cpu) == len(other) and cpu_t == other_t
        rows.append(
            Row(
                "decode",
                f"{label} H.264 {name} vs CPU",
                f"frames {len(other)}/{len(cpu)}, timestamps "
                f"{'equal' if cpu_t == other_t else 'DIFFER'}, "
                f"PSNR min {min(psnr, default=0):.1f} dB, {len(other) / other_s:.0f} vs "
                f"{len(cpu) / cpu_s:.0f} fps",
                same and min(psnr, default=0) >= 35.0,
            )
        )
    return rows


def _images_per_second(run: Callable[[], Any], count: int, repeats: int = 3) -> float:
    run()  # warm-up: kernels, allocator
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return count / min(times)


def _throughput(name: str, plan: Plan, deadline: float) -> Row:
    encoder = load_encoder(_model(name, plan.device), device=plan.device, backend="torch")
    encoder.batch_size = max(plan.batches)
    frames = generated_frames(encoder.input_resolution, max(plan.batches), seed=6)
    figures = []
    for batch in plan.batches:
        if time.monotonic() > deadline:
            figures.append(f"b{batch}: skipped (time budget)")
            continue
        chunk = frames[:batch]
        ips = _images_per_second(lambda chunk=chunk: encoder.encode(chunk), batch)
        figures.append(f"b{batch}: {ips:.0f}")
    return Row("images/s", f"{name} {encoder.precision}", ", ".join(figures) + " img/s", None)


def check_throughput(plan: Plan, deadline: float) -> list[Row]:
    return [_throughput(name, plan, deadline) for name in plan.throughput_models]


def check_end_to_end(plan: Plan, clips: dict[str, bytes], model: CLIP) -> list[Row]:
    rows = []
    encoder = load_encoder(model, device=plan.device, backend="torch")
    res = encoder.input_resolution
    for label, data in clips.items():
        accel = (
            av.codec.hwaccel.HWAccel("cuda", allow_software_fallback=False)
            if plan.hwaccel
            else None
        )
        start = time.perf_counter()
        batch: list[np.ndarray] = []
        count = 0
        with av.open(io.BytesIO(data), hwaccel=accel) as container:
            for frame in container.decode(video=0):
                batch.append(frame.to_ndarray(format="rgb24", width=res, height=res))
                if len(batch) == 64:
                    count += len(encoder.encode(np.stack(batch)))
                    batch = []
        if batch:
            count += len(encoder.encode(np.stack(batch)))
        fps = count / (time.perf_counter() - start)
        rows.append(
            Row(
                "end to end",
                f"{label} {'NVDEC' if plan.hwaccel else 'CPU'} decode + {encoder.precision} encode",
                f"{count} frames, {fps:.0f} frames/s",
                count > 0,
            )
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--budget-s", type=float, default=600.0)
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            f"no CUDA device: torch {torch.__version__} (CUDA build: {torch.version.cuda}) sees "
            "none. Run this on a GPU machine; `--device cpu` runs the reduced check."
        )
        return 2
    start = time.monotonic()
    deadline = start + args.budget_s * 0.8  # leave room for the sections after throughput
    plan = _plan(args.device)
    where = torch.cuda.get_device_name() if args.device == "cuda" else "CPU (reduced check)"
    print(f"GPU check on {where}: torch {torch.__version__}, PyAV {av.__version__}", flush=True)
    clips = {label: make_clip(w, h, plan.clip_frames) for label, w, h in plan.clips}
    rows = check_parity(plan)
    rows += check_decode(plan, clips)
    rows += check_throughput(plan, deadline)
    rows += check_end_to_end(plan, clips, _model(plan.throughput_models[0], plan.device))
    width = max(len(r.item) for r in rows)
    print(f"\n| {'check':14s} | {'item':{width}s} | result | ok |")
    print(f"|{'-' * 16}|{'-' * (width + 2)}|--------|----|")
    for r in rows:
        ok = "" if r.ok is None else ("yes" if r.ok else "NO")
        print(f"| {r.check:14s} | {r.item:{width}s} | {r.result} | {ok} |")
    print(f"\n{time.monotonic() - start:.1f} s")
    return 0 if all(r.ok is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
