"""Matching frames and files against banks: PDQ per frame (optionally with its mirrors and
rotations), MD5 per file.

A frame is matched against a bank's PDQ entries and, when asked (``signals`` with ``vpdq``),
against every frame of its vPDQ entries (whole videos): a frame of a banked video matches that
video's entry, so a known clip spliced into a live stream is found on its first sampled frame
rather than once a window of frames has been compared (:mod:`pipeline.hashes.video` does that
comparison too). Video frames under ThreatExchange's quality filter (50) are not indexed:
black and flat frames say nothing about which video they came from.

A :class:`Matcher` is built once from a set of banks (it indexes each bank's PDQ column with
:class:`~pipeline.hashes.index.PdqIndex` and its MD5s in a dict) and is immutable afterwards,
so a bank reload builds a new one and swaps it in (:mod:`pipeline.hashes.store`). Matching
is exact: a frame matches an entry when their Hamming distance is at most ``max_distance``
(ThreatExchange's PDQ default, 31 of 256 bits) and the frame's quality is at least
``min_quality`` (default 50; ThreatExchange's vPDQ filter). Low-quality frames (flat, nearly
black, heavily blurred) are skipped rather than matched: their hashes are noise.

Each frame's result lists its matches (nearest first, at most ``max_matches_per_bank`` a bank)
and the nearest distance found in each bank within ``max_distance`` (``None`` when nothing
was that close), which score records can carry.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from pipeline.errors import HashError
from pipeline.hashes.bank import Bank
from pipeline.hashes.index import IndexKind, PdqIndex
from pipeline.hashes.pdq import DIHEDRAL_NAMES, DihedralHashes, PdqHash
from pipeline.hashes.signals import (
    DEFAULT_MAX_DISTANCE,
    DEFAULT_MIN_QUALITY,
    MAX_DISTANCE,
    PDQ_BYTES,
    SignalType,
)

__all__ = [
    "DEFAULT_MAX_DISTANCE",
    "DEFAULT_MIN_QUALITY",
    "FrameResult",
    "HashMatch",
    "IndexedBank",
    "Matcher",
]


_PDQ_ONLY: tuple[SignalType, ...] = ("pdq",)


@dataclass(frozen=True, slots=True)
class HashMatch:
    """One entry a frame or file matched."""

    bank: str
    entry_id: str
    signal_type: SignalType
    distance: int  # Hamming bits for pdq; 0 for md5
    quality: int  # the query frame's PDQ quality (100 for md5)
    tags: tuple[str, ...]
    source: str
    variant: str = "original"  # which dihedral variant of the frame matched


@dataclass(frozen=True, slots=True)
class FrameResult:
    """What one frame matched: ``matches`` nearest first; ``nearest[bank]`` the smallest
    distance within ``max_distance`` in each bank searched (None: nothing that close);
    ``skipped`` when the frame's quality is under ``min_quality`` (then nothing is searched)."""

    quality: int
    matches: tuple[HashMatch, ...]
    nearest: Mapping[str, int | None]
    skipped: bool = False


class IndexedBank:
    """A bank with its PDQ index, an index of its videos' frames and its MD5 lookup table,
    built once (a reload rebuilds only the banks whose files changed)."""

    __slots__ = ("bank", "frame_owner", "frames", "md5", "pdq")

    def __init__(self, bank: Bank, *, index_kind: IndexKind = "auto", threads: int = 1) -> None:
        self.bank = bank
        self.pdq = PdqIndex(bank.pdq.hashes, kind=index_kind, threads=threads)
        self.md5: dict[bytes, list[int]] = {}
        for i, row in enumerate(bank.md5.hashes):
            self.md5.setdefault(row.tobytes(), []).append(i)
        rows: list[bytes] = []
        owners: list[int] = []
        for e, entry in enumerate(bank.vpdq):
            distinct = {f.pdq for f in entry.frames if f.quality >= DEFAULT_MIN_QUALITY}
            rows += sorted(distinct)
            owners += [e] * len(distinct)
        # (F * 32,) -> (F, 32): every good frame of every video, and the video it belongs to
        frames = np.frombuffer(b"".join(rows), dtype=np.uint8).reshape(len(rows), PDQ_BYTES)
        self.frames = PdqIndex(frames, kind=index_kind, threads=threads)
        self.frame_owner = np.asarray(owners, dtype=np.int64)


