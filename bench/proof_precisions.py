"""Every CPU precision of a full-size tower meets the accuracy guard on frames it never saw.

A slow proof, kept out of ``make test`` (about a minute per model on 2 cores): a random-weight
model of a real release (ViT-B/32 unless told otherwise) is converted by ``load_encoder`` in
each precision this CPU offers (fp32, bf16, int8 through OpenVINO and NNCF), with the accuracy
guard on, and its embeddings of held-out generated frames are compared with the fp32 torch
model's. Prints one line per precision; exits 1 when any precision falls below the bounds.

    python bench/proof_precisions.py [--models ViT-B/32 ViT-B/16] [--frames 16]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from pipeline.models import CLIP, GuardSettings, get_model_info, load_encoder
from pipeline.models.guard import generated_frames
from pipeline.models.openvino_backend import cpu_precisions

MIN_MEAN_COSINE = 0.995
MIN_COSINE = 0.99


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def check_model(name: str, frames: int, cache: Path) -> bool:
    """Converts ``name`` (random weights) in every CPU precision; True when all pass."""
    torch.manual_seed(0)
    model = CLIP(get_model_info(name).config)
    model.init_weights(torch.Generator().manual_seed(0))
    model.name = f"random-{name.replace('/', '-')}"
    model.eval().requires_grad_(False)
    size = model.config.vision.image_resolution
    held_out = generated_frames(size, frames, seed=21)  # not the guard's own frames
    with torch.inference_mode():
        ref = torch.nn.functional.normalize(
            model.encode_image(model.preprocess(torch.from_numpy(held_out))), dim=-1
        ).numpy()
    ok = True
    for precision in cpu_precisions():
        encoder = load_encoder(
            model, precision=precision, cache_dir=cache, guard=GuardSettings(generated=16)
        )
        cos = _cosines(encoder.encode(held_out), ref)
        passed = bool(cos.mean() >= MIN_MEAN_COSINE and cos.min() >= MIN_COSINE)
        guard = encoder.guard.mean_cosine if encoder.guard is not None else float("nan")
        print(
            f"{name:10s} {precision:5s} held-out cosine mean {cos.mean():.5f} "
            f"min {cos.min():.5f}  guard {guard:.5f}  {'ok' if passed else 'FAIL'}"
        )
        ok = ok and passed
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["ViT-B/32"])
    parser.add_argument("--frames", type=int, default=16, help="held-out frames per model")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="clipguard-proof-") as cache:
        results = [check_model(name, args.frames, Path(cache)) for name in args.models]
    sys.exit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
