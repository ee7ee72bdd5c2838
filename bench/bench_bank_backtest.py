"""Bank backtest throughput: stored frames' PDQ hashes matched against a bank.

The bench writes its own store in a temporary folder: ``--frames`` frames (default 1 million),
a stream a file, each with a random PDQ hash and quality (a tenth under 50) and an
8-value embedding (the embeddings are not read by a bank backtest), in Parquet files of 64k
rows as the sink writes them; a tenth of the frames carry a hash within 0 to 31 bits of a
bank entry. The bank holds ``--entries`` random PDQ hashes (default 100,000). It then
measures, best of ``--repeats``:

- reading the frame id, place and hash columns of every frame (the store's part);
- :func:`pipeline.store.bankmatch.match_stored_frames` end to end: frames a second;

and checks the matches of the first ``--check`` frames against brute-force Hamming search (the
bench prints the counts; it does not fail on time).

    python bench/bench_bank_backtest.py [--frames 1000000] [--entries 100000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.hashes.bank import BankBuilder  # noqa: E402
from pipeline.hashes.match import Matcher  # noqa: E402
from pipeline.policies.judge import FrameRef  # noqa: E402
from pipeline.store import FrameInfo, StoreWriter, frame_table, open_store  # noqa: E402
from pipeline.store.bankmatch import match_stored_frames  # noqa: E402

ROWS = 64 * 1024


def _write_store(
    where: Path, frames: int, entries: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """The store; returns every stored frame's (hash, quality) as (N, 33) uint8."""
    hashes = rng.integers(0, 256, (frames, 32), dtype=np.uint8)
    near = rng.random(frames) < 0.1
    picks = entries[rng.integers(0, len(entries), int(near.sum()))]
    flips = np.unpackbits(picks, axis=1)  # (n, 256) bits
    for row, bits in zip(flips, rng.integers(0, 32, len(picks)), strict=True):
        row[rng.choice(256, size=int(bits), replace=False)] ^= 1
    hashes[near] = np.packbits(flips, axis=1)
    quality = np.where(rng.random(frames) < 0.1, 30, 80).astype(np.uint8)
    writer = StoreWriter(where)
    for start in range(0, frames, ROWS):
        stop = min(frames, start + ROWS)
        stream = f"cam-{start // ROWS}"
        info = FrameInfo(
            model="bench",
            weights_sha256="0" * 64,
            preprocess="pad@224",
            policy_set="s" * 16,
            policy_versions={},
            stream_id=stream,
            scored_at=1.7e9,
        )
        refs = [FrameRef(seq=i, frame_index=0, ts=float(i)) for i in range(start, stop)]
        pairs = [(hashes[i].tobytes(), int(quality[i])) for i in range(start, stop)]
        table = frame_table(info, refs, np.ones((stop - start, 8), np.float32), None, pairs)
        writer.write(table, f"part-{start:09d}")
    return np.concatenate([hashes, quality[:, None]], axis=1)


def _brute_force(stored: np.ndarray, entries: np.ndarray, max_distance: int) -> int:
    """Matches (frame, entry) within ``max_distance`` among ``stored`` frames of quality >= 50."""
    good = np.ascontiguousarray(stored[stored[:, 32] >= 50, :32]).view(np.uint64)  # (N, 4)
    bank = np.ascontiguousarray(entries).view(np.uint64)  # (E, 4)
    found = 0
    for start in range(0, len(good), 256):
        block = good[start : start + 256]
        dist = np.bitwise_count(block[:, None, :] ^ bank[None, :, :]).sum(axis=2)  # (b, E)
        found += int((dist <= max_distance).sum())
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=1_000_000)
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--check", type=int, default=20_000, help="frames checked by brute force (0: none)"
    )
    args = parser.parse_args()
    rng = np.random.default_rng(1)
    entries = rng.integers(0, 256, (args.entries, 32), dtype=np.uint8)
    builder = BankBuilder()
    for i, e in enumerate(entries):
        builder.add("pdq", e.tobytes().hex(), f"e{i}", [], "bench")
    t0 = time.perf_counter()
    matcher = Matcher({"bench": builder.build("bench", "")})
    print(f"bank: {args.entries} entries indexed in {time.perf_counter() - t0:.2f} s")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        stored = _write_store(Path(tmp), args.frames, entries, rng)
        print(f"store: {args.frames} frames written in {time.perf_counter() - t0:.1f} s")
        store = open_store(tmp)
        columns = ("frame_id", "stream_id", "ts", "tile", "pdq", "pdq_quality")
        read, matched = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            rows = sum(b.num_rows for b in store.batches(columns))
            read.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            found = match_stored_frames(store, matcher)
            matched.append(time.perf_counter() - t0)
        assert rows == args.frames
        print(f"read the hash columns: {min(read):.2f} s ({args.frames / min(read):,.0f} frames/s)")
        print(
            f"bank backtest end to end: {min(matched):.2f} s "
            f"({args.frames / min(matched):,.0f} frames/s); {found.hashed} hashed, "
            f"{found.low_quality} under quality 50, {len(found.matches)} matches"
        )
        if args.check:
            # the first --check frames (seq is the frame's row in the store)
            got = sum(m.seq < args.check for m in found.matches)
            expected = _brute_force(stored[: args.check], entries, 31)
            print(
                f"brute force over the first {args.check} frames: {expected} matches, "
                f"the backtest {got}; equal: {expected == got}"
            )


if __name__ == "__main__":
    main()