class Matcher:
    """Immutable matching state over a set of banks (see the module docstring)."""

    def __init__(
        self, banks: Mapping[str, Bank | IndexedBank], *, index_kind: IndexKind = "auto"
    ) -> None:
        self._indexed = {
            name: b if isinstance(b, IndexedBank) else IndexedBank(b, index_kind=index_kind)
            for name, b in banks.items()
        }
        self.banks: dict[str, Bank] = {name: ib.bank for name, ib in self._indexed.items()}

    def index_nbytes(self) -> int:
        """Estimated bytes held by the PDQ indexes."""
        return sum(ib.pdq.nbytes for ib in self._indexed.values())

    def match_frames(
        self,
        frames: Sequence[PdqHash | DihedralHashes],
        *,
        banks: Sequence[str] | None = None,
        max_distance: int = DEFAULT_MAX_DISTANCE,
        min_quality: int = DEFAULT_MIN_QUALITY,
        max_matches_per_bank: int = 10,
        signals: Collection[SignalType] = _PDQ_ONLY,
    ) -> list[FrameResult]:
        """Match each frame's PDQ hash (all eight variants for :class:`DihedralHashes`: a
        mirrored or rotated copy then matches) against ``banks`` (default: all): their PDQ
        entries, and with ``"vpdq"`` in ``signals`` the frames of their videos."""
        names = self._bank_names(banks)
        if not 0 <= max_distance <= MAX_DISTANCE:
            raise HashError(f"max_distance must be in 0..{MAX_DISTANCE}, not {max_distance}")
        if max_matches_per_bank < 1:
            raise HashError("max_matches_per_bank must be >= 1")
        queries, owners, variants = _stack(frames, min_quality)
        per_frame: list[list[HashMatch]] = [[] for _ in frames]
        nearest: list[dict[str, int | None]] = [dict.fromkeys(names) for _ in frames]
        for name in names:
            # (frame, signal, entry row) -> (distance, variant): the closest of each entry
            best: dict[tuple[int, SignalType, int], tuple[int, int]] = {}
            for signal in ("pdq", "vpdq"):
                if signal in signals:
                    self._search(name, signal, queries, owners, variants, max_distance, best)
            by_frame: dict[int, list[tuple[int, SignalType, int, int]]] = {}
            for (f, signal, row), (d, v) in best.items():
                by_frame.setdefault(f, []).append((d, signal, row, v))
            for f, hits in by_frame.items():
                hits.sort()
                nearest[f][name] = hits[0][0]
                quality = frames[f].quality
                for d, signal, row, v in hits[:max_matches_per_bank]:
                    entry_id, tags, source = self._describe(name, signal, row)
                    per_frame[f].append(
                        HashMatch(
                            name, entry_id, signal, d, quality, tags, source, DIHEDRAL_NAMES[v]
                        )
                    )
        results = []
        for f, frame in enumerate(frames):
            skipped = frame.quality < min_quality
            matches = tuple(sorted(per_frame[f], key=lambda m: (m.distance, m.bank, m.entry_id)))
            results.append(FrameResult(frame.quality, matches, nearest[f], skipped))
        return results

    def _search(
        self,
        name: str,
        signal: SignalType,
        queries: npt.NDArray[np.uint8],
        owners: npt.NDArray[np.int64],
        variants: npt.NDArray[np.int64],
        max_distance: int,
        best: dict[tuple[int, SignalType, int], tuple[int, int]],
    ) -> None:
        """Fold the hits of ``queries`` in one bank's PDQ entries (``pdq``) or video frames
        (``vpdq``, each hit counted for its video) into ``best``."""
        indexed = self._indexed[name]
        index = indexed.pdq if signal == "pdq" else indexed.frames
        if index.size == 0 or len(queries) == 0:
            return
        found = index.search(queries, max_distance)
        for qi in np.flatnonzero(np.diff(found.lims)).tolist():  # rows with any hit
            ids, dists = found.of(qi)
            if signal == "vpdq":
                ids = indexed.frame_owner[ids]
            f = int(owners[qi])
            for row, d in zip(ids.tolist(), dists.tolist(), strict=True):
                key = (f, signal, row)
                if key not in best or d < best[key][0]:
                    best[key] = (d, int(variants[qi]))

    def _describe(
        self, name: str, signal: SignalType, row: int
    ) -> tuple[str, tuple[str, ...], str]:
        bank = self.banks[name]
        if signal == "vpdq":
            entry = bank.vpdq[row]
            return entry.entry_id, entry.tags, entry.source
        return bank.pdq.entry_id(row), bank.pdq.tags(row), bank.pdq.source(row)

    def match_md5(self, digest: bytes, *, banks: Sequence[str] | None = None) -> list[HashMatch]:
        """Every MD5 entry equal to ``digest`` (16 bytes) in ``banks`` (default: all)."""
        if len(digest) != 16:
            raise HashError(f"an MD5 digest is 16 bytes, not {len(digest)}")
        out = []
        for name in self._bank_names(banks):
            col = self.banks[name].md5
            for row in self._indexed[name].md5.get(digest, []):
                out.append(
                    HashMatch(
                        name, col.entry_id(row), "md5", 0, 100, col.tags(row), col.source(row)
                    )
                )
        return out

    def _bank_names(self, banks: Sequence[str] | None) -> list[str]:
        if banks is None:
            return sorted(self.banks)
        missing = [b for b in banks if b not in self.banks]
        if missing:
            raise HashError(f"unknown bank(s): {', '.join(missing)}")
        return list(dict.fromkeys(banks))


def _stack(
    frames: Sequence[PdqHash | DihedralHashes], min_quality: int
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Query rows of the frames worth searching: (hashes (R, 32), frame of each row, variant)."""
    rows: list[bytes] = []
    owners: list[int] = []
    variants: list[int] = []
    for f, frame in enumerate(frames):
        if frame.quality < min_quality:
            continue
        hashes = frame.hashes if isinstance(frame, DihedralHashes) else (frame.hash,)
        for v, h in enumerate(hashes):
            if len(h) != PDQ_BYTES:
                raise HashError(f"a PDQ hash is {PDQ_BYTES} bytes, not {len(h)}")
            rows.append(h)
            owners.append(f)
            variants.append(v)
    # (R * 32,) -> (R, 32)
    queries = np.frombuffer(b"".join(rows), dtype=np.uint8).reshape(len(rows), PDQ_BYTES)
    return queries, np.asarray(owners, np.int64), np.asarray(variants, np.int64)
