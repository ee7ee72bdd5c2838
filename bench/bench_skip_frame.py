"""What ``skip_frame`` saves when sampling 2 frames a second from H.264 with B-frames.

A clip is generated here (libx264, 25 fps, 2 B-frames between references with B-pyramid, a
keyframe every 2 s, moving content at 720p and 1080p), then decoded with PyAV in each
``skip_frame`` mode. Per mode: frames decoded, decode time and its ratio to decoding every
frame, and for 2 fps sampling (the frame nearest each multiple of 0.5 s) the largest distance
between a wanted time and the nearest decoded frame. One run, one decode thread.

    python bench/bench_skip_frame.py [--seconds 20] [--threads 1]
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from fractions import Fraction

import av
import numpy as np
from av.video.frame import PictureType

MODES = ("DEFAULT", "NONREF", "BIDIR", "NONKEY")


def make_clip(width: int, height: int, seconds: int, fps: int = 25) -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {
            "bf": "2",
            "b_pyramid": "normal",
            "g": str(2 * fps),
            "preset": "veryfast",
            "crf": "23",
        }
        y, x = np.mgrid[0:height, 0:width]
        for i in range(seconds * fps):
            img = np.empty((height, width, 3), np.uint8)  # (H, W, 3)
            img[..., 0] = (x + 3 * i) % 256
            img[..., 1] = (y + 2 * i) % 256
            img[..., 2] = ((x ^ y) + i) % 256
            cx, cy = (i * 23) % width, (i * 13) % height
            img[(abs(x - cx) < width // 10) & (abs(y - cy) < height // 10)] = (250, 30, 30)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return buf.getvalue()


def decode(data: bytes, mode: str, threads: int) -> tuple[list[float], float, dict[str, int]]:
    times: list[float] = []
    types: dict[str, int] = {}
    start = time.perf_counter()
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        stream.codec_context.skip_frame = mode
        stream.codec_context.thread_count = threads
        for frame in container.decode(stream):
            times.append(float(frame.time))
            name = PictureType(frame.pict_type).name
            types[name] = types.get(name, 0) + 1
    return times, time.perf_counter() - start, types


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    print(f"PyAV {av.__version__}, FFmpeg {av.ffmpeg_version_info}, {args.threads} thread(s)")
    for label, w, h in (("720p", 1280, 720), ("1080p", 1920, 1080)):
        data = make_clip(w, h, args.seconds)
        print(f"\n{label}, {args.seconds} s at 25 fps, {len(data) / 1e6:.1f} MB")
        print(
            f"  {'skip_frame':10s} {'frames':>6s} {'types':24s} {'s':>6s} {'fps':>6s} "
            f"{'x time':>7s} {'2 fps: max gap':>14s}"
        )
        base = end = None
        for mode in MODES:
            times, took, types = decode(data, mode, args.threads)
            base = base or took
            arr = np.array(sorted(times))
            end = end if end is not None else float(arr[-1])  # the clip's last frame
            wanted = np.arange(0.0, end + 1e-9, 0.5)
            gap = max(float(np.min(np.abs(arr - t))) for t in wanted)
            kinds = " ".join(f"{k}:{v}" for k, v in sorted(types.items()))
            print(
                f"  {mode:10s} {len(times):6d} {kinds:24s} {took:6.2f} {len(times) / took:6.0f} "
                f"{took / base:6.2f}x {gap:13.3f}s"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
