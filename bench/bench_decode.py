"""Decode throughput: bare PyAV against clipguard's decode to model input, on generated H.264.

The bench encodes its own 720p and 1080p H.264 MP4 files (a panning, zooming textured scene
with sensor-like grain and a cut every few seconds, at a streaming bitrate) and caches them under
``.cache/bench_decode``. It then measures, interleaving the runs and reporting medians:

- bare PyAV decode: every frame, no conversion (``thread_type = "AUTO"``, same thread count);
- clipguard ``decode_bytes`` to a 224 x 224 ``pad`` model input, every frame, and the ratio of
  the two (goal: 0.8 or more), for each swscale interpolation;
- keyframes-only and 2 fps sampling, as speed-ups over decoding every frame to model input;
- scene-change sampling and the ``crop`` and ``tiles`` fits;
- the same decode through a one-process :class:`DecodePool` (frames cross a pipe), and the
  cost of moving a result's frames between processes as one buffer or as pickled frames.

    python bench/bench_decode.py [--seconds 10] [--repeats 5] [--threads 2] [--heights 720 1080]
"""

from __future__ import annotations

import argparse
import io
import multiprocessing
import os
import statistics
import sys
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.decode import (  # noqa: E402
    DecodeOptions,
    DecodePool,
    Sampling,
    decode_bytes,
)
from pipeline.decode.wire import (  # noqa: E402
    frame_metas,
    receive_pictures,
    send_pictures,
    unpack_frames,
)

CACHE = ROOT / ".cache" / "bench_decode"


