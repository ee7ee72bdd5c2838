"""Image-encoder throughput: clipguard's load_encoder against transformers, ViT-B/32 and ViT-B/16.

For each architecture, one set of random weights (made by transformers' CLIPModel and loaded
by clipguard from the same safetensors file), one batch of generated frames, one thread count:

* clipguard at its defaults: ``load_encoder(path)`` (device and precision ``auto``),
* clipguard in each precision the CPU backend offers (``fp32``, ``bf16``, ``int8``) and in
  torch eager fp32 (``backend="torch"``),
* transformers' ``CLIPVisionModelWithProjection`` at its defaults (fp32), given pixels already
  normalised (its image processor is not timed: that favours transformers).

Runs are interleaved and the median of each is reported: images per second, the ratio to
transformers and to clipguard fp32, and the mean and minimum cosine to torch fp32. Conversions
go to a temporary cache (their time is printed, not counted). The goal for the default is at
least 6x transformers on a CPU with VNNI and BF16.

    python bench/bench_encoder.py [--models ViT-B/32 ViT-B/16] [--batch 32] [--threads 2]
        [--repeats 5]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.models import get_model_info, load_encoder
from pipeline.models.guard import generated_frames
from pipeline.models.openvino_backend import cpu_precisions

Run = Callable[[np.ndarray], np.ndarray]


def _hf_model(name: str) -> Any:
    import transformers

    info = get_model_info(name)
    vis = info.config.vision
    cfg = transformers.CLIPConfig(
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
        projection_dim=info.embed_dim,
    )
    torch.manual_seed(0)
    return transformers.CLIPModel(cfg).eval()


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))  # type: ignore[no-any-return]


def bench_model(name: str, args: argparse.Namespace, cache: Path) -> None:
    import transformers

    with tempfile.TemporaryDirectory() as tmp:
        _hf_model(name).save_pretrained(tmp)
        weights = Path(tmp) / "model.safetensors"
        ref = transformers.CLIPVisionModelWithProjection.from_pretrained(tmp).eval()
        modes: dict[str, Run] = {}
        start = time.perf_counter()
        default = load_encoder(weights, cache_dir=cache)
        print(
            f"  load_encoder defaults: {default.backend} {default.precision} "
            f"({time.perf_counter() - start:.1f} s to convert and check)",
            flush=True,
        )
        modes[f"clipguard default ({default.precision})"] = default.encode
        torch_fp32 = load_encoder(default.model, backend="torch", precision="fp32")
        modes["clipguard torch fp32"] = torch_fp32.encode
        for p in cpu_precisions():
            start = time.perf_counter()
            enc = load_encoder(default.model, precision=p, cache_dir=cache)
            print(f"  {p}: ready in {time.perf_counter() - start:.1f} s", flush=True)
            modes[f"clipguard {p}"] = enc.encode
    model = default.model
    mean = torch.tensor(model.image_mean).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(model.image_std).view(1, 3, 1, 1) * 255.0

    frames = generated_frames(model.input_resolution, args.batch, seed=7)
    pixels = (torch.from_numpy(frames).permute(0, 3, 1, 2).float() - mean) / std  # NHWC -> NCHW

    def run_ref(_: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return F.normalize(ref(pixel_values=pixels).image_embeds, dim=-1).numpy()  # type: ignore[no-any-return]

    modes["transformers fp32 (defaults)"] = run_ref
    reference = torch_fp32.encode(frames)
    cosines = {label: _cos(run(frames), reference) for label, run in modes.items()}  # + warm-up
    times: dict[str, list[float]] = {label: [] for label in modes}
    for _ in range(args.repeats):
        for label, run in modes.items():
            start = time.perf_counter()
            run(frames)
            times[label].append(time.perf_counter() - start)
    ips = {label: args.batch / statistics.median(t) for label, t in times.items()}
    hf = ips["transformers fp32 (defaults)"]
    fp32 = ips["clipguard fp32"]
    print(
        f"  {'':32s} {'img/s':>8s} {'x transformers':>15s} {'x clipguard fp32':>17s} "
        f"{'mean cos':>9s} {'min cos':>8s}"
    )
    for label in modes:
        c = cosines[label]
        print(
            f"  {label:32s} {ips[label]:8.1f} {ips[label] / hf:14.2f}x {ips[label] / fp32:16.2f}x "
            f"{c.mean():9.5f} {c.min():8.5f}",
            flush=True,
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["ViT-B/32", "ViT-B/16"])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    import transformers

    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    print(
        f"image encoders, batch {args.batch}, {args.threads} threads, median of {args.repeats} "
        f"interleaved runs (torch {torch.__version__}, transformers {transformers.__version__})"
    )
    with tempfile.TemporaryDirectory() as cache:
        for name in args.models:
            print(f"\n{name} (random weights)", flush=True)
            bench_model(name, args, Path(cache))
    return 0


if __name__ == "__main__":
    sys.exit(main())
