"""Exact Hamming range search over PDQ hashes: every bank hash within a distance of a query.

Two ways, one answer (tests hold both to :func:`brute_force_search` on the same data):

* **flat**: compare the query with every bank hash (XOR and popcount over 32 bytes). Exact by
  construction, linear in the bank's size: right for small banks.
* **multi-index hashing** (Norouzi, Punjani and Fleet, "Fast Search in Hamming Space with
  Multi-Index Hashing", CVPR 2012; the scheme of the reference PDQ index,
  ``pdq/cpp/index/mih.h``): the 256 bits are cut into 16 disjoint 16-bit words and each word
  has a table (bank row ids sorted by that word, with bucket offsets). If two hashes differ in
  at most ``d`` bits, some word differs in at most ``nflip = d // 16`` bits (pigeonhole: 16
  words of ``nflip + 1`` or more differing bits would make ``d >= 16 (nflip + 1) > d``). So
  probing every word of the query with up to ``nflip`` flipped bits (17 probes a word for
  ``d = 31``) reaches every hash within ``d``, and each candidate's full distance is checked.
  Exact, with a cost that grows with the candidates (about ``272 N / 65536`` a query at
  ``d = 31``), not the bank.

Why hand-written: faiss has this index (``IndexBinaryMultiHash``), and was measured first
(``bench/bench_hashes_match.py``): its per-bucket ``std::vector`` in an ``unordered_map`` and
its ``unordered_set`` of candidates made it many times slower than the flat loop below over the
same candidates, and held about 160 MiB per million entries. The search loops here are a few
dozen lines compiled with numba (machine code, no temporaries, the GIL released so queries can
be split over threads); the tables are plain NumPy arrays: about 100 MiB per million entries,
plus 256 MiB of fingerprints (128 other bits of each hash beside each table entry, in table
order) that reject nearly every candidate without a random read of its row, about doubling the
throughput; ``fingerprints=False`` keeps the compact layout.

Results come as CSR: ``lims`` (Q + 1), ``ids`` and ``distances``, the matches of query ``i``
at ``ids[lims[i]:lims[i + 1]]``, sorted by distance then id.
"""

from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import numba
import numpy as np
import numpy.typing as npt

from pipeline.errors import HashError
from pipeline.hashes.signals import MAX_DISTANCE, PDQ_BYTES

__all__ = [
    "FLAT_BELOW",
    "MAX_DISTANCE",
    "IndexKind",
    "PdqIndex",
    "RangeResult",
    "brute_force_search",
    "popcount64",
]

IndexKind = Literal["auto", "flat", "mih"]
FLAT_BELOW = 20_000  # "auto" scans banks smaller than this
_WORDS = 16  # 16-bit words of a 256-bit hash
_MIH_MAX_DISTANCE = 47


@dataclass(frozen=True, slots=True)
class RangeResult:
    """Matches of Q queries in CSR form (see the module docstring)."""

    lims: npt.NDArray[np.int64]
    ids: npt.NDArray[np.int64]
    distances: npt.NDArray[np.int32]

    def __len__(self) -> int:
        return len(self.lims) - 1

    def of(self, i: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int32]]:
        """(ids, distances) of query ``i``."""
        a, b = int(self.lims[i]), int(self.lims[i + 1])
        return self.ids[a:b], self.distances[a:b]


# --------------------------------------------------------------------------------------------
# Compiled loops. Hashes are (N, 4) uint64; word t of a hash is bits 16 (t % 4) .. of uint64
# t // 4. Each loop writes (query, row, distance) triples and returns how many, or -1 when the
# output arrays are full (the caller grows them and runs again).


@numba.njit(inline="always")  # type: ignore[misc]
def popcount64(x: Any) -> Any:
    """Set bits of a uint64 inside compiled code (the SWAR sum: numba exposes no popcount
    instruction)."""
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return np.int64((x * np.uint64(0x0101010101010101)) >> np.uint64(56))


@numba.njit(inline="always")  # type: ignore[misc]
def _word(h: Any, t: Any) -> Any:
    return np.int64((h[t >> 2] >> np.uint64((t & 3) * 16)) & np.uint64(0xFFFF))


