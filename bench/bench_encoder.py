"""Image-encoder throughput: clipguard's CLIP against transformers' CLIPVisionModelWithProjection.

Both get the same ViT-B/32 configuration, the same random weights (ours loaded from the
transformers model's own safetensors), the same batch and the same thread count. Runs are
interleaved and the median of each is reported, with the ratio ours / reference.

    python bench/bench_encoder.py [--batch 32] [--threads 2] [--repeats 7] [--dtype float32]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from pipeline.models import load_clip


def _time(fn, x: torch.Tensor) -> float:
    start = time.perf_counter()
    fn(x)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    args = ap.parse_args(argv)
    import transformers

    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    cfg = transformers.CLIPConfig(
        text_config={
            "hidden_size": 512,
            "intermediate_size": 2048,
            "num_attention_heads": 8,
            "num_hidden_layers": 12,
        },
        vision_config={
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_attention_heads": 12,
            "num_hidden_layers": 12,
            "image_size": 224,
            "patch_size": 32,
        },
        projection_dim=512,
    )
    torch.manual_seed(0)
    full = transformers.CLIPModel(cfg).eval()
    with tempfile.TemporaryDirectory() as tmp:
        full.save_pretrained(tmp)
        ours = load_clip(Path(tmp) / "model.safetensors", dtype=dtype)
        ref = transformers.CLIPVisionModelWithProjection.from_pretrained(tmp).eval().to(dtype)
    del full
    x = torch.randn(args.batch, 3, 224, 224, dtype=dtype)

    def run_ours(px: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return ours.encode_image(px)

    def run_ref(px: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return ref(pixel_values=px).image_embeds

    err = float((run_ours(x) - run_ref(x)).float().norm() / run_ref(x).float().norm())
    for _ in range(2):  # warm-up: allocator, oneDNN primitive caches
        run_ours(x), run_ref(x)
    t_ours, t_ref = [], []
    for _ in range(args.repeats):
        t_ours.append(_time(run_ours, x))
        t_ref.append(_time(run_ref, x))
    ours_ips = args.batch / statistics.median(t_ours)
    ref_ips = args.batch / statistics.median(t_ref)
    print(
        f"ViT-B/32 image encoder, batch {args.batch}, {args.threads} threads, {args.dtype}, "
        f"median of {args.repeats} interleaved runs (torch {torch.__version__}, "
        f"transformers {transformers.__version__})"
    )
    print(f"  clipguard          {ours_ips:8.1f} img/s")
    print(f"  transformers       {ref_ips:8.1f} img/s")
    print(
        f"  ratio ours/ref     {ours_ips / ref_ips:8.2f}x   (relative output difference {err:.1e})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
