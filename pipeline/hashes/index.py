"""Exact Hamming range search over PDQ hashes: every bank hash within a distance of a query.

Two ways, one answer (tests hold both to :func:`brute_force_search` on the same data):

* **flat**: compare the query with every bank hash (faiss ``IndexBinaryFlat``: XOR and
  popcount over 32 bytes). Exact by construction; linear in the bank's size, right for small
  banks.
* **multi-index hashing** (Norouzi et al., "Fast Search in Hamming Space with Multi-Index
  Hashing", CVPR 2012; the scheme of the reference PDQ index, ``pdq/cpp/index/mih.h``):
  faiss ``IndexBinaryMultiHash`` splits the 256 bits into 16 disjoint 16-bit words and keeps
  one hash table a word. If two hashes differ in at most ``d`` bits, then by the pigeonhole
  principle some word differs in at most ``floor(d / 16)`` bits; probing every word of the
  query with up to ``nflip = floor(d / 16)`` flipped bits therefore finds every hash within
  ``d`` (``d = 31`` needs one flip: 17 probes a word), and each candidate's full distance is
  then checked. Exact, with a cost that grows with the candidates, not the bank.

Multi-index hashing was chosen over a NumPy implementation of the same scheme and over the
flat scan by measurement (``bench/bench_hashes_match.py``); faiss is maintained, used by
ThreatExchange's own PDQ index, and releases the GIL while it searches.

Results come as CSR: ``lims`` (Q + 1), ``ids`` and ``distances``, the matches of query ``i``
at ``ids[lims[i]:lims[i + 1]]``, sorted by distance then id.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import faiss
import numpy as np
import numpy.typing as npt

from pipeline.errors import HashError
from pipeline.hashes.signals import PDQ_BITS, PDQ_BYTES

__all__ = [
    "FLAT_BELOW",
    "MAX_DISTANCE",
    "IndexKind",
    "PdqIndex",
    "RangeResult",
    "brute_force_search",
]

IndexKind = Literal["auto", "flat", "mih"]
FLAT_BELOW = 20_000  # "auto" scans banks smaller than this (measured: see the bench)
MAX_DISTANCE = 127  # nflip up to 7: past that PDQ matches mean little anyway
_MIH_TABLES = 16  # 16 words of 16 bits
_MIH_BITS = PDQ_BITS // _MIH_TABLES


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


class PdqIndex:
    """An exact range-search index over a fixed ``(N, 32)`` uint8 array of PDQ hashes."""

    def __init__(self, hashes: npt.NDArray[np.uint8], *, kind: IndexKind = "auto") -> None:
        _check_hashes(hashes, "bank hashes")
        self.size = int(hashes.shape[0])
        self.kind: Literal["flat", "mih"] = (
            ("flat" if self.size < FLAT_BELOW else "mih") if kind == "auto" else kind
        )
        if self.kind not in ("flat", "mih"):
            raise HashError(f"unknown index kind {kind!r}")
        data = np.ascontiguousarray(hashes)
        self._index: Any
        if self.kind == "flat":
            self._index = faiss.IndexBinaryFlat(PDQ_BITS)
        else:
            self._index = faiss.IndexBinaryMultiHash(PDQ_BITS, _MIH_TABLES, _MIH_BITS)
        if self.size:
            self._index.add(data)

    @property
    def nbytes(self) -> int:
        """An estimate of the index's memory: the stored codes plus, for multi-index hashing,
        one id (8 bytes) in each of the 16 tables and the tables' buckets."""
        codes = self.size * PDQ_BYTES
        if self.kind == "flat":
            return codes
        return codes + self.size * _MIH_TABLES * 8

    def search(self, queries: npt.NDArray[np.uint8], max_distance: int) -> RangeResult:
        """Every bank hash within ``max_distance`` bits of each query (inclusive)."""
        _check_hashes(queries, "query hashes")
        if not 0 <= max_distance <= MAX_DISTANCE:
            raise HashError(f"max_distance must be in 0..{MAX_DISTANCE}, not {max_distance}")
        q = np.ascontiguousarray(queries)
        nq = int(q.shape[0])
        if nq == 0 or self.size == 0:
            return RangeResult(
                np.zeros(nq + 1, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int32)
            )
        if self.kind == "mih":
            # pigeonhole: within max_distance means some 16-bit word is within this many flips
            self._index.nflip = max_distance // _MIH_BITS
        # faiss keeps distances strictly below the radius
        lims, dist, ids = self._index.range_search(q, max_distance + 1)
        return _sorted_csr(
            np.asarray(lims, np.int64), np.asarray(ids, np.int64), np.asarray(dist, np.int32)
        )


def brute_force_search(
    bank: npt.NDArray[np.uint8], queries: npt.NDArray[np.uint8], max_distance: int
) -> RangeResult:
    """The definition of the answer: XOR and popcount of every query against every bank hash,
    in NumPy. Slow (linear in bank x queries); the reference the indexes are tested against."""
    _check_hashes(bank, "bank hashes")
    _check_hashes(queries, "query hashes")
    words = np.ascontiguousarray(bank).view(np.uint64)  # (N, 32) uint8 -> (N, 4) uint64
    qwords = np.ascontiguousarray(queries).view(np.uint64)  # (Q, 32) -> (Q, 4)
    lims = [0]
    ids: list[npt.NDArray[np.int64]] = []
    dists: list[npt.NDArray[np.int32]] = []
    for qw in qwords:
        d = np.bitwise_count(words ^ qw).sum(axis=1, dtype=np.int32)
        hit = np.flatnonzero(d <= max_distance)
        ids.append(hit.astype(np.int64))
        dists.append(d[hit])
        lims.append(lims[-1] + len(hit))
    return _sorted_csr(
        np.asarray(lims, np.int64),
        np.concatenate(ids) if ids else np.zeros(0, np.int64),
        np.concatenate(dists) if dists else np.zeros(0, np.int32),
    )


def _sorted_csr(
    lims: npt.NDArray[np.int64], ids: npt.NDArray[np.int64], dist: npt.NDArray[np.int32]
) -> RangeResult:
    # order each query's matches by (distance, id), so every backend gives the same arrays
    nq = len(lims) - 1
    owner = np.repeat(np.arange(nq, dtype=np.int64), np.diff(lims))
    order = np.lexsort((ids, dist, owner))
    return RangeResult(lims, ids[order], dist[order])


def _check_hashes(a: Any, what: str) -> None:
    if not isinstance(a, np.ndarray) or a.dtype != np.uint8 or a.ndim != 2:
        raise HashError(f"{what} are a (N, {PDQ_BYTES}) uint8 array")
    if a.shape[1] != PDQ_BYTES:
        raise HashError(f"{what} have {a.shape[1]} bytes a row, expected {PDQ_BYTES}")
