"""How well PDQ and vPDQ match edited copies, and how rarely they match unrelated content.

Pictures: two generated families, ``scenes`` (``pipeline.demo.scenes``: flat shapes, words and
clutter on plain, noise or clutter backgrounds) and ``textures`` (multi-scale noise with
shapes drawn on it, closer to the detail of camera pictures). Each picture is edited (resized,
JPEG re-encoded at low quality, cropped, brightness +-20%, mirrored, rotated, watermarked) and
the edit's PDQ hash is compared with the original's: the table gives the share within 31 bits
(ThreatExchange's threshold), among pictures of PDQ quality >= 50 (the ones matching uses),
with and without the 8 dihedral hashes.

Unrelated content: every pair of distinct good-quality pictures (>= 100,000 pairs), the share
within 31 bits (false matches) and the distance distribution.

Videos: generated clips (``pipeline.demo.video``), edited frame by frame and re-encoded
with H.264 through PyAV, hashed one frame a second (vPDQ), compared with HMA's rule (query
frames matching >= 80%); and unrelated clip pairs for false matches.

Full frame against a 512-pixel downscale: the distance between the PDQ of a 1080p frame and of
the same frame scaled to 512 on its long side, and what each costs.

    python bench/bench_hashes_robustness.py [--images 300] [--videos 8]
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.demo import scenes as synthetic  # noqa: E402
from pipeline.demo.video import Shot, render_frame  # noqa: E402
from pipeline.hashes.files import hash_video_file  # noqa: E402
from pipeline.hashes.pdq import pdq_dihedral, pdq_hash  # noqa: E402
from pipeline.hashes.signals import hamming  # noqa: E402
from pipeline.hashes.video import vpdq_compare  # noqa: E402

Image = np.ndarray[Any, np.dtype[np.uint8]]
THRESHOLD = 31
MIN_QUALITY = 50


def textures(n: int, size: int, seed: int) -> list[Image]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        tex = np.zeros((size, size, 3), np.float32)
        for scale in (2, 8, 32):
            noise = rng.normal(0, 1, (size // scale + 1, size // scale + 1, 3)).astype(np.float32)
            tex += cv2.resize(noise, (size, size)) * (50 / scale**0.3)
        img = np.clip(tex + rng.uniform(60, 190, 3), 0, 255).astype(np.uint8)
        for _ in range(3):
            c = tuple(int(v) for v in rng.integers(0, 256, 3))
            centre = tuple(int(v) for v in rng.integers(0, size, 2))
            cv2.circle(img, centre, int(rng.integers(size // 12, size // 4)), c, -1)
        out.append(img)
    return out


def watermark(img: Image) -> Image:
    out = img.copy()
    h, w = out.shape[:2]
    overlay = out.copy()
    cv2.rectangle(overlay, (int(w * 0.6), int(h * 0.85)), (w - 4, h - 4), (255, 255, 255), -1)
    cv2.putText(
        overlay,
        "clipguard",
        (int(w * 0.05), int(h * 0.15)),
        cv2.FONT_HERSHEY_SIMPLEX,
        w / 400,
        (255, 255, 255),
        max(1, w // 150),
    )
    return cv2.addWeighted(overlay, 0.6, out, 0.4, 0)


def crop(img: Image, frac: float) -> Image:
    h, w = img.shape[:2]
    dy, dx = round(h * frac / 2), round(w * frac / 2)
    return np.ascontiguousarray(img[dy : h - dy, dx : w - dx])


def jpeg(img: Image, quality: int) -> Image:
    ok, buf = cv2.imencode(".jpg", img[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1])


def resize(img: Image, factor: float) -> Image:
    h, w = img.shape[:2]
    interp = cv2.INTER_AREA if factor < 1 else cv2.INTER_CUBIC
    return cv2.resize(img, (round(w * factor), round(h * factor)), interpolation=interp)


def brightness(img: Image, factor: float) -> Image:
    return np.clip(img.astype(np.float32) * factor, 0, 255).astype(np.uint8)


EDITS: dict[str, Callable[[Image], Image]] = {
    "resized to 50%": lambda a: resize(a, 0.5),
    "resized to 200%": lambda a: resize(a, 2.0),
    "JPEG quality 30": lambda a: jpeg(a, 30),
    "cropped 5% (2.5% a side)": lambda a: crop(a, 0.05),
    "cropped 10% (5% a side)": lambda a: crop(a, 0.10),
    "brightness +20%": lambda a: brightness(a, 1.2),
    "brightness -20%": lambda a: brightness(a, 0.8),
    "mirrored (left-right)": lambda a: np.ascontiguousarray(a[:, ::-1]),
    "rotated 90 degrees": lambda a: np.ascontiguousarray(np.rot90(a)),
    "watermarked": watermark,
}


def image_table(families: dict[str, list[Image]]) -> None:
    print(
        f"\nPDQ of edited pictures: share within {THRESHOLD} bits of the original "
        f"(originals of quality >= {MIN_QUALITY})"
    )
    print(f"{'edit':28} {'family':9} {'n':>4} {'plain':>7} {'dihedral':>9} {'median d':>9}")
    for family, images in families.items():
        originals = [(img, pdq_hash(img)) for img in images]
        good = [(img, h) for img, h in originals if h.quality >= MIN_QUALITY]
        for name, edit in EDITS.items():
            plain = dih = 0
            dists = []
            for img, h in good:
                edited = edit(img)
                d = hamming(pdq_hash(edited).hash, h.hash)
                dd = min(hamming(v, h.hash) for v in pdq_dihedral(edited).hashes)
                plain += d <= THRESHOLD
                dih += dd <= THRESHOLD
                dists.append(d)
            n = len(good)
            print(
                f"{name:28} {family:9} {n:>4} {plain / n:>7.1%} {dih / n:>9.1%} "
                f"{np.median(dists):>9.0f}"
            )


def false_matches(families: dict[str, list[Image]]) -> None:
    print(f"\nUnrelated pictures: every pair of distinct pictures of quality >= {MIN_QUALITY}")
    both = [img for images in families.values() for img in images]
    for family, images in [*families.items(), ("both", both)]:
        hashes = [h.hash for h in map(pdq_hash, images) if h.quality >= MIN_QUALITY]
        arr = np.frombuffer(b"".join(hashes), np.uint8).reshape(-1, 32).view(np.uint64)
        dists = []
        for i in range(len(arr) - 1):  # (n - i - 1, 4) popcounts of row i against later rows
            dists.append(np.bitwise_count(arr[i + 1 :] ^ arr[i]).sum(axis=1))
        d = np.concatenate(dists)
        fm = int((d <= THRESHOLD).sum())
        p = np.percentile(d, [0.01, 1, 50]).round(1).tolist()
        print(
            f"  {family:9} {len(hashes)} pictures, {len(d)} pairs: {fm} within {THRESHOLD} "
            f"bits ({fm / len(d):.2e}); min {int(d.min())}, 0.01%/1%/50% {p}"
        )


def write_clip(path: Path, frames: list[Image], fps: int, bitrate: int | None) -> None:
    h, w = frames[0].shape[:2]
    with av.open(str(path), "w") as out:
        s: Any = out.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = w - w % 2, h - h % 2, "yuv420p"
        if bitrate:
            s.bit_rate = bitrate
        else:
            s.options = {"crf": "20", "preset": "veryfast"}
        for i, f in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(
                np.ascontiguousarray(f[: s.height, : s.width]), format="rgb24"
            )
            frame.pts, frame.time_base = i, Fraction(1, fps)
            for p in s.encode(frame):
                out.mux(p)
        for p in s.encode(None):
            out.mux(p)


def clip_frames(seed: int, seconds: int, fps: int, w: int, h: int) -> list[Image]:
    rng = np.random.default_rng(seed)
    shots = []
    for k in range(seconds // 2):
        spec = synthetic.sample_spec(rng, split="train")
        shots.append(Shot(2.0 * k, 2.0 * k + 2.0, spec, f"shot {k}"))
    out = []
    for i in range(seconds * fps):
        t = i / fps
        shot = shots[min(int(t // 2), len(shots) - 1)]
        out.append(render_frame(shot, t, width=w, height=h))
    tex = textures(1, max(w, h), seed)[0][:h, :w]
    return [np.clip(0.6 * f + 0.4 * tex, 0, 255).astype(np.uint8) for f in out]


VIDEO_EDITS: dict[str, tuple[Callable[[Image], Image], int | None]] = {
    "re-encoded (CRF 20)": (lambda a: a, None),
    "re-encoded at 150 kbit/s": (lambda a: a, 150_000),
    "resized to 50%": (lambda a: resize(a, 0.5), None),
    "cropped 5% (2.5% a side)": (lambda a: crop(a, 0.05), None),
    "brightness +20%": (lambda a: brightness(a, 1.2), None),
    "brightness -20%": (lambda a: brightness(a, 0.8), None),
    "mirrored (left-right)": (lambda a: np.ascontiguousarray(a[:, ::-1]), None),
    "watermarked": (watermark, None),
}


def video_table(n: int) -> None:
    fps, seconds, w, h = 15, 10, 480, 270
    print(
        f"\nvPDQ of edited videos ({n} generated {seconds} s clips, {w}x{h}, H.264, 1 hash/s):"
        f"\nmatched: query frames within {THRESHOLD} bits >= 80% (HMA's rule); "
        "frame share: the mean share of query frames within it"
    )
    with tempfile.TemporaryDirectory() as tmp:
        originals = []
        for k in range(n):
            frames = clip_frames(1000 + k, seconds, fps, w, h)
            path = Path(tmp) / f"orig{k}.mp4"
            write_clip(path, frames, fps, None)
            originals.append((frames, hash_video_file(path)))
        print(f"{'edit':28} {'matched':>8} {'frame share':>12}")
        for name, (edit, bitrate) in VIDEO_EDITS.items():
            matched = 0
            shares = []
            for k, (frames, ref) in enumerate(originals):
                path = Path(tmp) / f"edit{k}.mp4"
                write_clip(path, [edit(f) for f in frames], fps, bitrate)
                c = vpdq_compare(hash_video_file(path), ref)
                matched += c.query_match_percent >= 80.0
                shares.append(c.query_match_percent)
            print(f"{name:28} {matched:>4}/{n:<3} {np.mean(shares):>11.1f}%")
        fm = sum(
            vpdq_compare(a[1], b[1]).query_match_percent >= 80.0
            for a, b in itertools.permutations(originals, 2)
        )
        print(f"unrelated clip pairs matched: {fm} of {n * (n - 1)}")


def downscale_check(n: int) -> None:
    print(f"\nFull 1080p frame against a 512-pixel downscale (INTER_AREA), {n} frames:")
    dists, full_t, small_t = [], [], []
    for k in range(n):
        f = clip_frames(2000 + k, 2, 1, 1920, 1080)[0]
        t0 = time.perf_counter()
        a = pdq_hash(f)
        t1 = time.perf_counter()
        b = pdq_hash(cv2.resize(f, (512, 288), interpolation=cv2.INTER_AREA))
        t2 = time.perf_counter()
        dists.append(hamming(a.hash, b.hash))
        full_t.append(t1 - t0)
        small_t.append(t2 - t1)
    print(
        f"  distance: median {np.median(dists):.0f}, max {max(dists)} bits; "
        f"PDQ of the full frame {np.median(full_t) * 1e3:.1f} ms, "
        f"resize + PDQ at 512 {np.median(small_t) * 1e3:.1f} ms"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=300, help="pictures a family")
    ap.add_argument("--videos", type=int, default=8)
    ap.add_argument("--unrelated", type=int, default=600, help="pictures a family for pairs")
    args = ap.parse_args()
    t0 = time.perf_counter()
    scenes, _, _ = synthetic.generate_batch(31, args.images, size=256)
    families = {"scenes": list(scenes), "textures": textures(args.images, 256, 32)}
    image_table(families)
    more = {
        "scenes": list(synthetic.generate_batch(41, args.unrelated, size=128)[0]),
        "textures": textures(args.unrelated, 128, 42),
    }
    false_matches(more)
    video_table(args.videos)
    downscale_check(5)
    print(f"\n(bench ran {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
