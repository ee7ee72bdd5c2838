"""What hashing sampled frames in the decode stage costs, and how far its hashes are from the
reference's.

Generated 1080p H.264 clips (demo scenes over multi-scale texture, with drift, as in
``bench_hashes_robustness.py``) are decoded by the decode stage (``decode_bytes``) with every
frame sampled, four ways: no hash, PDQ of the full decoded frame (``hash_side=0``), and PDQ of
a downscale to 512 and to 256 pixels on the long side (``hash_side``, swscale area). Printed:

* the decode time added per hashed frame, for each way;
* the Hamming distance between each downscaled hash and the full-frame hash of the same frame
  (median, 99th percentile, maximum) and how often the PDQ quality falls on the other side of
  the matching filter (50);
* agreement with the references: the full-frame hashes against vPDQ's reference hasher on the
  same files (frames at 1 s; distance 0 expected), and the decode pool's hashes (through the
  process boundary) against the in-process ones (distance 0 expected).

    python bench/bench_hashes_decode.py [--clips 4] [--seconds 8] [--fps 10]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.decode import DecodeOptions, DecodePool, Sampling, decode_bytes  # noqa: E402
from pipeline.decode.options import DEFAULT_HASH_SIDE  # noqa: E402
from pipeline.demo import scenes as synthetic  # noqa: E402
from pipeline.demo.video import Shot, render_frame  # noqa: E402
from pipeline.hashes.pdq import PdqHash  # noqa: E402
from pipeline.hashes.signals import hamming  # noqa: E402

W, H = 1920, 1080  # --size changes them
SIDES = (0, 1024, 640, 512, 320)


def texture(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    tex = np.zeros((H, W, 3), np.float32)
    for scale in (4, 16, 64):
        noise = rng.normal(0, 1, (H // scale + 1, W // scale + 1, 3)).astype(np.float32)
        tex += cv2.resize(noise, (W, H)) * (50 / scale**0.3)
    return np.clip(tex + rng.uniform(60, 190, 3), 0, 255).astype(np.uint8)


def write_clip(path: Path, seed: int, seconds: int, fps: int) -> None:
    rng = np.random.default_rng(seed)
    shots = [
        Shot(2.0 * k, 2.0 * k + 2.0, synthetic.sample_spec(rng, split="train"), f"shot {k}")
        for k in range(max(1, seconds // 2))
    ]
    tex = texture(seed)
    with av.open(str(path), "w") as out:
        s: Any = out.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        s.options = {"crf": "23", "preset": "veryfast"}
        for i in range(seconds * fps):
            t = i / fps
            shot = shots[min(int(t // 2), len(shots) - 1)]
            scene = render_frame(shot, t, width=W, height=H)
            # the texture drifts too, so that every frame is a new picture
            moved = np.roll(tex, (i * 3, i * 5), axis=(0, 1))
            image = np.clip(0.6 * scene + 0.4 * moved, 0, 255).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            for p in s.encode(frame):
                out.mux(p)
        for p in s.encode(None):
            out.mux(p)


def decode(data: bytes, side: int | None) -> tuple[float, list[Any]]:
    options = DecodeOptions(224, sampling=Sampling(mode="all"), threads=1)
    if side is not None:
        options = options.with_(hashes="pdq", hash_side=side)
    t0 = time.perf_counter()
    result = decode_bytes(data, "video/mp4", options)
    return time.perf_counter() - t0, [f.pdq for f in result.frames]


def reference_check(paths: list[Path], full: list[list[Any]], fps: int) -> None:
    try:
        import vpdq
    except ImportError:
        print("  vPDQ's reference hasher is not installed (pip install '.[vpdq]'): skipped")
        return
    dists = []
    for path, hashes in zip(paths, full, strict=True):
        for feature in vpdq.computeHash(str(path), seconds_per_hash=1):
            mine = hashes[feature.frame_number]
            dists.append(hamming(mine.hash, bytes.fromhex(str(feature.hex))))
    print(
        f"  full-frame hashes against vPDQ's reference hasher, {len(dists)} frames: "
        f"max distance {max(dists)} bits"
    )


def pool_check(datas: list[bytes], side: int, inproc: list[list[Any]]) -> None:
    options = DecodeOptions(224, sampling=Sampling(mode="all"), hashes="pdq", hash_side=side)
    dists = []
    with DecodePool(1) as pool:
        for data, mine in zip(datas, inproc, strict=True):
            frames = pool.submit_bytes(data, "video/mp4", options).result().frames
            for f, h in zip(frames, mine, strict=True):
                assert isinstance(f.pdq, PdqHash)
                dists.append(hamming(f.pdq.hash, h.hash) + abs(f.pdq.quality - h.quality))
    print(
        f"  decode pool (hash_side={side}) against in-process, {len(dists)} frames: "
        f"max distance {max(dists)} bits (quality included)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=int, default=4)
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--fps", type=int, default=10)
    ap.add_argument("--size", default="1920x1080", help="WxH of the clips")
    args = ap.parse_args()
    global W, H
    W, H = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        paths = [Path(tmp) / f"clip{k}.mp4" for k in range(args.clips)]
        t0 = time.perf_counter()
        for k, path in enumerate(paths):
            write_clip(path, 100 + k, args.seconds, args.fps)
        datas = [p.read_bytes() for p in paths]
        frames = args.clips * args.seconds * args.fps
        print(
            f"{args.clips} clips of {args.seconds} s, {W}x{H} H.264 at {args.fps} fps "
            f"({frames} frames, every one hashed); generated in {time.perf_counter() - t0:.0f} s"
        )
        base = sum(decode(d, None)[0] for d in datas)
        print(f"\ndecode without hashing: {base / frames * 1e3:.2f} ms a frame")
        hashes: dict[int, list[list[Any]]] = {}
        for side in SIDES:
            seconds = 0.0
            hashes[side] = []
            for d in datas:
                s, h = decode(d, side)
                seconds += s
                hashes[side].append(h)
            name = "full frame" if side == 0 else f"downscale to {side}"
            print(f"  PDQ of the {name:18}: +{(seconds - base) / frames * 1e3:.2f} ms a frame")
        full = [h for clip in hashes[0] for h in clip]
        print(
            f"\nPDQ quality of the full frames: median {np.median([h.quality for h in full]):.0f}"
        )
        for side in SIDES[1:]:
            small = [h for clip in hashes[side] for h in clip]
            d = np.array([hamming(a.hash, b.hash) for a, b in zip(full, small, strict=True)])
            pairs = list(zip(full, small, strict=True))
            flips = sum((a.quality >= 50) != (b.quality >= 50) for a, b in pairs)
            print(
                f"  downscale to {side} against the full frame: distance median "
                f"{np.median(d):.0f}, p99 {np.percentile(d, 99):.0f}, max {d.max()} bits; "
                f"quality across 50 on {flips} of {len(d)} frames"
            )
        print("\nagreement:")
        reference_check(paths, hashes[0], args.fps)
        pool_check(datas, DEFAULT_HASH_SIDE, hashes[DEFAULT_HASH_SIDE])


if __name__ == "__main__":
    main()