def make_video(width: int, height: int, seconds: float, fps: int) -> bytes:
    """A streaming-like H.264 MP4: textured pan and zoom, grain, a cut every 4 seconds."""
    rng = np.random.default_rng(height)
    scenes = []
    for _ in range(3):
        tex = np.zeros((height * 2, width * 2, 3), np.float32)
        for scale in (3, 12, 48):  # detail at several scales, like a natural picture
            noise = rng.normal(0, 1, (height * 2 // scale + 1, width * 2 // scale + 1, 3))
            tex += cv2.resize(noise.astype(np.float32), (width * 2, height * 2)) * (60 / scale**0.3)
        scenes.append(np.clip(tex + 128, 0, 255).astype(np.uint8))
    grains = [rng.normal(0, 3.0, (height, width, 3)).astype(np.float32) for _ in range(7)]
    frames = int(seconds * fps)
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "veryfast", "crf": "21", "g": str(2 * fps)}
        for i in range(frames):
            scene = scenes[(i // (4 * fps)) % len(scenes)]
            zoom = 1.0 + 0.25 * (0.5 + 0.5 * np.sin(i / 70))
            cw, ch = int(width * zoom), int(height * zoom)
            x = int((width * 2 - cw) * (0.5 + 0.45 * np.sin(i / 50)))
            y = int((height * 2 - ch) * (0.5 + 0.45 * np.cos(i / 65)))
            view = cv2.resize(scene[y : y + ch, x : x + cw], (width, height))
            picture = np.clip(view + grains[i % len(grains)], 0, 255).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


def video(height: int, seconds: float, fps: int) -> bytes:
    width = height * 16 // 9
    path = CACHE / f"h264_{width}x{height}_{seconds:g}s_{fps}fps.mp4"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        data = make_video(width, height, seconds, fps)
        path.write_bytes(data)
        took = time.perf_counter() - start
        print(f"  encoded {path.name}: {len(data) / 1e6:.1f} MB in {took:.0f} s")
    return path.read_bytes()


def bare_decode(data: bytes, threads: int) -> int:
    with av.open(io.BytesIO(data), format="mp4") as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = threads
        return sum(1 for _ in container.decode(stream))


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median_times(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in runs}
    for fn in runs.values():  # warm-up
        fn()
    for _ in range(repeats):
        for name, fn in runs.items():
            times[name].append(timed(fn))
    return {name: statistics.median(values) for name, values in times.items()}


def _transfer_child(conn: Connection, data: bytes) -> None:
    frames = decode_bytes(data, "video/mp4", DecodeOptions(size=224, threads=1)).frames[:300]
    while (how := conn.recv()) is not None:
        if how == "pickle":
            conn.send(list(frames))
        else:
            conn.send(frame_metas(frames))
            send_pictures(conn, frames)


def transfer_costs(data: bytes, repeats: int) -> tuple[int, float, float]:
    """Milliseconds to move one result's frames from a child process and rebuild them: the
    pool's way (metadata, then each picture into one buffer) against pickling the frames."""
    context = multiprocessing.get_context("spawn")
    here, there = context.Pipe()
    child = context.Process(target=_transfer_child, args=(there, data), daemon=True)
    child.start()
    times: dict[str, list[float]] = {"buffer": [], "pickle": []}
    count = 0
    for _ in range(repeats + 1):
        for how in times:
            start = time.perf_counter()
            here.send(how)
            if how == "pickle":
                frames = here.recv()
            else:
                metas, side = here.recv()
                frames = unpack_frames(metas, side, receive_pictures(here, len(metas), side))
            times[how].append(time.perf_counter() - start)
            count = len(frames)
    here.send(None)
    child.join()
    one = statistics.median(times["buffer"][1:]) * 1000
    pickled = statistics.median(times["pickle"][1:]) * 1000
    return count, one, pickled


def bench_height(height: int, args: argparse.Namespace) -> None:
    threads = args.threads
    data = video(height, args.seconds, args.fps)
    frames = bare_decode(data, threads)
    mbps = len(data) * 8 / args.seconds / 1e6
    print(f"\n{height}p H.264, {frames} frames, {mbps:.1f} Mbit/s")

    def ours(**kw: Any) -> Callable[[], object]:
        options = DecodeOptions(224, threads=threads, **kw)
        return lambda: decode_bytes(data, "video/mp4", options)

    runs: dict[str, Callable[[], object]] = {
        "bare PyAV decode (no conversion)": lambda: bare_decode(data, threads),
        "clipguard pad, area (default)": ours(),
        "clipguard pad, fast_bilinear": ours(interpolation="fast_bilinear"),
        "clipguard pad, bilinear": ours(interpolation="bilinear"),
        "clipguard crop, area": ours(fit="crop"),
        "clipguard tiles, area": ours(fit="tiles"),
        "clipguard keyframes only": ours(sampling=Sampling(mode="keyframes")),
        "clipguard 2 fps": ours(sampling=Sampling(mode="fps", fps=2.0)),
        "clipguard scene change": ours(sampling=Sampling(mode="scene")),
    }
    pool = None if args.no_pool else DecodePool(1, threads=threads)
    if pool is not None:
        runs["clipguard pad via DecodePool(1)"] = lambda: pool.decode_bytes(
            data, "video/mp4", DecodeOptions(size=224)
        )
    medians = median_times(runs, args.repeats)
    if pool is not None:
        pool.close()
    bare = medians["bare PyAV decode (no conversion)"]
    everything = medians["clipguard pad, area (default)"]
    print(f"  {'run':40s} {'seconds':>8s} {'fps':>8s} {'vs bare':>8s} {'speed-up':>9s}")
    for name, seconds in medians.items():
        sampled = any(word in name for word in ("keyframes", "2 fps", "scene"))
        speedup = f"{everything / seconds:8.1f}x" if sampled else ""
        fps, ratio = frames / seconds, bare / seconds
        print(f"  {name:40s} {seconds:8.3f} {fps:8.0f} {ratio:8.2f} {speedup:>9s}")
    n, one, pickled = transfer_costs(data, args.repeats)
    print(
        f"  {n} frames of 224x224 from a child process: the pool's buffer {one:.1f} ms, "
        f"pickled frames {pickled:.1f} ms"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--fps", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--heights", type=int, nargs="+", default=[720, 1080])
    ap.add_argument("--no-pool", action="store_true", help="skip the DecodePool measurement")
    args = ap.parse_args(argv)
    codec_version = ".".join(map(str, av.library_versions["libavcodec"]))
    print(
        f"PyAV {av.__version__}, libavcodec {codec_version}, {os.cpu_count()} cores, "
        f"decoder threads {args.threads}, {args.repeats} repeats (medians)"
    )
    for height in args.heights:
        bench_height(height, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