@numba.njit(nogil=True, cache=True)  # type: ignore[misc]
def _mih_search(rows, order, starts, masks, nflip, queries, radius, out_q, out_r, out_d):  # type: ignore[no-untyped-def]
    n = 0
    for qi in range(queries.shape[0]):
        q = queries[qi]
        for t in range(16):
            qword = _word(q, t)
            for m in range(masks.shape[0]):
                key = qword ^ masks[m]
                for k in range(starts[t, key], starts[t, key + 1]):
                    r = order[t, k]
                    row = rows[r]
                    d = (
                        popcount64(row[0] ^ q[0])
                        + popcount64(row[1] ^ q[1])
                        + popcount64(row[2] ^ q[2])
                        + popcount64(row[3] ^ q[3])
                    )
                    if d > radius:
                        continue
                    # reported already from an earlier table where it was also within nflip?
                    seen = False
                    for u in range(t):
                        if popcount64(np.uint64(_word(row, u) ^ _word(q, u))) <= nflip:
                            seen = True
                            break
                    if seen:
                        continue
                    if n >= out_q.shape[0]:
                        return -1
                    out_q[n] = qi
                    out_r[n] = r
                    out_d[n] = d
                    n += 1
    return n


@numba.njit(nogil=True, cache=True)  # type: ignore[misc]
def _mih_search_fp(  # type: ignore[no-untyped-def]
    rows, order, starts, fp, pick, masks, nflip, queries, radius, out_q, out_r, out_d, sink
):
    # _mih_search with a first check on 128 other bits of each candidate, stored beside the
    # table entry in table order (fp[t, k] = two uint64 words of row order[t, k] that do not
    # hold word t): their distance is a lower bound of the full one, read sequentially, and
    # unrelated rows almost never pass it (under 31 of 128 random bits: about 2e-9).
    # A query's 16 x len(masks) buckets are random reads of a large table: their bounds are
    # read first, then the first fingerprint of each bucket is touched, all independent loads
    # the CPU overlaps (a prefetch numba cannot spell), before the buckets are scanned from
    # cache; measured about a quarter faster than scanning each bucket as it is found. ``sink``
    # keeps the touches from being optimised away.
    n = 0
    nm = masks.shape[0]
    lo = np.empty(16 * nm, np.int64)
    hi = np.empty(16 * nm, np.int64)
    touched = np.uint64(0)
    for qi in range(queries.shape[0]):
        q = queries[qi]
        for t in range(16):
            qword = _word(q, t)
            for m in range(nm):
                key = qword ^ masks[m]
                lo[t * nm + m] = starts[t, key]
                hi[t * nm + m] = starts[t, key + 1]
        for t in range(16):
            for m in range(nm):
                b = t * nm + m
                if lo[b] < hi[b]:
                    touched ^= fp[t, lo[b], 0]
        for t in range(16):
            qa = q[pick[t, 0]]
            qb = q[pick[t, 1]]
            for m in range(nm):
                b = t * nm + m
                for k in range(lo[b], hi[b]):
                    if popcount64(fp[t, k, 0] ^ qa) + popcount64(fp[t, k, 1] ^ qb) > radius:
                        continue
                    r = order[t, k]
                    row = rows[r]
                    d = (
                        popcount64(row[0] ^ q[0])
                        + popcount64(row[1] ^ q[1])
                        + popcount64(row[2] ^ q[2])
                        + popcount64(row[3] ^ q[3])
                    )
                    if d > radius:
                        continue
                    seen = False
                    for u in range(t):
                        if popcount64(np.uint64(_word(row, u) ^ _word(q, u))) <= nflip:
                            seen = True
                            break
                    if seen:
                        continue
                    if n >= out_q.shape[0]:
                        return -1
                    out_q[n] = qi
                    out_r[n] = r
                    out_d[n] = d
                    n += 1
    sink[0] = touched
    return n


@numba.njit(nogil=True, cache=True)  # type: ignore[misc]
def _flat_search(rows, queries, radius, out_q, out_r, out_d):  # type: ignore[no-untyped-def]
    n = 0
    for qi in range(queries.shape[0]):
        q = queries[qi]
        for r in range(rows.shape[0]):
            row = rows[r]
            d = (
                popcount64(row[0] ^ q[0])
                + popcount64(row[1] ^ q[1])
                + popcount64(row[2] ^ q[2])
                + popcount64(row[3] ^ q[3])
            )
            if d <= radius:
                if n >= out_q.shape[0]:
                    return -1
                out_q[n] = qi
                out_r[n] = r
                out_d[n] = d
                n += 1
    return n


