"""Tune for hash policies (``kind: hash``): the nearest distance of every stored hashed frame to
the policy's banks, and what a distance threshold (``max_distance``) would match and raise.

The stored frames with a PDQ hash are read as the hash backtest reads them
(:func:`pipeline.store.bankmatch.hashed_frames`: tile 0, each frame id once) in columns, and
put in its order (stream, time; a frame whose time does not advance dropped). Each frame's
nearest distance to the hashes the bank matcher would compare it with (the banks' PDQ entries,
their videos' good frames for signal ``vpdq``; frames under ``min_quality`` none) is one
compiled XOR and popcount pass over all frames (:func:`nearest_distances`). Which frames a
banked video's vPDQ window matches does not depend on the distance and is a stream's running
state: with banked videos and the ``vpdq`` signal, each stream is judged with the worker's own
judging (:func:`pipeline.policies.hashing.judge_frames`) at distance 0. At a distance ``d`` a frame
then passes when its nearest distance is at most ``d`` or a window matches it, with the score
the judge gives it (``1 - distance / 256``, the threshold's own for a window match), and the
policy's temporal rule runs over every stream with the store's kernel:
:meth:`HashTraffic.count` is the hash backtest of the policy edited to ``d``
(``tests/test_studio_hash_tune.py`` holds it equal, and the distances and windows equal to the
worker's judging frame by frame).
"""

from __future__ import annotations

import importlib
import time
from dataclasses import dataclass
from typing import Any, Final

import numba
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.errors import ConfigError, StoreError
from pipeline.hashes.index import popcount64
from pipeline.hashes.signals import DEFAULT_MIN_QUALITY, MAX_DISTANCE, PDQ_BITS, PDQ_BYTES
from pipeline.policies.schema import HashPolicy

__all__ = ["HashCount", "HashTraffic", "nearest_distances"]

_NONE: Final = -1  # no bank entry within MAX_DISTANCE, or a frame under min_quality
_READ: Final = ("frame_id", "stream_id", "ts", "seq", "frame_index", "pdq", "pdq_quality", "tile")
_I64 = npt.NDArray[np.int64]
_Bool = npt.NDArray[np.bool_]


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
        temporal = importlib.import_module("pipeline.store.temporal")
        frames = _hashed(store, flt)
        rows = _bank_rows(policy, banks)
        good = frames.quality >= policy.min_quality
        nearest = np.full(len(frames.ts), _NONE, np.int64)
        if len(rows):
            found = nearest_distances(frames.pdq[good], rows)
            nearest[good] = np.where(found <= MAX_DISTANCE, found, _NONE)
        window = _windows(policy, banks, frames, nearest)
        low = int(np.count_nonzero(~good))
        layout = temporal.StreamLayout.of(frames.starts, len(frames.ts))
        return cls(policy, nearest, window, low, frames.ts, layout, temporal.find_incidents)


def nearest_distances(queries: npt.NDArray[np.uint8], rows: npt.NDArray[np.uint8]) -> _I64:
    """Each query hash's (Q, 32) smallest Hamming distance to the bank hashes ``rows`` (M, 32),
    in bits (M >= 1): XOR and popcount over four 64-bit words, compiled (numba), the GIL
    released. Written here because the bank index answers range searches (every entry within
    a distance): at the 127 bits the slider reaches that is most of the bank for each frame,
    where this needs one number a frame."""
    q = np.ascontiguousarray(queries).view(np.uint64)  # (Q, 32) -> (Q, 4)
    r = np.ascontiguousarray(rows).view(np.uint64)  # (M, 4)
    out = np.empty(len(q), np.int64)
    if len(q):
        _nearest(q, r, out)
    return out


@numba.njit(nogil=True, cache=True)  # type: ignore[misc]
def _nearest(queries, rows, out):  # type: ignore[no-untyped-def]
    for i in range(queries.shape[0]):
        q = queries[i]
        best = np.int64(PDQ_BITS + 1)
        for j in range(rows.shape[0]):
            r = rows[j]
            d = (
                popcount64(q[0] ^ r[0])
                + popcount64(q[1] ^ r[1])
                + popcount64(q[2] ^ r[2])
                + popcount64(q[3] ^ r[3])
            )
            if d < best:
                best = d
        out[i] = best


@dataclass(frozen=True, eq=False)
class _Frames:
    """Stored hashed frames in the hash backtest's order (see :func:`_hashed`)."""

    ts: npt.NDArray[np.float64]  # (F,)
    pdq: npt.NDArray[np.uint8]  # (F, 32)
    quality: _I64  # (F,)
    starts: _I64  # first frame of each stream (streams in stream id order)


