"""Tune for hash policies over a large hashed store: the pass that gives every stored hashed
frame its nearest distance to the policy's banks (:class:`consumers.studio.hashtune.HashTraffic`)
and the slider's counts, against the hash backtest of one distance.

The bench builds its own store (cached under ``.cache/bench_studio_hashtune``; ``--fresh``
rebuilds it): ``--frames`` hashed frames (default 500,000) in streams of 1,000 frames at 2
frames a second, random PDQ hashes of quality 90 (one frame in 20 of quality 30, under the
policy's ``min_quality``) with stretches drifting away from a banked hash, and a bank of
``--entries`` PDQ entries (default 1,000). It prints figures and never fails on time.

    python bench/bench_studio_hashtune.py [--frames 500000] [--entries 1000] [--repeats 3]
        [--fresh] [--backtest]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PER_STREAM = 1000
POLICY = """\
id: known-clips
version: 1
kind: hash
description: Clips we have taken down before.
owner: trust-and-safety@example.com
severity: high
action: block
banks: [known]
signals: [pdq]
max_distance: {distance}
"""


def build(where: Path, frames: int, entries: int) -> None:
    """The store in ``where/store`` and the bank in ``where/banks``."""
    from pipeline.policies.judge import FrameRef
    from pipeline.store import FrameInfo, StoreWriter, frame_table

    rng = np.random.default_rng(5)
    bank = rng.integers(0, 256, (entries, 32), dtype=np.uint8)
    (where / "banks").mkdir(parents=True)
    lines = ["# clipguard-bank 1", "signal_type\thash\tentry_id\ttags\tsource"]
    lines += [f"pdq\t{row.tobytes().hex()}\tcase-{i}\tspam\tbench" for i, row in enumerate(bank)]
    (where / "banks" / "known.bank.tsv").write_text("\n".join(lines) + "\n")
    writer = StoreWriter(where / "store")
    refs = [FrameRef(seq=i // 4, frame_index=i % 4, ts=i / 2) for i in range(PER_STREAM)]
    bits = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).sum(axis=1)
    assert bits.max() == 8
    tables = []
    for s in range(frames // PER_STREAM):
        hashes = rng.integers(0, 256, (PER_STREAM, 32), dtype=np.uint8)
        for start in rng.choice(PER_STREAM - 40, size=3, replace=False):
            near = bank[int(rng.integers(0, entries))]
            for k in range(40):  # a known clip drifting away: k flipped bits
                h = near.copy()
                for bit in rng.choice(256, size=k, replace=False):
                    h[bit // 8] ^= np.uint8(1 << (bit % 8))
                hashes[start + k] = h
        quality = np.where(rng.random(PER_STREAM) < 0.05, 30, 90)
        info = FrameInfo(
            model="clipguard-demo",
            weights_sha256="0" * 64,
            preprocess="pad@64",
            policy_set="bench",
            policy_versions={},
            stream_id=f"cam-{s:04d}",
            scored_at=1_764_547_200.0 + s,
            segment_partition=s % 12,
            segment_offset=s,
        )
        emb = np.ones((PER_STREAM, 4), np.float32) / 2
        pairs = [(hashes[i].tobytes(), int(quality[i])) for i in range(PER_STREAM)]
        tables.append(frame_table(info, refs, emb, None, pairs))
        if len(tables) == 64:
            writer.write(_concat(tables), f"bench-{s // 64:05d}")
            tables = []
    if tables:
        writer.write(_concat(tables), "bench-last")


def _concat(tables: list[object]) -> object:
    import pyarrow as pa

    return pa.concat_tables(tables)  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=500_000)
    parser.add_argument("--entries", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--fresh", action="store_true")
    parser.add_argument(
        "--backtest", action="store_true", help="also time the hash backtest of one distance"
    )
    parser.add_argument("--cache", type=Path, default=ROOT / ".cache" / "bench_studio_hashtune")
    args = parser.parse_args()

    from consumers.studio.hashtune import HashTraffic
    from pipeline.hashes.store import BankStore
    from pipeline.policies import load_policies
    from pipeline.store import open_store

    where = args.cache / f"hashed-{args.frames}-{args.entries}"
    if args.fresh and where.exists():
        shutil.rmtree(where)
    if not where.exists():
        print(f"building {where}")
        partial = where.with_name(where.name + ".partial")  # an interrupted build is not used
        shutil.rmtree(partial, ignore_errors=True)
        build(partial, args.frames, args.entries)
        partial.rename(where)
    folder = where / "policy"
    folder.mkdir(exist_ok=True)
    (folder / "known-clips.yaml").write_text(POLICY.format(distance=31))
    policy = load_policies([folder]).hashes[0].policy
    banks = BankStore([where / "banks"]).snapshot
    store = open_store(str(where / "store"))
    print(f"{args.frames} stored hashed frames, a bank of {args.entries} PDQ entries")
    times = []
    traffic = None
    for _ in range(args.repeats):
        started = time.perf_counter()
        traffic = HashTraffic.compute(policy, store, banks)
        times.append(time.perf_counter() - started)
    assert traffic is not None
    print(
        f"nearest distances of every frame: median {statistics.median(times):.2f} s, "
        f"max {max(times):.2f} s over {args.repeats} ({traffic.frames} frames judged)"
    )
    for d in (0, 10, 31, 60, 127):
        count = traffic.count(d)
        print(
            f"  at {d:3d} bits: {count.frames:7d} frames, {count.incidents:5d} incidents, "
            f"counted in {count.seconds * 1000:.1f} ms"
        )
    if args.backtest:
        from pipeline.store.hashbacktest import backtest_hashes

        started = time.perf_counter()
        edited = load_policies([folder])
        result = backtest_hashes(edited, store, banks, against=edited)
        diff = result.labels["known-clips/match"]
        print(
            f"hash backtest at 31 bits: {time.perf_counter() - started:.2f} s "
            f"({diff.frames_passing} frames, {diff.incidents} incidents)"
        )


if __name__ == "__main__":
    main()
