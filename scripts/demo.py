"""`make demo`: the whole streaming job on one machine, start to finish.

1. starts the embedded Kafka-compatible broker (Tansu) on a free loopback port, with the topics;
2. generates a 24 s sample video from the synthetic scene generator, with known objects at
   known times (a red triangle from 4 s to 8 s, a yellow SPAM word from 12 s to 16 s, and near
   misses around them);
3. produces it to clipguard.segments as MPEG-TS segments, as a live ingest edge would;
4. runs a stream worker (the bundled demo model and demo policies) until the stream is drained;
5. prints the flag events beside the ground truth, writes every output record to
   demo-output/, and stops everything it started;
6. keeps every scored frame (embedding and thumbnail) in a frame store under
   demo-output/store/ (the worker's embeddings topic, written by the store sink) and backtests
   the demo policies, and a lowered threshold, on it.

    python scripts/demo.py [--out demo-output] [--keep-running]
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from consumers.broker import EmbeddedBroker, default_topics  # noqa: E402
from consumers.produce import produce_file  # noqa: E402
from consumers.settings import load_settings  # noqa: E402
from consumers.worker import Worker  # noqa: E402
from pipeline.demo.video import demo_shots, write_video  # noqa: E402
from pipeline.models.registry import DEMO_MODEL  # noqa: E402
from pipeline.policies.bundled import DEMO_POLICIES  # noqa: E402

STREAM = "demo-cam-1"
TOPICS = ("clipguard.scores", "clipguard.flags", "clipguard.dlq")


def _read(bootstrap: str, topic: str) -> list[dict[str, object]]:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        out: list[dict[str, object]] = []
        deadline = time.monotonic() + 30
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            if time.monotonic() > deadline:
                raise RuntimeError(f"could not read {topic} to its end")
            for records in consumer.poll(timeout_ms=200).values():
                out += [json.loads(r.value) for r in records if r.value]
        return out
    finally:
        consumer.close(autocommit=False)


def _sink(bootstrap: str, where: Path) -> int:
    """Write the embeddings topic into the store at ``where`` (a fresh one); frames written."""
    from consumers.sink import StoreSink
    from pipeline.store import StoreWriter

    if where.exists():
        shutil.rmtree(where)
    sink = StoreSink(StoreWriter(where), bootstrap_servers=bootstrap, max_wait_s=1.0)
    return sink.run(idle_s=5.0, timeout=120).frames


def _backtest(where: Path, frames: int, flags: list[dict[str, object]]) -> bool:
    """Backtest the demo policies on the store (the worker's incidents again) and a lowered
    threshold; whether the first found exactly the worker's incidents."""
    import yaml

    from pipeline.models import load_clip
    from pipeline.policies import load_policies
    from pipeline.policies.compile import PolicyCompiler
    from pipeline.store import backtest, open_store

    model = load_clip(DEMO_MODEL)
    compiler = PolicyCompiler(model)
    store = open_store(where)
    print(f"\n6. frame store: {frames} frames with thumbnails in {where}/ (Parquet)")
    same = backtest(
        compiler.compile(load_policies([DEMO_POLICIES])),
        store,
        model=model.name,
        weights_sha256=model.fingerprint(),
    )
    published = {f["event_id"] for f in flags if f["state"] == "closed"}
    found = {i.event_id for i in same.incidents}
    print(
        f"   backtest of the demo policies: {len(found)} incidents in {same.seconds:.2f} s, "
        f"{'the same as the worker published' if found == published else 'NOT the same'}"
    )
    edited = where.parent / "edited-policies"
    shutil.copytree(DEMO_POLICIES, edited, dirs_exist_ok=True)
    path = edited / "red-triangle.yaml"
    doc = yaml.safe_load(path.read_text())
    shipped = doc["labels"][0]["threshold"]
    doc["labels"][0]["threshold"], doc["version"] = 0.3, 2
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    lowered = backtest(
        compiler.compile(load_policies([edited])),
        store,
        model=model.name,
        weights_sha256=model.fingerprint(),
    )
    d = lowered.labels["red-triangle/red-triangle"]
    print(
        f"   red-triangle threshold {shipped} -> 0.3: {d.incidents} incidents (before "
        f"{d.baseline_incidents}): +{len(d.added)} added, -{len(d.removed)} removed, "
        f"{len(d.changed)} changed"
    )
    print(
        f"   try: clipguard policy backtest {edited} --store {where}\n"
        f'        clipguard store search "a red triangle" --store {where} --out {where.parent}'
        "/search"
    )
    return found == published


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="demo-output", help="folder for the video and records")
    parser.add_argument(
        "--keep-running",
        action="store_true",
        help="leave the broker and worker running afterwards (Ctrl-C stops them)",
    )
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    shots = demo_shots()
    video = write_video(out / "demo.mp4", shots)
    print(f"1. sample video: {video} ({shots[-1].end:.0f} s, 256x256 H.264, 25 fps)")
    for shot in shots:
        print(f"     {shot.start:5.1f}-{shot.end:5.1f} s  {shot.name}")

    with EmbeddedBroker() as broker:
        broker.create_topics(default_topics())
        print(f"2. embedded broker (Tansu) on {broker.bootstrap}, topics created")
        sent = produce_file(broker.bootstrap, video, stream_id=STREAM, segment_seconds=2.0)
        print(f"3. produced {sent} MPEG-TS segments of stream {STREAM!r} to clipguard.segments")

        settings = load_settings(
            overrides={
                "bootstrap_servers": broker.bootstrap,
                "model": DEMO_MODEL,
                "policies": [str(DEMO_POLICIES)],
                "metrics_port": 0,
                "store_embeddings": True,
            }
        )
        worker = Worker(settings)
        failure: list[BaseException] = []

        def run() -> None:
            try:
                worker.run()
            except BaseException as e:
                failure.append(e)

        thread = threading.Thread(target=run, name="demo-worker", daemon=True)
        print(f"4. worker: model {DEMO_MODEL} (a demo model: synthetic shapes and words only),")
        print("   demo policies (red-triangle, spam-text), sampling 2 frames/s")
        t0 = time.monotonic()
        thread.start()
        while worker.segments_done < sent and thread.is_alive():
            if time.monotonic() - t0 > 300:
                print("demo: the worker did not drain the stream in 5 minutes", file=sys.stderr)
                worker.stop("demo timed out")
                thread.join(60)
                return 1
            time.sleep(0.1)
        if failure:
            print(f"demo: the worker failed: {failure[0]}", file=sys.stderr)
            return 1
        drained = time.monotonic() - t0
        if args.keep_running:
            print(f"\nbroker {broker.bootstrap} and worker running; Ctrl-C stops them")
            signal.sigwait({signal.SIGINT, signal.SIGTERM})
        worker.stop("demo finished")
        thread.join(60)
        records = {topic: _read(broker.bootstrap, topic) for topic in TOPICS}
        stored = _sink(broker.bootstrap, out / "store")

    scores, flags, dead = (records[t] for t in TOPICS)
    print(
        f"   drained in {drained:.1f} s (including joining the group and, on a new host, "
        f"converting the model once): {len(scores)} frames scored, {len(flags)} flag events, "
        f"{len(dead)} dead letters\n"
    )
    print("5. flag events (incidents: open -> closed)")
    header = f"   {'policy':<14}{'label':<14}{'start s':>8}{'end s':>8}{'peak':>7}  at s  event id"
    print(header)
    print("   " + "-" * (len(header) - 3))
    for f in flags:
        if f["state"] != "closed":
            continue
        print(
            f"   {f['policy']:<14}{f['label']:<14}{f['start_ts']:>8.2f}{f['end_ts']:>8.2f}"
            f"{f['peak_score']:>7.3f}{f['peak_ts']:>6.1f}  {f['event_id']}"
        )
    print("\n   against the video's ground truth (within one sampling interval, 0.5 s):")
    truth = {"red triangle": "red-triangle", "yellow SPAM": "spam-text"}
    matched = True
    for shot in shots:
        policy = truth.get(shot.name)
        if policy is None:
            continue
        found = [
            f
            for f in flags
            if f["policy"] == policy
            and f["state"] == "closed"
            and shot.start <= float(f["start_ts"]) <= shot.start + 0.5  # type: ignore[arg-type]
            and shot.end - 0.5 <= float(f["end_ts"]) < shot.end  # type: ignore[arg-type]
        ]
        matched &= bool(found)
        mark = "ok  " if found else "MISS"
        print(f"   {mark} {shot.name} on screen {shot.start:.1f}-{shot.end:.1f} s -> {policy}")
    others = [f for f in flags if f["policy"] not in truth.values()]
    if others:
        matched = False
        print(f"   unexpected flags: {others}")
    for topic in TOPICS:
        name = topic.split(".")[1]
        path = out / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in records[topic]))
    print(f"\n   records written to {out}/scores.jsonl, flags.jsonl, dlq.jsonl")
    matched &= _backtest(out / "store", stored, flags)
    took = time.monotonic() - started
    print(f"   the broker and worker are stopped; the whole demo took {took:.0f} s")
    print(
        "\nto run it yourself, each in its own terminal (all in .venv/bin):\n"
        "   clipguard broker                                   # Tansu on 127.0.0.1:9092\n"
        "   clipguard worker                                   # demo model and policies\n"
        f"   clipguard produce {video} --stream-id cam-1 --realtime\n"
        "   clipguard consume clipguard.flags --follow         # flag events as they happen\n"
        "   clipguard consume clipguard.scores --limit 5       # per-frame scores\n"
        "   curl -s 127.0.0.1:9400/metrics | grep ^clipguard_  # the worker's metrics"
    )
    return 0 if matched else 1


if __name__ == "__main__":
    sys.exit(main())
