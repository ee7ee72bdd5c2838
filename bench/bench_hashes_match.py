"""PDQ matching at scale: a bank of 1 million random PDQ hashes, frames matched a second.

Measures, in one run:

- bank load: writing the bank in clipguard's format, reading it back (``read_bank``), and
  building its index; memory per million entries (the columns, the index estimate, and the
  process's resident memory growth);
- matching throughput at radius 31 for four exact methods, in frames a second, for batches of
  frames as a worker would send them: clipguard's multi-index hashing (compiled loops, on 1
  and 2 threads, with and without its fingerprints), faiss's multi-index hashing
  (``IndexBinaryMultiHash``), the same scheme in NumPy, and a flat scan (faiss
  ``IndexBinaryFlat``), the alternatives that were weighed;
- ``Matcher.match_frames`` end to end (index search plus building the match records);
- recall: every method's matches on a query set against brute-force NumPy search over the
  whole bank (recall and precision both 1.0 means identical answers).

Queries: half are bank entries with 0 to 48 random bits flipped (so matches at every
distance around the threshold exist), half unrelated random hashes.

    python bench/bench_hashes_match.py [--entries 1000000] [--frames 20000] [--recall 1000]
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.hashes.bank import BankBuilder, read_bank, write_bank  # noqa: E402
from pipeline.hashes.index import PdqIndex, RangeResult, brute_force_search  # noqa: E402
from pipeline.hashes.match import IndexedBank, Matcher  # noqa: E402
from pipeline.hashes.pdq import PdqHash  # noqa: E402

U8 = npt.NDArray[np.uint8]
RADIUS = 31


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_queries(rng: np.random.Generator, bank: U8, n: int) -> U8:
    near = bank[rng.integers(0, len(bank), n // 2)]
    bits = np.unpackbits(near, axis=1)  # (n/2, 32) -> (n/2, 256)
    for i, row in enumerate(bits):
        row[rng.choice(256, i % 49, replace=False)] ^= 1
    unrelated = rng.integers(0, 256, (n - n // 2, 32), dtype=np.uint8)
    return np.concatenate([np.packbits(bits, axis=1), unrelated])  # (n, 256) -> (n, 32)


class NumpyMih:
    """Multi-index hashing in NumPy (bench-only: the alternative to faiss that was measured).

    16 tables over the 16-bit words of the hashes, each a list of row ids sorted by word with
    bucket offsets; a query probes its word in every table with 0 or 1 flipped bits (17
    probes, enough for radius 31 by the pigeonhole principle), and every candidate row is
    checked by full popcount. Candidates are not deduplicated before checking (a row near in
    two words is rare); the few matches are."""

    def __init__(self, bank: U8) -> None:
        self.n = len(bank)
        self.words64 = bank.view(np.uint64)  # (N, 32) -> (N, 4)
        keys = bank.view("<u2")  # (N, 32) -> (N, 16) words
        self.order = np.empty((16, self.n), np.int32)
        self.starts = np.empty((16, 65537), np.int64)
        for t in range(16):
            self.order[t] = np.argsort(keys[:, t], kind="stable")
            self.starts[t, 0] = 0
            np.cumsum(np.bincount(keys[:, t], minlength=65536), out=self.starts[t, 1:])
        self.starts += (np.arange(16, dtype=np.int64) * self.n)[:, None]  # into order.ravel()
        self.order_flat = self.order.ravel()
        self.starts_flat = self.starts.ravel()
        self.flips = np.array([0] + [1 << b for b in range(16)], np.int64)

    @property
    def nbytes(self) -> int:
        return int(self.words64.nbytes + self.order.nbytes + self.starts.nbytes)

    def search(self, q: U8, radius: int) -> tuple[Any, Any, Any]:
        assert radius <= 31  # one flip a word
        qk = q.view("<u2").astype(np.int64)  # (B, 32) -> (B, 16)
        slot = (qk[:, :, None] ^ self.flips) + (np.arange(16) * 65537)[None, :, None]
        slot = slot.ravel()  # (B * 16 * 17,) bucket numbers
        lo = self.starts_flat[slot]
        n = self.starts_flat[slot + 1] - lo
        runs = np.cumsum(n)
        total = int(runs[-1]) if len(runs) else 0
        pos = np.repeat(lo - (runs - n), n) + np.arange(total)
        cand = self.order_flat[pos]
        owner = np.repeat(np.arange(len(q)).repeat(16 * 17), n)
        qw = q.view(np.uint64)  # (B, 32) -> (B, 4)
        d = np.bitwise_count(self.words64[cand] ^ qw[owner]).sum(axis=1)
        keep = np.flatnonzero(d <= radius)
        pair = np.unique(owner[keep] * self.n + cand[keep])
        owner, cand = pair // self.n, pair % self.n
        d = np.bitwise_count(self.words64[cand] ^ qw[owner]).sum(axis=1)
        return owner, cand, d


def faiss_pairs(index: Any, q: U8) -> set[tuple[int, int]]:
    lims, _, ids = index.range_search(q, RADIUS + 1)  # faiss keeps distances < radius
    owner = np.repeat(np.arange(len(q)), np.diff(lims.astype(np.int64)))
    return set(zip(owner.tolist(), ids.tolist(), strict=True))


def pairs_of(r: RangeResult) -> set[tuple[int, int]]:
    owner = np.repeat(np.arange(len(r)), np.diff(r.lims))
    return set(zip(owner.tolist(), r.ids.tolist(), strict=True))


def throughput(search: Any, queries: U8, batch: int) -> float:
    t0 = time.perf_counter()
    for s in range(0, len(queries), batch):
        search(queries[s : s + batch])
    return len(queries) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--frames", type=int, default=20_000)
    ap.add_argument("--recall", type=int, default=1000, help="queries checked by brute force")
    args = ap.parse_args()
    rng = np.random.default_rng(2026)
    n = args.entries
    import numba

    threads = faiss.omp_get_max_threads()
    print(
        f"numpy {np.__version__}, numba {numba.__version__}, faiss {faiss.__version__} "
        f"({threads} OpenMP threads)"
    )

    bank_hashes = rng.integers(0, 256, (n, 32), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        builder = BankBuilder()
        for i, row in enumerate(bank_hashes):
            builder.add("pdq", row.tobytes().hex(), f"e{i}", ("bench",), "random")
        t0 = time.perf_counter()
        path = write_bank(builder.build("million"), tmp)
        t_write = time.perf_counter() - t0
        del builder
        size = path.stat().st_size
        rss0 = rss_mib()
        t0 = time.perf_counter()
        bank = read_bank(path)
        t_read = time.perf_counter() - t0
        rss1 = rss_mib()
        t0 = time.perf_counter()
        indexed = IndexedBank(bank)
        t_index = time.perf_counter() - t0
        rss2 = rss_mib()
    per_m = 1_000_000 / n
    print(
        f"\nbank of {n} PDQ entries: file {size / 2**20:.0f} MiB; write {t_write:.1f} s, "
        f"read {t_read:.1f} s, index ({indexed.pdq.kind}) {t_index:.1f} s"
    )
    print(
        f"memory per million entries: columns {bank.pdq.nbytes * per_m / 2**20:.0f} MiB, "
        f"index estimate {indexed.pdq.nbytes * per_m / 2**20:.0f} MiB; resident growth "
        f"{(rss1 - rss0) * per_m:.0f} MiB after read, {(rss2 - rss1) * per_m:.0f} MiB more "
        f"after indexing (peak RSS {peak_rss_mib():.0f} MiB)"
    )

    queries = make_queries(rng, bank_hashes, args.frames)
    mih = indexed.pdq
    mih2 = PdqIndex(bank_hashes, kind="mih", threads=2)
    t0 = time.perf_counter()
    compact = PdqIndex(bank_hashes, kind="mih", fingerprints=False)
    t_compact = time.perf_counter() - t0
    compact2 = PdqIndex(bank_hashes, kind="mih", fingerprints=False, threads=2)
    mih.search(queries[:8], RADIUS)  # compile (or load the compiled loops from the cache)
    t0 = time.perf_counter()
    fmih = faiss.IndexBinaryMultiHash(256, 16, 16)
    fmih.add(bank_hashes)
    fmih.nflip = 1
    t_fmih = time.perf_counter() - t0
    t0 = time.perf_counter()
    flat = faiss.IndexBinaryFlat(256)
    flat.add(bank_hashes)
    t_flat = time.perf_counter() - t0
    t0 = time.perf_counter()
    npmih = NumpyMih(bank_hashes)
    t_np = time.perf_counter() - t0
    print(
        f"compact index (no fingerprints) built in {t_compact:.1f} s, "
        f"{compact.nbytes * per_m / 2**20:.0f} MiB per million"
    )
    print(
        f"other indexes built: faiss MIH {t_fmih:.1f} s, faiss flat {t_flat:.1f} s, "
        f"NumPy MIH {t_np:.1f} s ({npmih.nbytes * per_m / 2**20:.0f} MiB per million)"
    )

    # recall against brute force on the first queries (near copies and unrelated alike)
    idx = np.concatenate(
        [np.arange(args.recall // 2), len(queries) // 2 + np.arange(args.recall // 2)]
    )
    sub = queries[idx]
    t0 = time.perf_counter()
    truth = pairs_of(brute_force_search(bank_hashes, sub, RADIUS))
    t_brute = time.perf_counter() - t0
    o, c, _ = npmih.search(sub, RADIUS)
    results = {
        "clipguard": pairs_of(mih.search(sub, RADIUS)),
        "clipguard 2t": pairs_of(mih2.search(sub, RADIUS)),
        "compact": pairs_of(compact.search(sub, RADIUS)),
        "faiss MIH": faiss_pairs(fmih, sub),
        "faiss flat": faiss_pairs(flat, sub),
        "NumPy MIH": set(zip(o.tolist(), c.tolist(), strict=True)),
    }
    print(
        f"\nrecall at radius {RADIUS} on {len(sub)} queries against NumPy brute force "
        f"({len(truth)} true matches; brute force ran {len(sub) / t_brute:.0f} frames/s):"
    )
    for name, got in results.items():
        print(
            f"  {name:12} recall {len(got & truth) / len(truth):.6f}, "
            f"precision {len(got & truth) / max(1, len(got)):.6f}, identical: {got == truth}"
        )

    print(f"\nthroughput at radius {RADIUS}, {len(queries)} frames (half near copies):")
    print(f"  {'method':26} {'batch':>6} {'frames/s':>10}")
    for batch in (64, 1024):
        few = queries[: max(batch, 2048)]
        rows = [
            ("clipguard MIH, 1 thread", lambda q: mih.search(q, RADIUS), queries),
            ("clipguard MIH, 2 threads", lambda q: mih2.search(q, RADIUS), queries),
            ("compact MIH, 1 thread", lambda q: compact.search(q, RADIUS), queries),
            ("compact MIH, 2 threads", lambda q: compact2.search(q, RADIUS), queries),
            ("faiss MIH", lambda q: fmih.range_search(q, RADIUS + 1), few),
            ("NumPy MIH", lambda q: npmih.search(q, RADIUS), few),
            ("faiss flat scan", lambda q: flat.range_search(q, RADIUS + 1), few[: max(batch, 256)]),
        ]
        for name, fn, qs in rows:
            print(f"  {name:26} {batch:>6} {throughput(fn, qs, batch):>10.0f}")
    matcher = Matcher({"million": IndexedBank(bank, threads=2)})
    frames = [PdqHash(q.tobytes(), 100) for q in queries]
    for batch in (64, 1024):
        t0 = time.perf_counter()
        hits = 0
        for s in range(0, len(frames), batch):
            for r in matcher.match_frames(frames[s : s + batch]):
                hits += bool(r.matches)
        fps = len(frames) / (time.perf_counter() - t0)
        print(
            f"  {'Matcher.match_frames, 2t':26} {batch:>6} {fps:>10.0f}   ({hits} frames matched)"
        )


if __name__ == "__main__":
    main()
