"""vPDQ: matching a video (a whole scanned file, or a window of a live stream) against the
videos in banks, as ThreatExchange's vPDQ and HMA do.

A video is a bag of frame hashes (:class:`~pipeline.hashes.signals.VpdqFrame`); order and
timestamps do not count. Comparing a query video Q with a bank video C (ThreatExchange
``vpdq_brute_matcher.match_VPDQ_hash_brute`` and ``VPDQIndex``, the vPDQ README):

1. drop repeated hashes (exact duplicates) from each, then frames under the quality filter
   (``min_quality``, default 50);
2. ``query_match_percent``: the share of Q's frames within ``max_distance`` (31) of some frame
   of C; ``compared_match_percent``: the share of C's frames within that of some frame of Q;
3. a match when ``query_match_percent >= 80`` and ``compared_match_percent >= 0``, the
   thresholds ThreatExchange's ``VPDQIndex`` (and so HMA) uses
   (``VPDQ_QUERY_MATCH_THRESHOLD_PERCENT = 80.0``, ``VPDQ_INDEX_MATCH_THRESHOLD_PERCENT =
   0.0``). The vPDQ README's worked example puts the 80% on the compared side instead; both
   thresholds are settings here.

:func:`vpdq_compare` compares two videos exactly as above. :class:`VideoMatcher` compares one
query against every bank video at once through a PDQ index of all their frames, giving the
same percentages, and :class:`StreamWindow` keeps the last ``window_s`` seconds of a stream's
frames and compares them on demand.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from pipeline.errors import HashError
from pipeline.hashes.bank import Bank, BankEntry
from pipeline.hashes.index import PdqIndex
from pipeline.hashes.signals import (
    COMPARED_MATCH_PERCENT,
    PDQ_BYTES,
    QUERY_MATCH_PERCENT,
    VpdqFrame,
)

__all__ = [
    "COMPARED_MATCH_PERCENT",
    "QUERY_MATCH_PERCENT",
    "StreamWindow",
    "VideoMatch",
    "VideoMatcher",
    "VpdqComparison",
    "vpdq_compare",
]

_DISTANCE = 31
_QUALITY = 50
_PAIR_BLOCK = 4096  # rows of the pairwise distance matrix computed at once


@dataclass(frozen=True, slots=True)
class VpdqComparison:
    """Shares (0..100) of each side's distinct, good-quality frames that the other matches."""

    query_match_percent: float
    compared_match_percent: float

    def is_match(
        self,
        query_threshold: float = QUERY_MATCH_PERCENT,
        compared_threshold: float = COMPARED_MATCH_PERCENT,
    ) -> bool:
        return (
            self.query_match_percent >= query_threshold
            and self.compared_match_percent >= compared_threshold
        )


@dataclass(frozen=True, slots=True)
class VideoMatch:
    """A bank video a query video matched."""

    bank: str
    entry_id: str
    comparison: VpdqComparison
    tags: tuple[str, ...]
    source: str


def _prepare(frames: Iterable[VpdqFrame], min_quality: int) -> npt.NDArray[np.uint8]:
    """Distinct hashes of good-quality frames, ``(n, 32)`` (ThreatExchange dedupes first)."""
    seen: dict[bytes, int] = {}
    for f in frames:
        if f.pdq not in seen:
            seen[f.pdq] = f.quality
    keep = [h for h, q in seen.items() if q >= min_quality]
    # (n * 32,) -> (n, 32)
    return np.frombuffer(b"".join(keep), dtype=np.uint8).reshape(len(keep), PDQ_BYTES)


def _within(
    a: npt.NDArray[np.uint8], b: npt.NDArray[np.uint8], max_distance: int
) -> npt.NDArray[np.bool_]:
    """(len(a), len(b)) matrix: distance <= max_distance, computed in blocks of rows."""
    aw = np.ascontiguousarray(a).view(np.uint64)  # (n, 32) -> (n, 4)
    bw = np.ascontiguousarray(b).view(np.uint64)
    out = np.zeros((len(aw), len(bw)), dtype=np.bool_)
    for s in range(0, len(aw), _PAIR_BLOCK):
        block = aw[s : s + _PAIR_BLOCK, None, :] ^ bw[None, :, :]  # (blk, m, 4)
        out[s : s + _PAIR_BLOCK] = np.bitwise_count(block).sum(axis=2) <= max_distance
    return out


def vpdq_compare(
    query: Sequence[VpdqFrame],
    compared: Sequence[VpdqFrame],
    *,
    max_distance: int = _DISTANCE,
    min_quality: int = _QUALITY,
) -> VpdqComparison:
    """ThreatExchange's brute-force vPDQ comparison of two videos (module docstring). A side
    with no good-quality frame gives 0% on both sides."""
    q = _prepare(query, min_quality)
    c = _prepare(compared, min_quality)
    if len(q) == 0 or len(c) == 0:
        return VpdqComparison(0.0, 0.0)
    hit = _within(q, c, max_distance)
    return VpdqComparison(
        float(hit.any(axis=1).sum()) * 100.0 / len(q),
        float(hit.any(axis=0).sum()) * 100.0 / len(c),
    )