def _flip_masks(nflip: int) -> npt.NDArray[np.int64]:
    """Every 16-bit mask of at most ``nflip`` set bits, fewest bits first."""
    masks = [0]
    for k in range(1, nflip + 1):
        masks.extend(sum(1 << b for b in bits) for bits in itertools.combinations(range(16), k))
    return np.asarray(masks, np.int64)


class PdqIndex:
    """An exact range-search index over a fixed ``(N, 32)`` uint8 array of PDQ hashes.

    ``threads`` splits each search's queries over that many threads (the compiled loops
    release the GIL); 1 keeps a search on the calling thread. ``fingerprints`` keeps, beside
    each table entry, 128 other bits of its hash (256 MiB more per million entries) so that
    most candidates are rejected from memory read in sequence: about twice the throughput
    (``bench/bench_hashes_match.py``); without them the index takes about 100 MiB per million.
    """

    def __init__(
        self,
        hashes: npt.NDArray[np.uint8],
        *,
        kind: IndexKind = "auto",
        threads: int = 1,
        fingerprints: bool = True,
    ) -> None:
        _check_hashes(hashes, "bank hashes")
        if kind not in ("auto", "flat", "mih"):
            raise HashError(f"unknown index kind {kind!r}")
        if threads < 1:
            raise HashError(f"threads must be >= 1, not {threads}")
        self.size = int(hashes.shape[0])
        self.kind: Literal["flat", "mih"] = (
            ("flat" if self.size < FLAT_BELOW else "mih") if kind == "auto" else kind
        )
        self.threads = threads
        self._pool: ThreadPoolExecutor | None = None
        self._rows = np.ascontiguousarray(hashes).view(np.uint64)  # (N, 32) -> (N, 4)
        self._order = np.zeros((_WORDS, 0), np.int32)
        self._starts = np.zeros((_WORDS, 1), np.int64)
        self._fp: npt.NDArray[np.uint64] | None = None
        # the two uint64 words that do not hold 16-bit word t (which is in uint64 t // 4)
        self._pick = np.array([[(t // 4 + 1) % 4, (t // 4 + 2) % 4] for t in range(_WORDS)])
        if self.kind == "mih":
            self._build_tables()
            if fingerprints:
                self._fp = np.empty((_WORDS, self.size, 2), np.uint64)
                for t in range(_WORDS):
                    self._fp[t] = self._rows[self._order[t]][:, self._pick[t]]

    def _build_tables(self) -> None:
        n = self.size
        self._order = np.empty((_WORDS, n), np.int32)
        self._starts = np.empty((_WORDS, 65537), np.int64)
        for t in range(_WORDS):
            shift = np.uint64((t % 4) * 16)
            keys = ((self._rows[:, t // 4] >> shift) & np.uint64(0xFFFF)).astype(np.int64)
            self._order[t] = np.argsort(keys, kind="stable")
            self._starts[t, 0] = 0
            np.cumsum(np.bincount(keys, minlength=65536), out=self._starts[t, 1:])

    @property
    def nbytes(self) -> int:
        """Bytes held: the hashes and, for multi-index hashing, the 16 tables."""
        fp = 0 if self._fp is None else int(self._fp.nbytes)
        return int(self._rows.nbytes + self._order.nbytes + self._starts.nbytes) + fp

    def search(self, queries: npt.NDArray[np.uint8], max_distance: int) -> RangeResult:
        """Every bank hash within ``max_distance`` bits of each query (inclusive)."""
        _check_hashes(queries, "query hashes")
        if not 0 <= max_distance <= MAX_DISTANCE:
            raise HashError(f"max_distance must be in 0..{MAX_DISTANCE}, not {max_distance}")
        # (Q, 32) -> (Q, 4); a writable copy, so the compiled loops see one array type
        q = np.array(queries, dtype=np.uint8, order="C", copy=True).view(np.uint64)
        nq = int(q.shape[0])
        if nq == 0 or self.size == 0:
            return RangeResult(
                np.zeros(nq + 1, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int32)
            )
        parts = np.array_split(np.arange(nq), min(self.threads, nq))
        if len(parts) == 1:
            found = [self._run(q, max_distance)]
        else:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="pdq-index")
            pool = self._pool
            futures = [pool.submit(self._run, q[p[0] : p[-1] + 1], max_distance) for p in parts]
            found = [f.result() for f in futures]
        owner = np.concatenate([o + p[0] for (o, _, _), p in zip(found, parts, strict=True)])
        ids = np.concatenate([r for _, r, _ in found])
        dist = np.concatenate([d for _, _, d in found])
        return _csr(nq, owner, ids, dist)

    def _run(
        self, q: npt.NDArray[np.uint64], radius: int
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int32]]:
        capacity = max(1024, 4 * len(q))
        while True:
            out_q = np.empty(capacity, np.int64)
            out_r = np.empty(capacity, np.int64)
            out_d = np.empty(capacity, np.int32)
            if self.kind == "mih" and radius <= _MIH_MAX_DISTANCE and self._fp is not None:
                nflip = radius // _WORDS
                n = _mih_search_fp(
                    self._rows, self._order, self._starts, self._fp, self._pick,
                    _flip_masks(nflip), nflip, q, radius, out_q, out_r, out_d,
                    np.zeros(1, np.uint64),
                )  # fmt: skip
            elif self.kind == "mih" and radius <= _MIH_MAX_DISTANCE:
                nflip = radius // _WORDS
                n = _mih_search(
                    self._rows, self._order, self._starts, _flip_masks(nflip), nflip,
                    q, radius, out_q, out_r, out_d,
                )  # fmt: skip
            else:
                n = _flat_search(self._rows, q, radius, out_q, out_r, out_d)
            if n >= 0:
                return out_q[:n], out_r[:n], out_d[:n]
            capacity *= 4


def brute_force_search(
    bank: npt.NDArray[np.uint8], queries: npt.NDArray[np.uint8], max_distance: int
) -> RangeResult:
    """The definition of the answer: XOR and popcount of every query against every bank hash,
    in NumPy (no compiled code shared with the indexes). Slow; the reference they are tested
    against."""
    _check_hashes(bank, "bank hashes")
    _check_hashes(queries, "query hashes")
    words = np.ascontiguousarray(bank).view(np.uint64)  # (N, 32) uint8 -> (N, 4) uint64
    qwords = np.ascontiguousarray(queries).view(np.uint64)  # (Q, 32) -> (Q, 4)
    owners: list[npt.NDArray[np.int64]] = [np.zeros(0, np.int64)]
    ids: list[npt.NDArray[np.int64]] = [np.zeros(0, np.int64)]
    dists: list[npt.NDArray[np.int32]] = [np.zeros(0, np.int32)]
    for i, qw in enumerate(qwords):
        d = np.bitwise_count(words ^ qw).sum(axis=1, dtype=np.int32)
        hit = np.flatnonzero(d <= max_distance)
        owners.append(np.full(len(hit), i, np.int64))
        ids.append(hit.astype(np.int64))
        dists.append(d[hit])
    return _csr(len(qwords), np.concatenate(owners), np.concatenate(ids), np.concatenate(dists))


def _csr(
    nq: int,
    owner: npt.NDArray[np.int64],
    ids: npt.NDArray[np.int64],
    dist: npt.NDArray[np.int32],
) -> RangeResult:
    # order each query's matches by (distance, id), so every method gives the same arrays
    order = np.lexsort((ids, dist, owner))
    lims = np.zeros(nq + 1, np.int64)
    np.cumsum(np.bincount(owner, minlength=nq), out=lims[1:])
    return RangeResult(lims, ids[order].astype(np.int64), dist[order].astype(np.int32))


def _check_hashes(a: Any, what: str) -> None:
    if not isinstance(a, np.ndarray) or a.dtype != np.uint8 or a.ndim != 2:
        raise HashError(f"{what} are a (N, {PDQ_BYTES}) uint8 array")
    if a.shape[1] != PDQ_BYTES:
        raise HashError(f"{what} have {a.shape[1]} bytes a row, expected {PDQ_BYTES}")
