"""Stream worker, end to end: a produced 720p video to published scores, against its stages.

All in one run, on the same 720p H.264 video (the textured, panning clip of bench_decode.py):

1. stage alone, decode: the segments through a DecodePool with the worker's processes and
   sampling, all submitted at once: input video frames decoded per second;
2. stage alone, encode: the sampled model inputs through the Encoder in batches of the
   worker's size: images per second, converted to input video frames per second (each sampled
   frame stands for fps / sample_fps video frames);
3. end to end: the segments produced to an embedded broker first, then a worker consumes them:
   input video frames per second from the first segment consumed to the last segment's outputs
   acknowledged (group join, model load and the decode processes' start excluded), with the
   encoder threads `clipguard worker` would use. Goal: 0.85x the slowest stage or more.
4. latency at a fixed offered load: ``--streams`` cameras each sending one segment every
   ``--segment-seconds`` in real time; per segment, consumed to outputs acknowledged, and the
   producer's timestamp to outputs acknowledged (p50, p99).

Both sampling modes are run: the default (2 frames/s) and every frame. Medians of --repeats.

    python bench/bench_worker.py [--seconds 20] [--repeats 3] [--streams 4]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import bench_decode  # noqa: E402

from consumers.broker import EmbeddedBroker, default_topics  # noqa: E402
from consumers.produce import Segment, segment_video  # noqa: E402
from consumers.settings import WorkerSettings, load_settings  # noqa: E402
from consumers.worker import Worker, encoder_threads  # noqa: E402
from pipeline.decode import DecodeOptions, DecodePool  # noqa: E402
from pipeline.models import load_clip  # noqa: E402
from pipeline.models.encoders import load_encoder  # noqa: E402
from pipeline.policies.bundled import DEMO_POLICIES  # noqa: E402

FPS = 25


def _settings(bootstrap: str, mode: str, *, embeddings: bool = False) -> WorkerSettings:
    return load_settings(
        overrides={
            "bootstrap_servers": bootstrap,
            "metrics_port": 0,
            "policies": [str(DEMO_POLICIES)],
            "sampling.mode": mode,
            "max_inflight_segments": 16,
            "store_embeddings": embeddings,
        }
    )


def _headers(stream: str, seg: Segment) -> list[tuple[str, bytes]]:
    return [
        ("content-type", b"video/mp2t"),
        ("stream-id", stream.encode()),
        ("seq", str(seg.seq).encode()),
        ("start-ts", repr(seg.start_ts).encode()),
    ]


def _producer(bootstrap: str) -> Any:
    from kafka import KafkaProducer

    return KafkaProducer(bootstrap_servers=bootstrap, acks="all", max_request_size=16 << 20)


def stage_decode(segments: list[Segment], s: WorkerSettings, size: int) -> tuple[float, list[Any]]:
    """Input frames/s through the decode pool, and the sampled frames (for the encoder)."""
    with DecodePool(s.decode.processes, limits=s.decode.limits()) as pool:
        pool.decode_bytes(
            segments[0].data, "video/mp2t", DecodeOptions(size=size)
        )  # warm the children
        start = time.perf_counter()
        futures = [
            pool.submit_bytes(
                seg.data,
                "video/mp2t",
                DecodeOptions(size=size, fit=s.decode.fit, sampling=s.sampling.rule()),
            )
            for seg in segments
        ]
        results = [f.result() for f in futures]
        took = time.perf_counter() - start
    frames = sum(r.frames_decoded for r in results)
    return frames / took, [f.image for r in results for f in r.frames]


def stage_encode(encoder: Any, images: list[Any], per_sample: float) -> float:
    """Input video frames/s the encoder alone keeps up with."""
    encoder.encode(images[: encoder.batch_size])  # warm up
    start = time.perf_counter()
    done = 0
    while time.perf_counter() - start < 1.0 or done == 0:
        encoder.encode(images)
        done += len(images)
    return done / (time.perf_counter() - start) * per_sample


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def end_to_end(
    segments: list[Segment], mode: str, streams: int, *, embeddings: bool = False
) -> tuple[float, dict[str, float]]:
    """Input video frames/s through a worker, from a backlog of ``streams`` copies, and the CPU
    seconds each part used meanwhile (decode processes, the worker process, the broker)."""
    threads = torch.get_num_threads()
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    with EmbeddedBroker() as broker:
        broker.create_topics(default_topics())
        producer = _producer(broker.bootstrap)
        for i in range(streams):
            for seg in segments:
                producer.send(
                    "clipguard.segments",
                    key=f"cam-{i}".encode(),
                    value=seg.data,
                    headers=_headers(f"cam-{i}", seg),
                )
        producer.flush()
        producer.close()
        settings = _settings(broker.bootstrap, mode, embeddings=embeddings)
        torch.set_num_threads(encoder_threads(settings))  # as `clipguard worker` does
        worker = Worker(settings)
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        while not worker.ready:
            time.sleep(0.01)
        pool = worker._pool
        assert pool is not None and broker.pid is not None
        pool.wait_started(60)  # startup too: decode processes load their code as they start
        children = pool.pids()

        def usage() -> dict[str, float]:
            return {
                "decode processes": sum(_cpu_seconds(p) for p in children),
                "worker process": _cpu_seconds(os.getpid()),
                "broker": _cpu_seconds(broker.pid or 0),
            }

        before = usage()
        total = streams * len(segments)
        while worker.segments_done < total:
            time.sleep(0.05)
        after = usage()
        assert worker.first_arrival is not None and worker.last_done is not None
        took = worker.last_done - worker.first_arrival
        worker.stop("bench")
        thread.join(60)
        torch.set_num_threads(threads)
    frames = streams * sum(seg.frames for seg in segments)
    return frames / took, {k: after[k] - before[k] for k in after}


def latency(
    segments: list[Segment], streams: int, seconds: float
) -> tuple[list[float], list[float]]:
    """Per-segment latencies with ``streams`` live cameras (real-time pacing)."""
    with EmbeddedBroker() as broker:
        broker.create_topics(default_topics())
        settings = _settings(broker.bootstrap, "fps")
        threads = torch.get_num_threads()
        torch.set_num_threads(encoder_threads(settings))
        worker = Worker(settings)
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        while not worker.ready:
            time.sleep(0.05)
        producer = _producer(broker.bootstrap)
        start = time.monotonic()
        sent = 0
        for seg in segments:
            if seg.start_ts > seconds:
                break
            delay = start + seg.start_ts - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            for i in range(streams):
                producer.send(
                    "clipguard.segments",
                    key=f"cam-{i}".encode(),
                    value=seg.data,
                    headers=_headers(f"cam-{i}", seg),
                )
                sent += 1
            producer.flush()
        producer.close()
        while worker.segments_done < sent:
            time.sleep(0.05)
        worker.stop("bench")
        thread.join(60)
        torch.set_num_threads(threads)
        return list(worker.latencies), list(worker.produce_latencies)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the video")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--streams", type=int, default=4, help="streams at once")
    parser.add_argument(
        "--embeddings-only",
        action="store_true",
        help="only the end-to-end ratio with frame embeddings published to the store topic",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    data = bench_decode.video(720, args.seconds, FPS)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "720p.mp4"
        path.write_bytes(data)
        segments = list(segment_video(path, segment_seconds=2.0))
    model = load_clip("clipguard-demo")
    print(
        f"stream worker, end to end: 720p H.264, {args.seconds:g} s at {FPS} fps, "
        f"{len(segments)} segments x {args.streams} streams, model {model.name} "
        f"({model.input_resolution}px), medians of {args.repeats}"
    )
    if args.embeddings_only:
        return _embeddings_ratio(segments, args.streams, args.repeats)
    for mode in ("fps", "all"):
        s = _settings("127.0.0.1:9092", mode)
        encoder = load_encoder(model, batch_size=s.max_batch_size)
        per_sample = FPS / s.sampling.fps if mode == "fps" else 1.0
        decode, enc, e2e = [], [], []
        cpu: dict[str, list[float]] = {}
        for _ in range(args.repeats):
            rate, images = stage_decode(segments, s, model.input_resolution)
            decode.append(rate)
            enc.append(stage_encode(encoder, images, per_sample))
            through, used = end_to_end(segments, mode, args.streams)
            e2e.append(through)
            for part, seconds in used.items():
                cpu.setdefault(part, []).append(seconds)
        d, e, x = (statistics.median(v) for v in (decode, enc, e2e))
        slowest = min(d, e)
        label = f"sampling {s.sampling.fps:g} frames/s" if mode == "fps" else "every frame"
        print(f"\n{label} (input video frames per second)")
        print(f"  decode stage alone   {d:8.1f}")
        print(f"  encode stage alone   {e:8.1f}   ({e / per_sample:.1f} images/s)")
        print(f"  end to end           {x:8.1f}")
        print(f"  end to end / slowest stage: {x / slowest:.2f}x (goal 0.85x)")
        used = {part: statistics.median(v) for part, v in cpu.items()}
        total = sum(used.values())
        print(
            "  CPU during the end-to-end run: "
            + ", ".join(f"{part} {v:.1f} s ({v / total:.0%})" for part, v in used.items())
        )
    lat, produced = latency(segments, args.streams, args.seconds)
    print(
        f"\nlatency, {args.streams} live streams of 720p at {FPS} fps (one 2 s segment per "
        f"stream every 2 s), sampling 2 frames/s, {len(lat)} segments:"
    )
    print(
        f"  consumed -> outputs acknowledged: p50 {_pct(lat, 0.5) * 1000:.0f} ms, "
        f"p99 {_pct(lat, 0.99) * 1000:.0f} ms"
    )
    if produced:
        print(
            f"  produced -> outputs acknowledged: p50 {_pct(produced, 0.5) * 1000:.0f} ms, "
            f"p99 {_pct(produced, 0.99) * 1000:.0f} ms"
        )
    _embeddings_ratio(segments, args.streams, args.repeats)
    return 0


def _embeddings_ratio(segments: list[Segment], streams: int, repeats: int) -> int:
    """End to end (sampling 2 frames/s) with and without every scored frame's embedding and
    thumbnail published to clipguard.embeddings, runs interleaved; the ratio of medians."""
    off, on = [], []
    cpu: dict[bool, list[dict[str, float]]] = {False: [], True: []}
    frames = streams * sum(seg.frames for seg in segments)
    for _ in range(repeats):
        for embeddings, rates in ((False, off), (True, on)):
            rate, used = end_to_end(segments, "fps", streams, embeddings=embeddings)
            rates.append(rate)
            cpu[embeddings].append(used)
    a, b = statistics.median(off), statistics.median(on)
    print("\nframe store records (store_embeddings), sampling 2 frames/s, input frames/s:")
    print(f"  off {a:8.1f}   on {b:8.1f}   on / off: {b / a:.2f} (goal 0.95)")
    print("CPU ms per 1,000 input frames (medians), off -> on:")
    for part in cpu[False][0]:
        was = statistics.median(u[part] for u in cpu[False]) * 1e6 / frames
        now = statistics.median(u[part] for u in cpu[True]) * 1e6 / frames
        print(f"  {part:17s} {was:8.0f} -> {now:8.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
