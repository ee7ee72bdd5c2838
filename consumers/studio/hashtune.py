"""Tune for hash policies (``kind: hash``): the nearest distance of every stored hashed frame to
the policy's banks, and what a distance threshold (``max_distance``) would match and raise.

The stored frames with a PDQ hash are read once (:func:`pipeline.store.bankmatch.
hashed_frames`) and put in the store backtest's order (stream, time; a frame whose time does
not advance dropped). Each stream's frames are judged twice with the worker's own judging
(:func:`pipeline.policies.hashing.judge_frames`, vPDQ windows included), the policy edited to
the largest distance there is (:data:`~pipeline.hashes.signals.MAX_DISTANCE`: each frame's
nearest distance to the banks) and to distance 0 (which frames a banked video's window
matches: that does not depend on the distance). At a distance ``d`` a frame then passes when
its nearest distance is at most ``d`` or a window matches it, with the score the judge gives
it (``1 - distance / 256``, the threshold's own for a window match), and the policy's temporal
rule runs over every stream with the store's kernel: :meth:`HashTraffic.count` is the hash
backtest of the policy edited to ``d`` (``tests/test_studio_hash_tune.py`` holds it equal).
"""

from __future__ import annotations

import importlib
import time
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from pipeline.errors import ConfigError
from pipeline.hashes.signals import MAX_DISTANCE, PDQ_BITS
from pipeline.policies.schema import HashPolicy

__all__ = ["HashCount", "HashTraffic"]

_NONE: Final = -1  # no bank entry within MAX_DISTANCE, or a frame under min_quality


@dataclass(frozen=True)
class HashCount:
    distance: int
    frames: int  # stored hashed frames matched at that distance
    total: int  # stored hashed frames judged
    incidents: int  # incidents the temporal rule opens over every stored stream
    seconds: float


class HashTraffic:
    """One hash policy's nearest distances on the stored hashed frames (see the module)."""

    def __init__(
        self,
        policy: HashPolicy,
        nearest: npt.NDArray[np.int64],
        window: npt.NDArray[np.bool_],
        low_quality: int,
        ts: npt.NDArray[np.float64],
        layout: Any,
        kernel: Any,
    ) -> None:
        self.policy = policy
        self.nearest = nearest  # (F,) bits, _NONE where none
        self.window = window  # (F,) a banked video's window matches the frame
        self.low_quality = low_quality
        self._ts = ts
        self._layout = layout
        self._find = kernel

    @property
    def frames(self) -> int:
        return int(self.nearest.shape[0])

    def histogram(self) -> list[int]:
        """Frames per nearest distance, 0 to MAX_DISTANCE (frames with none left out)."""
        near = self.nearest[self.nearest >= 0]
        return [int(v) for v in np.bincount(near, minlength=MAX_DISTANCE + 1)]

    def count(self, distance: int) -> HashCount:
        """What ``distance`` as ``max_distance`` would match and raise on the stored frames."""
        if not 0 <= distance <= MAX_DISTANCE:
            raise ConfigError(f"the distance must be 0 to {MAX_DISTANCE}")
        started = time.perf_counter()
        within = (self.nearest >= 0) & (self.nearest <= distance)
        passed = within | self.window
        score = np.where(
            within,
            1.0 - self.nearest / PDQ_BITS,
            np.where(self.window, 1.0 - distance / PDQ_BITS, 0.0),
        ).astype(np.float32)
        found = self._find(self._ts, passed, score, self.policy.temporal, self._layout)
        return HashCount(
            distance=distance,
            frames=int(np.count_nonzero(passed)),
            total=self.frames,
            incidents=len(found),
            seconds=time.perf_counter() - started,
        )

    @classmethod
    def compute(cls, policy: HashPolicy, store: Any, banks: Any, flt: Any = None) -> HashTraffic:
        """Read and judge the stored hashed frames ``flt`` keeps (see the module docstring)."""
        bankmatch = importlib.import_module("pipeline.store.bankmatch")
        temporal = importlib.import_module("pipeline.store.temporal")
        hashing = importlib.import_module("pipeline.policies.hashing")
        from pipeline.hashes.pdq import PdqHash

        counts = bankmatch.BankBacktest()
        frames = [f for batch in bankmatch.hashed_frames(store, flt, counts) for f in batch]
        frames = _in_order(frames)
        loose = policy.model_copy(update={"max_distance": MAX_DISTANCE})
        exact = policy.model_copy(update={"max_distance": 0})
        names = [b for b in policy.banks if b in banks.banks]
        nearest = np.full(len(frames), _NONE, np.int64)
        window = np.zeros(len(frames), bool)
        low = 0
        starts, first = [], 0
        for group in _streams(frames):
            starts.append(first)
            hashes = [PdqHash(f.pdq, f.quality) for f in group]
            times = [f.ts for f in group]
            far = hashing.judge_frames([loose], hashes, times, banks, windows={})
            at0 = hashing.judge_frames([exact], hashes, times, banks, windows={})
            for k, (near, decisions) in enumerate(zip(far.nearest, at0.decisions, strict=True)):
                found = [d for name, d in (near or {}).items() if name in names and d is not None]
                if found:
                    nearest[first + k] = min(found)
                elif group[k].quality < policy.min_quality:
                    low += 1
                window[first + k] = any(d.passed for d in decisions) and nearest[first + k] != 0
            first += len(group)
        ts = np.asarray([f.ts for f in frames], dtype=np.float64)
        layout = temporal.StreamLayout.of(starts, len(frames))
        return cls(policy, nearest, window, low, ts, layout, temporal.find_incidents)


def _in_order(frames: list[Any]) -> list[Any]:
    """The hash backtest's order: stream and time; a frame whose time does not advance in
    its stream dropped, as the live tracker ignores it."""
    frames.sort(key=lambda f: (f.stream_id, f.ts, f.seq, f.frame_index))
    kept: list[Any] = []
    for f in frames:
        if kept and kept[-1].stream_id == f.stream_id and f.ts <= kept[-1].ts:
            continue
        kept.append(f)
    return kept


def _streams(frames: list[Any]) -> list[list[Any]]:
    out: list[list[Any]] = []
    for f in frames:
        if not out or out[-1][-1].stream_id != f.stream_id:
            out.append([])
        out[-1].append(f)
    return out
