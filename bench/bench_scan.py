"""Folder-scan throughput: ``clipguard scan``'s engine on a folder of generated short clips.

The bench writes its own folder of H.264 MP4 clips (synthetic scenes, a red triangle or the
word SPAM in some of them, a moving square so that every frame differs) under
``.cache/bench_scan``, then scans it with the demo model and the demo policies:

- overlapped: :meth:`pipeline.scan.Scanner.scan`, several decodes in flight in the pool while
  this process encodes, frames of several clips per encoder batch (what ``clipguard scan``
  runs);
- one at a time: the same scanner with one input in flight (decode, then encode, then the
  next), the baseline the overlap is measured against;
- the whole command: ``clipguard scan`` on the folder with ``--force``, from start-up (model
  load, policy compile, decode processes) to the written report.

- the stream worker on the same media: each clip cut into 2 s MPEG-TS segments (packets
  copied, not re-encoded), one stream per clip, produced to an embedded broker as a backlog;
  then a worker (in a thread, the same decoders, batch size and sampling) consumes them: frames
  scored per second from the first segment consumed to the last segment's outputs
  acknowledged (broker, model load and group join excluded), against the overlapped folder
  scan's rate.

It prints frames scored per second (and frames decoded per second) for each, medians of
--repeats; nothing is asserted.

    python bench/bench_scan.py [--clips 24] [--seconds 10] [--sample-fps 2] [--decoders 2]
                               [--repeats 3] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import statistics
import sys
import tempfile
import threading
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from consumers.cli import main as cli_main  # noqa: E402
from pipeline.decode import DecodeOptions, DecodePool, Sampling  # noqa: E402
from pipeline.demo import scenes as synth  # noqa: E402
from pipeline.models import DEMO_MODEL, load_clip  # noqa: E402
from pipeline.models.encoders import load_encoder  # noqa: E402
from pipeline.policies import load_policies  # noqa: E402
from pipeline.policies.bundled import DEMO_POLICIES  # noqa: E402
from pipeline.policies.compile import PolicyCompiler  # noqa: E402
from pipeline.scan import Scanner, ScanOptions  # noqa: E402

CACHE = ROOT / ".cache" / "bench_scan"
WIDTH, HEIGHT, FPS = 640, 360, 25


def _clip(path: Path, seconds: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    scenes = []
    for i in range(3):
        if (seed + i) % 3 == 0:
            spec = synth.sample_single_object_spec(
                rng, split="heldout", concept="triangle", colour="red"
            )
        elif (seed + i) % 3 == 1:
            spec = synth.sample_single_object_spec(
                rng, split="heldout", concept="SPAM", colour="yellow"
            )
        else:
            spec = synth.sample_spec(rng, split="train")
        scenes.append(synth.render(spec, HEIGHT))
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height = WIDTH, HEIGHT
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "veryfast", "x264-params": "log-level=none:keyint=50"}
        for i in range(seconds * FPS):
            frame = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
            scene = scenes[min(2, i * 3 // (seconds * FPS))]
            x = (WIDTH - HEIGHT) // 2
            frame[:, x : x + HEIGHT] = scene
            s = (i * 4) % (WIDTH - 24)
            frame[8:32, s : s + 24] = 255  # motion: every frame differs
            video = av.VideoFrame.from_ndarray(frame, format="rgb24")
            video.pts = i
            video.time_base = Fraction(1, FPS)
            for packet in stream.encode(video):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def _folder(clips: int, seconds: int) -> Path:
    folder = CACHE / f"{clips}x{seconds}s-{WIDTH}x{HEIGHT}"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(clips):
        path = folder / f"clip-{i:03d}.mp4"
        if not path.exists():
            tmp = path.with_suffix(".tmp.mp4")
            _clip(tmp, seconds, i)
            tmp.replace(path)
    return folder


def _worker_run(sources: list[str], args: argparse.Namespace) -> tuple[float, float]:
    """One stream-worker run on the clips: (frames scored, seconds from the first segment
    consumed to the last one's outputs acknowledged)."""
    from kafka import KafkaProducer
    from prometheus_client import CollectorRegistry

    from consumers.broker import EmbeddedBroker, default_topics
    from consumers.produce import CONTENT_TYPE, segment_video
    from consumers.settings import load_settings
    from consumers.worker import Worker

    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    with EmbeddedBroker() as broker:
        broker.create_topics(default_topics())
        producer = KafkaProducer(
            bootstrap_servers=broker.bootstrap, acks="all", linger_ms=5, max_request_size=16 << 20
        )
        sent = 0
        for i, source in enumerate(sources):
            segments = list(segment_video(source, segment_seconds=2.0))
            stream = f"clip-{i:03d}"
            for seg in segments:
                headers = [
                    ("content-type", CONTENT_TYPE.encode()),
                    ("stream-id", stream.encode()),
                    ("seq", str(seg.seq).encode()),
                    ("start-ts", repr(seg.start_ts).encode()),
                ]
                if seg is segments[-1]:
                    headers.append(("stream-end", b"1"))
                producer.send(
                    "clipguard.segments", key=stream.encode(), value=seg.data, headers=headers
                )
                sent += 1
        producer.flush()
        producer.close()
        registry = CollectorRegistry()
        settings = load_settings(
            overrides={
                "bootstrap_servers": broker.bootstrap,
                "metrics_port": 0,
                "policies": [str(DEMO_POLICIES)],
                "decode.processes": args.decoders,
                "max_batch_size": args.batch_size,
                "sampling.fps": args.sample_fps,
                "jobs_enabled": False,
            }
        )
        worker = Worker(settings, registry=registry)
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        while worker.segments_done < sent and thread.is_alive():
            time.sleep(0.02)
        worker.stop("bench")
        thread.join(60)
    if worker.first_arrival is None or worker.last_done is None:
        raise RuntimeError("the worker did not finish the backlog")
    frames = registry.get_sample_value("clipguard_frames_scored_total") or 0.0
    return frames, worker.last_done - worker.first_arrival


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--clips", type=int, default=24)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--sample-fps", type=float, default=2.0)
    ap.add_argument("--decoders", type=int, default=max(1, min(4, os.cpu_count() or 1)))
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)

    started = time.perf_counter()
    folder = _folder(args.clips, args.seconds)
    sources = sorted(str(p) for p in folder.glob("*.mp4"))
    print(
        f"folder: {len(sources)} clips of {args.seconds} s, {WIDTH}x{HEIGHT} H.264 at {FPS} fps "
        f"({time.perf_counter() - started:.1f} s to make or find); sampled at "
        f"{args.sample_fps:g} fps; {args.decoders} decode processes; {os.cpu_count()} cores"
    )
    with tempfile.TemporaryDirectory() as cache:
        os.environ["CLIPGUARD_POLICY_CACHE"] = cache
        model = load_clip(DEMO_MODEL)
        policies = load_policies([DEMO_POLICIES])
        policy_set = PolicyCompiler(model).compile(policies)
        options = ScanOptions(sampling=Sampling(mode="fps", fps=args.sample_fps))
        encoder = load_encoder(model, batch_size=args.batch_size)
        with DecodePool(args.decoders) as pool:
            pool.decode_uri(sources[0], DecodeOptions(size=model.input_resolution))  # children warm
            runs: dict[str, list[float]] = {"overlapped": [], "one at a time": []}
            for _ in range(args.repeats):  # interleaved; medians reported
                for name, in_flight in (("overlapped", None), ("one at a time", 1)):
                    scanner = Scanner(
                        encoder,
                        policy_set,
                        pool=pool,
                        options=options,
                        in_flight=in_flight,
                    )
                    t0 = time.perf_counter()
                    results = list(scanner.scan(sources))
                    runs[name].append(time.perf_counter() - t0)
            scored = sum(r.frames_scored for r in results)
            decoded = sum(r.frames_decoded for r in results)
            flags = sum(len(r.incidents) for r in results)
            for name, times in runs.items():
                seconds = statistics.median(times)
                print(
                    f"{name:>14}: {scored / seconds:8.1f} frames scored/s "
                    f"({decoded / seconds:7.1f} decoded/s), {scored} frames, {flags} incidents, "
                    f"{seconds:.2f} s (median of {len(times)})"
                )
            ratio = statistics.median(runs["one at a time"]) / statistics.median(runs["overlapped"])
            print(f"{'overlap gain':>14}: {ratio:.2f}x")
            folder_rate = scored / statistics.median(runs["overlapped"])
        with tempfile.TemporaryDirectory() as out:
            t0 = time.perf_counter()
            with (
                contextlib.redirect_stdout(io.StringIO()),
                contextlib.redirect_stderr(io.StringIO()),
            ):
                code = cli_main(
                    [
                        "--log-level",
                        "ERROR",
                        "scan",
                        str(folder),
                        "--out",
                        out,
                        "--sample-fps",
                        f"{args.sample_fps:g}",
                        "--decoders",
                        str(args.decoders),
                    ]
                )
            seconds = time.perf_counter() - t0
        print(
            f"{'clipguard scan':>14}: {scored / seconds:8.1f} frames scored/s end to end "
            f"(model, policies, decode processes, report included), {seconds:.2f} s, "
            f"exit status {code}"
        )
    worker_runs = [_worker_run(sources, args) for _ in range(args.repeats)]
    frames = statistics.median(f for f, _ in worker_runs)
    seconds = statistics.median(s for _, s in worker_runs)
    print(
        f"{'stream worker':>14}: {frames / seconds:8.1f} frames scored/s end to end, the same "
        f"clips as {len(sources)} streams of 2 s MPEG-TS segments ({frames:.0f} frames, "
        f"{seconds:.2f} s, median of {len(worker_runs)}; consumed to outputs acknowledged)"
    )
    print(
        f"{'folder/worker':>14}: {folder_rate / (frames / seconds):.2f}x (overlapped folder "
        "scan's frames scored/s over the stream worker's)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
