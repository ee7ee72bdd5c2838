"""A hostile-record run: many malformed records mixed with the good segments of 4 streams,
through one worker on the embedded broker, compared with a clean run of the good segments.

Kinds of bad record, in turn between the good ones: a header key that is not UTF-8 (the client
cannot read the record), a stream-id header that is not the key, a negative and a 4000-digit
``seq``, a stream id with a newline, random bytes as MPEG-TS, a truncated MPEG-TS segment, an
empty value, a non-UTF-8 header value and an unknown content type. Reported: records of each
kind, dead letters by error class, whether every good frame was scored exactly as in the clean
run (ts, frame and scores), worker restarts (none: one ``Worker.run``), and the committed
offset against the end of the topic. Figures only; it never fails on them.

    python bench/bench_hostile.py [--records 10000] [--streams 4]
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import streaming  # noqa: E402
from kafka import KafkaConsumer, KafkaProducer, TopicPartition  # noqa: E402

from consumers.broker import EmbeddedBroker, default_topics  # noqa: E402
from consumers.produce import segment_video  # noqa: E402
from consumers.worker import Worker  # noqa: E402
from pipeline.demo.video import write_video  # noqa: E402
from pipeline.events import DLQ_ERROR_CLASS  # noqa: E402


class _RawKey(str):
    """A header key written as bytes that are not UTF-8."""

    __slots__ = ()

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return b"\xff\xfe" + str(self).encode()


def _headers(stream: str, seq: Any, start: Any, ctype: str = "video/mp2t") -> list[Any]:
    return [
        ("stream-id", stream.encode()),
        ("seq", str(seq).encode()),
        ("content-type", ctype.encode()),
        ("start-ts", str(start).encode()),
    ]


def _bad(kind: str, n: int, seg: Any, rng: random.Random) -> tuple[bytes, bytes, list[Any]]:
    key = f"bad-{n % 7}"
    h = _headers(key, n, 2.0 * n)
    data = seg.data
    if kind == "unreadable":
        return key.encode(), data, [(_RawKey("x"), b"1"), *h]
    if kind == "key-mismatch":
        return key.encode(), data, _headers("other", n, 0.0)
    if kind == "negative-seq":
        return key.encode(), data, _headers(key, -1, 0.0)
    if kind == "huge-seq":
        return key.encode(), data, _headers(key, "9" * 4000, 0.0)
    if kind == "newline-id":
        return b"cam\nforged", data, _headers("cam\nforged", n, 0.0)
    if kind == "garbage":
        return key.encode(), rng.randbytes(188 * 50), h
    if kind == "truncated":
        return key.encode(), data[: len(data) // 2 + 1], h
    if kind == "empty":
        return key.encode(), b"", h
    if kind == "bad-header-value":
        return key.encode(), data, [("x-note", b"\xff"), *h]
    return key.encode(), data, _headers(key, n, 0.0, ctype="application/x-unknown")


KINDS = (
    "unreadable",
    "key-mismatch",
    "negative-seq",
    "huge-seq",
    "newline-id",
    "garbage",
    "truncated",
    "empty",
    "bad-header-value",
    "unknown-type",
)


def _produce(bootstrap: str, records: list[tuple[bytes, bytes, list[Any]]]) -> int:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", max_request_size=8 << 20)
    last = -1
    try:
        for key, value, headers in records:  # one request each: one bad record spoils no other
            last = (
                producer.send("clipguard.segments", key=key, value=value, headers=headers)
                .get(timeout=30)
                .offset
            )
    finally:
        producer.close()
    return last


def _scores(bootstrap: str) -> dict[tuple[str, int, float], list[float]]:
    out = {}
    for r in streaming.read_topic(bootstrap, "clipguard.scores"):
        s = r.json()
        out[(s["stream_id"], s["frame_index"], s["ts"])] = s["scores"]
    return out


def _run(records: list[tuple[bytes, bytes, list[Any]]], count: int) -> dict[str, Any]:
    with EmbeddedBroker() as broker:
        broker.create_topics({**default_topics(), "clipguard.segments": 1})
        last = _produce(broker.bootstrap, records)
        worker = Worker(streaming.settings(broker.bootstrap, jobs_enabled=False))
        started = time.monotonic()
        code = worker.run(count=count, timeout=1800)
        seconds = time.monotonic() - started
        letters = collections.Counter(
            (r.headers.get(DLQ_ERROR_CLASS) or b"?").decode()
            for r in streaming.read_topic(broker.bootstrap, "clipguard.dlq")
        )
        consumer = KafkaConsumer(
            bootstrap_servers=broker.bootstrap,
            group_id=worker.settings.group_id,
            enable_auto_commit=False,
        )
        try:
            committed = consumer.committed(TopicPartition("clipguard.segments", 0))
        finally:
            consumer.close(autocommit=False)
        return {
            "exit": code,
            "seconds": seconds,
            "scores": _scores(broker.bootstrap),
            "letters": letters,
            "committed": committed,
            "end": last + 1,
            "done": worker.segments_done,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--good-every", type=int, default=50, help="one good segment per N")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # a dead letter a record would flood the output
    rng = random.Random(13)
    with tempfile.TemporaryDirectory() as tmp:
        video = write_video(Path(tmp) / "v.mp4", streaming.red_triangle_shots())
        segs = list(segment_video(video, segment_seconds=2.0))
    good: list[tuple[bytes, bytes, list[Any]]] = []
    mixed: list[tuple[bytes, bytes, list[Any]]] = []
    kinds: collections.Counter[str] = collections.Counter()
    next_seq = [0] * args.streams
    for n in range(args.records):
        if n % args.good_every == 0:
            s = (n // args.good_every) % args.streams
            seq = next_seq[s]
            next_seq[s] += 1
            seg = segs[seq % len(segs)]
            record = (f"cam-{s}".encode(), seg.data, _headers(f"cam-{s}", seq, 2.0 * seq))
            good.append(record)
            mixed.append(record)
            continue
        kind = KINDS[n % len(KINDS)]
        kinds[kind] += 1
        mixed.append(_bad(kind, n, segs[n % len(segs)], rng))
    clean = _run(good, len(good))
    hostile = _run(mixed, len(mixed))
    same = {k: v for k, v in hostile["scores"].items() if k[0].startswith("cam-")}
    exact = same == clean["scores"]
    print(f"records: {len(mixed)} ({len(good)} good segments of {args.streams} streams)")
    print("bad records by kind: " + json.dumps(dict(kinds)))
    print("dead letters by error class: " + json.dumps(dict(hostile["letters"])))
    print(
        f"good frames: {len(clean['scores'])} scored in the clean run, {len(same)} in the "
        f"hostile run; identical: {exact}"
    )
    print(f"worker exit {hostile['exit']}, one run (no restart), {hostile['seconds']:.1f} s")
    print(
        f"records handled {hostile['done']}; committed {hostile['committed']} of {hostile['end']}"
    )


if __name__ == "__main__":
    main()
