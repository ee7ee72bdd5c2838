"""Image-tower cost of the registry's models: GFLOPs per image and CPU throughput.

Random weights at each entry's architecture (the cost does not depend on the values), batch
16, fp32 and bf16 torch, on ``--threads`` CPU threads. GFLOPs are counted by
``torch.utils.flop_counter`` on one image (two FLOPs per multiply-add; matrix products,
attention and convolutions), the convention of open_clip's ``model_profile.csv``. SigLIP and
SigLIP 2 image towers of the same size and resolution are the same network, so one of each pair is
timed. ``--default`` adds clipguard's default CPU path: ``load_encoder`` at precision ``auto``
(OpenVINO int8 where the accuracy guard passes), frames in as uint8; the conversion time is printed,
not counted. Prints a table; never fails on time.

    python bench/bench_model_zoo.py                       # the default set
    python bench/bench_model_zoo.py --models siglip2-base-patch16-224 ViT-B/32
    python bench/bench_model_zoo.py --default --models ViT-B/32 ViT-B/16
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from pipeline.models.model import CLIP, CLIPConfig
from pipeline.models.model import VisionTransformer as ClipVision
from pipeline.models.registry import get_model_info
from pipeline.models.siglip import SigLIP, SiglipConfig
from pipeline.models.siglip import VisionTransformer as SiglipVision

DEFAULT = [
    "ViT-B/32",
    "ViT-B/16",
    "ViT-L/14",
    "siglip2-base-patch32-256",
    "siglip2-base-patch16-224",
    "siglip2-base-patch16-256",
    "siglip2-base-patch16-384",
    "siglip2-large-patch16-256",
    "siglip2-so400m-patch14-384",
    "ViT-H-14-laion2b",
    "ViT-bigG-14-laion2b",
]


def _tower(name: str) -> tuple[torch.nn.Module, int]:
    info = get_model_info(name)
    cfg = info.config
    module: torch.nn.Module
    if isinstance(cfg, SiglipConfig):
        module = SiglipVision(cfg.vision)
    else:
        assert isinstance(cfg, CLIPConfig)
        module = ClipVision(cfg.vision, cfg.embed_dim, cfg.activation)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    return module.eval(), info.image_resolution


def _gflops(module: torch.nn.Module, res: int) -> float:
    counter = FlopCounterMode(display=False)
    # the math attention kernel runs as matrix products, which the counter sees (the fused
    # CPU kernel is not counted)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), counter:
        module(torch.zeros(1, 3, res, res))
    return counter.get_total_flops() / 1e9


def _throughput(
    module: torch.nn.Module, res: int, dtype: torch.dtype, batch: int, budget_s: float
) -> float:
    """Images per second: one warm-up batch, then batches until ``budget_s`` has passed."""
    m = module.to(dtype)
    x = torch.randn(batch, 3, res, res).to(dtype)
    with torch.inference_mode():
        m(x)  # warm-up (one-time kernel selection, memory)
        done, start = 0, time.perf_counter()
        while True:
            m(x)
            done += batch
            elapsed = time.perf_counter() - start
            if elapsed >= budget_s:
                return done / elapsed


def _default_path(name: str, batch: int, threads: int, budget_s: float, cache: Path) -> str:
    """clipguard's default CPU encoder on a random-weight model: images per second, and the
    precision the guard accepted."""
    from pipeline.models import load_encoder
    from pipeline.models.guard import GuardSettings, generated_frames

    cfg = get_model_info(name).config
    model = SigLIP(cfg) if isinstance(cfg, SiglipConfig) else CLIP(cfg)  # type: ignore[arg-type]
    model.init_weights(torch.Generator().manual_seed(0))
    model.name = f"random-{name}"
    model.eval().requires_grad_(False)
    start = time.perf_counter()
    enc = load_encoder(model, threads=threads, cache_dir=cache, guard=GuardSettings(generated=16))
    ready = time.perf_counter() - start
    frames = generated_frames(enc.input_resolution, batch, seed=3)
    enc.encode(frames)  # warm-up
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < budget_s:
        enc.encode(frames)
        done += batch
    ips = done / (time.perf_counter() - start)
    return f"{ips:.2f} {enc.precision} ({ready:.0f} s to convert)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=DEFAULT)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--budget", type=float, default=4.0, help="seconds timed per precision")
    parser.add_argument("--no-fp32", action="store_true", help="time bf16 only")
    parser.add_argument("--gflops-only", action="store_true", help="count, do not time")
    parser.add_argument(
        "--default", action="store_true", help="also time load_encoder at its defaults"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
        "random weights, image tower only"
    )
    cols = ("model", "res", "GFLOPs", "fp32 img/s", "bf16 img/s", "ratio")
    print(f"{cols[0]:28} {cols[1]:>4} {cols[2]:>8} {cols[3]:>11} {cols[4]:>11} {cols[5]:>6}")
    for name in args.models:
        module, res = _tower(name)
        gflops = _gflops(module, res)
        fp32 = bf16 = 0.0
        if not args.gflops_only:
            if not args.no_fp32:
                fp32 = _throughput(module, res, torch.float32, args.batch, args.budget)
            bf16 = _throughput(module, res, torch.bfloat16, args.batch, args.budget)
        cells = [f"{v:.2f}" if v else "-" for v in (fp32, bf16)]
        ratio = f"{bf16 / fp32:.2f}" if fp32 and bf16 else "-"
        line = f"{name:28} {res:>4} {gflops:>8.1f} {cells[0]:>11} {cells[1]:>11} {ratio:>6}"
        del module
        if args.default and not args.gflops_only:
            with tempfile.TemporaryDirectory() as cache:
                line += "  default: " + _default_path(
                    name, args.batch, args.threads, args.budget, Path(cache)
                )
        print(line, flush=True)


if __name__ == "__main__":
    main()