def _hashed(store: Any, flt: Any) -> _Frames:
    """The stored frames with a PDQ hash as the hash backtest reads them
    (:func:`pipeline.store.bankmatch.hashed_frames`: tile 0, each frame id once, the first
    read), in its order: stream id and time (then segment and frame index); a frame whose
    time does not advance in its stream dropped, as the live tracker ignores it. Columns in
    Arrow and NumPy, no object a frame. :class:`StoreError` for a malformed stored quality."""
    parts = []
    for batch in store.batches(_READ, flt):
        batch = batch.filter(pc.equal(batch.column("tile"), 0))
        if batch.num_rows:
            parts.append(pa.Table.from_batches([batch]).select(list(_READ[:-1])))
    if not parts:
        return _no_frames()
    table = pa.concat_tables(parts, promote_options="permissive").combine_chunks()
    table = table.append_column("row", pa.array(np.arange(table.num_rows, dtype=np.int64)))
    first = table.group_by("frame_id", use_threads=False).aggregate([("row", "min")])
    table = table.take(pa.array(np.sort(first.column("row_min").to_numpy())))
    table = table.filter(pc.is_valid(table.column("pdq")))
    if table.num_rows == 0:
        return _no_frames()
    quality = table.column("pdq_quality")
    if quality.null_count or (
        table.num_rows and (pc.min(quality).as_py() < 0 or pc.max(quality).as_py() > 100)
    ):
        raise StoreError("a stored PDQ hash with a quality outside 0-100")
    streams = pc.dictionary_encode(pc.cast(table.column("stream_id"), pa.string()))
    streams = streams.combine_chunks() if isinstance(streams, pa.ChunkedArray) else streams
    names = streams.dictionary.to_pylist()  # stream ids, then their codes in id order
    rank = np.empty(len(names), np.int64)
    rank[sorted(range(len(names)), key=names.__getitem__)] = np.arange(len(names))
    code = rank[streams.indices.to_numpy(zero_copy_only=False)]
    ts = table.column("ts").to_numpy().astype(np.float64)
    seq, index = (table.column(c).to_numpy().astype(np.int64) for c in ("seq", "frame_index"))
    order = np.lexsort((index, seq, ts, code))  # stable, as the backtest's sort
    code, ts = code[order], ts[order]
    drop = np.zeros(len(ts), bool)
    drop[1:] = (code[1:] == code[:-1]) & (ts[1:] <= ts[:-1])
    order, code, ts = order[~drop], code[~drop], ts[~drop]
    pdq = table.column("pdq").combine_chunks()
    raw = np.frombuffer(pdq.buffers()[1], np.uint8)[pdq.offset * PDQ_BYTES :]
    hashes = raw[: len(pdq) * PDQ_BYTES].reshape(len(pdq), PDQ_BYTES)[order]
    starts = np.flatnonzero(np.concatenate([[len(ts) > 0], code[1:] != code[:-1]]))
    return _Frames(
        ts=ts,
        pdq=np.ascontiguousarray(hashes),
        quality=quality.to_numpy().astype(np.int64)[order],
        starts=starts.astype(np.int64),
    )


def _no_frames() -> _Frames:
    none = np.zeros(0, np.int64)
    return _Frames(np.zeros(0), np.zeros((0, PDQ_BYTES), np.uint8), none, none)


def _bank_rows(policy: HashPolicy, banks: Any) -> npt.NDArray[np.uint8]:
    """The hashes a frame of ``policy`` is matched against, as the bank matcher has them: the
    PDQ entries of its banks (signal ``pdq``) and the distinct good frames of their videos
    (signal ``vpdq``)."""
    rows = [np.zeros((0, PDQ_BYTES), np.uint8)]
    for name in (b for b in policy.banks if b in banks.banks):
        bank = banks.banks[name]
        if "pdq" in policy.signals:
            rows.append(np.asarray(bank.pdq.hashes, np.uint8))
        if "vpdq" in policy.signals:
            video = {f.pdq for e in bank.vpdq for f in e.frames if f.quality >= DEFAULT_MIN_QUALITY}
            if video:
                joined = np.frombuffer(b"".join(sorted(video)), np.uint8)
                rows.append(joined.reshape(-1, PDQ_BYTES))
    return np.concatenate(rows)


def _windows(policy: HashPolicy, banks: Any, frames: _Frames, nearest: _I64) -> _Bool:
    """Which frames a banked video's vPDQ window matches (and no bank entry at distance 0):
    each stream judged with the worker's own judging (the window is a stream's running
    state), the policy at distance 0. None without banked videos or the ``vpdq`` signal."""
    window = np.zeros(len(frames.ts), bool)
    names = [b for b in policy.banks if b in banks.banks]
    if "vpdq" not in policy.signals or not names or len(banks.video) == 0:
        return window
    hashing = importlib.import_module("pipeline.policies.hashing")
    from pipeline.hashes.pdq import PdqHash

    exact = policy.model_copy(update={"max_distance": 0})
    ends = [*frames.starts[1:].tolist(), len(frames.ts)]
    for a, b in zip(frames.starts.tolist(), ends, strict=True):
        hashes = [PdqHash(frames.pdq[i].tobytes(), int(frames.quality[i])) for i in range(a, b)]
        at0 = hashing.judge_frames([exact], hashes, frames.ts[a:b].tolist(), banks, windows={})
        for k, decisions in enumerate(at0.decisions):
            window[a + k] = any(d.passed for d in decisions) and nearest[a + k] != 0
    return window