class VideoMatcher:
    """Every vPDQ entry of a set of banks in one PDQ index, to compare query videos with all
    of them at once (ThreatExchange's ``VPDQIndex`` algorithm; same percentages as
    :func:`vpdq_compare` against each entry)."""

    def __init__(
        self,
        banks: Mapping[str, Bank],
        *,
        max_distance: int = _DISTANCE,
        min_quality: int = _QUALITY,
    ) -> None:
        self.max_distance = max_distance
        self.min_quality = min_quality
        self._entries: list[tuple[str, BankEntry]] = []
        blocks: list[npt.NDArray[np.uint8]] = []
        owners: list[npt.NDArray[np.int64]] = []
        for name in sorted(banks):
            for entry in banks[name].vpdq:
                frames = _prepare(entry.frames, min_quality)
                if len(frames) == 0:
                    continue
                blocks.append(frames)
                owners.append(np.full(len(frames), len(self._entries), np.int64))
                self._entries.append((name, entry))
        all_frames = np.concatenate(blocks) if blocks else np.zeros((0, PDQ_BYTES), np.uint8)
        self._owner = np.concatenate(owners) if owners else np.zeros(0, np.int64)
        self._sizes = np.bincount(self._owner, minlength=len(self._entries))
        self._index = PdqIndex(all_frames)

    def __len__(self) -> int:
        return len(self._entries)

    def compare(self, query: Iterable[VpdqFrame]) -> list[tuple[str, BankEntry, VpdqComparison]]:
        """The comparison of ``query`` with every bank video it shares a matching frame with."""
        q = _prepare(query, self.min_quality)
        if len(q) == 0 or len(self._entries) == 0:
            return []
        found = self._index.search(q, self.max_distance)
        owners_of_hit = self._owner[found.ids]
        query_of_hit = np.repeat(np.arange(len(q), dtype=np.int64), np.diff(found.lims))
        out = []
        for e in np.unique(owners_of_hit).tolist():
            mine = owners_of_hit == e
            q_matched = len(np.unique(query_of_hit[mine]))
            c_matched = len(np.unique(found.ids[mine]))
            name, entry = self._entries[e]
            comparison = VpdqComparison(
                q_matched * 100.0 / len(q), c_matched * 100.0 / int(self._sizes[e])
            )
            out.append((name, entry, comparison))
        return out

    def match(
        self,
        query: Iterable[VpdqFrame],
        *,
        query_threshold: float = QUERY_MATCH_PERCENT,
        compared_threshold: float = COMPARED_MATCH_PERCENT,
    ) -> list[VideoMatch]:
        """The bank videos ``query`` matches under the thresholds, best first."""
        hits = [
            VideoMatch(name, entry.entry_id, c, entry.tags, entry.source)
            for name, entry, c in self.compare(query)
            if c.is_match(query_threshold, compared_threshold)
        ]
        hits.sort(key=lambda m: (-m.comparison.query_match_percent, m.bank, m.entry_id))
        return hits


class StreamWindow:
    """The last ``window_s`` seconds of one stream's frame hashes, for vPDQ matching of live
    video: push each sampled frame's hash, then :meth:`match` against a :class:`VideoMatcher`.

    A known clip spliced into a stream is found once the window holds mostly that clip
    (query share >= the threshold): choose ``window_s`` about the length of the shortest clip
    worth finding; single-frame PDQ matching (:class:`~pipeline.hashes.match.Matcher`) covers
    anything shorter.
    """

    def __init__(self, window_s: float, *, max_frames: int = 100_000) -> None:
        if not window_s > 0:
            raise HashError(f"window_s must be > 0, not {window_s}")
        self.window_s = window_s
        self._frames: deque[VpdqFrame] = deque(maxlen=max_frames)

    def __len__(self) -> int:
        return len(self._frames)

    def push(self, frame: VpdqFrame) -> None:
        """Add a frame (timestamps must not go backwards) and forget frames that left the
        window."""
        if self._frames and frame.timestamp < self._frames[-1].timestamp:
            raise HashError(
                f"frame at {frame.timestamp} s is before the previous one "
                f"({self._frames[-1].timestamp} s)"
            )
        self._frames.append(frame)
        start = frame.timestamp - self.window_s
        while self._frames and self._frames[0].timestamp <= start:
            self._frames.popleft()

    def frames(self) -> tuple[VpdqFrame, ...]:
        return tuple(self._frames)

    def match(self, matcher: VideoMatcher, **thresholds: float) -> list[VideoMatch]:
        """:meth:`VideoMatcher.match` of the window's frames."""
        return matcher.match(self._frames, **thresholds)
