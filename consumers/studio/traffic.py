"""Stored traffic under one policy version, kept in memory for Tune: every label's score on
every stored frame, so that moving a threshold tells at once how many stored frames it would
pass and how many incidents the store backtest would raise on past traffic.

One pass over the store, row group by row group, reads the few columns needed (stream, time,
place, weights, the policy set in force; never the thumbnails) with each frame's cosines with
the policy's prompt rows, as the backtest reads them
(:func:`pipeline.store.filescan.scan_cosines`): from the store's cosine cache where it has them,
else from the float16 embeddings (one matrix product), then kept in the cache with those of the
rows of the policy sets stored with the frames, so the backtest that follows (and the next
policy, and the next pass once the store has grown) reads 4 bytes a frame and row instead of
the embeddings. Only the scores are kept: a few bytes a frame and label. Frames are put
in stream and time order as the backtest orders them (replays dropped, a stream's frames whose
time does not advance dropped, the tiles of a frame merged: the best tile's score, passing when
any tile passes), so :meth:`LabelTraffic.count` runs the policy's temporal rule over every
stream with the store's own kernel (:func:`pipeline.store.temporal.find_incidents`) and gives
the backtest's incident count at any threshold (``tests/test_studio_traffic.py`` holds it equal
to :func:`pipeline.store.backtest` run on the policy edited to that threshold).

A :class:`TrafficScores` is made per policy version, model, weights and store contents
(:class:`TrafficCache` keeps the last few); ``pipeline.store`` is used through the studio's
:class:`~consumers.studio.store_link.StoreLink`, imported by name.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from pipeline.errors import ClipguardError, ConfigError
from pipeline.policies.schema import Temporal
from pipeline.policies.snapshot import PolicySet

__all__ = [
    "CACHED_POLICIES",
    "Count",
    "LabelTraffic",
    "TrafficCache",
    "TrafficScores",
    "order_of",
]

#: Policy versions whose stored-traffic scores are kept (about 50 MB each at 1 M frames).
CACHED_POLICIES: Final = 4
_COLUMNS: Final = ("stream_id", "ts", "seq", "frame_index", "tile", "policy_set")
_COUNTS_KEPT: Final = 512  # thresholds remembered per label

_F32 = npt.NDArray[np.float32]
_I64 = npt.NDArray[np.int64]
_Bool = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class Count:
    """What a threshold would do on the stored traffic."""

    threshold: float
    frames: int  # stored frames that reach it (and pass the margin rule)
    total: int  # stored frames judged (replays dropped, tiles merged)
    incidents: int  # incidents the temporal rule opens over every stored stream
    seconds: float  # how long counting took


@dataclass(frozen=True, eq=False)
class _Order:
    rows: _I64  # (R,) rows as read, in stream, time and place order, replays dropped
    frame_start: _I64 | None  # (F,) first row of each frame; None when no frame is tiled
    ts: npt.NDArray[np.float64]  # (F,)
    layout: Any  # pipeline.store.temporal.StreamLayout of the F frames
    stream: _I64  # (F,) each frame's stream code (sorted: a stream's frames are together)


class LabelTraffic:
    """One label's scores on the stored frames (built by :class:`TrafficScores`)."""

    def __init__(
        self, key: str, rule: Temporal, score: _F32, margin_ok: _Bool, order: _Order, kernel: Any
    ) -> None:
        self.key = key
        self.rule = rule
        self.order = order
        self.score = score  # (R,) per ordered row
        self.margin_ok = margin_ok  # (R,)
        self._find = kernel
        if order.frame_start is None:
            self.frame_score = score
        else:
            self.frame_score = np.maximum.reduceat(score, order.frame_start)  # (F,)
        self._counts: OrderedDict[float, Count] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def frames(self) -> int:
        return int(self.frame_score.shape[0])

    def sample(self, most: int) -> list[float]:
        """An even sample of at most ``most`` frame scores, sorted (Tune's histogram)."""
        step = max(1, -(-self.frames // most))
        return sorted(float(v) for v in self.frame_score[::step])

    def span(self, stream: int, start: float, end: float, most: int) -> list[tuple[float, bool]]:
        """The frames of stream code ``stream`` from ``start`` to ``end`` (stream time, both
        included; at most ``most``, evenly spread): each as (score, passes the margin rule)
        such that the frame passes a threshold exactly when the score reaches it and the
        margin rule holds: a tiled frame's best score among its tiles that pass the margin
        rule (any tile passing passes the frame), else its best tile's score."""
        order = self.order
        lo, hi = (int(v) for v in np.searchsorted(order.stream, [stream, stream + 1]))
        a = lo + int(np.searchsorted(order.ts[lo:hi], start, side="left"))
        b = lo + int(np.searchsorted(order.ts[lo:hi], end, side="right"))
        frames = np.arange(a, b)[:: max(1, -(-(b - a) // most))]
        if order.frame_start is None:
            rows = [np.array([f]) for f in frames.tolist()]
        else:
            starts, last = order.frame_start, len(order.frame_start) - 1
            rows = [
                np.arange(starts[f], starts[f + 1] if f < last else len(self.score))
                for f in frames.tolist()
            ]
        out = []
        for f, r in zip(frames.tolist(), rows, strict=True):
            ok = self.margin_ok[r]
            if ok.any():
                out.append((float(self.score[r][ok].max()), True))
            else:
                out.append((float(self.frame_score[f]), False))
        return out

    def count(self, threshold: float) -> Count:
        """Frames reaching ``threshold`` and the incidents the rule opens with it."""
        if not np.isfinite(threshold):
            raise ConfigError("the threshold must be a finite number")
        with self._lock:
            if threshold in self._counts:
                self._counts.move_to_end(threshold)
                return self._counts[threshold]
        started = time.perf_counter()
        passed = (self.score >= np.float32(threshold)) & self.margin_ok  # (R,)
        if self.order.frame_start is not None:
            passed = np.logical_or.reduceat(passed, self.order.frame_start)  # (F,)
        found = self._find(self.order.ts, passed, self.frame_score, self.rule, self.order.layout)
        count = Count(
            threshold=threshold,
            frames=int(np.count_nonzero(passed)),
            total=self.frames,
            incidents=len(found),
            seconds=time.perf_counter() - started,
        )
        with self._lock:
            self._counts[threshold] = count
            while len(self._counts) > _COUNTS_KEPT:
                self._counts.popitem(last=False)
        return count


class TrafficScores:
    """Every label of one policy set on the stored frames of one model and weights."""

    def __init__(
        self,
        labels: dict[str, LabelTraffic],
        frames: int,
        seconds: float,
        streams: dict[str, int] | None = None,
    ) -> None:
        self.labels = labels
        self.frames = frames
        self.seconds = seconds  # how long the pass over the store took
        self.streams = streams or {}  # stream id -> code

    def span(
        self, key: str, stream_id: str, start: float, end: float, most: int
    ) -> list[tuple[float, bool]]:
        """Label ``key``'s points on the stored frames of ``stream_id`` from ``start`` to
        ``end`` (:meth:`LabelTraffic.span`); none when the stream has no stored frame."""
        code = self.streams.get(stream_id)
        if code is None or key not in self.labels:
            return []
        return self.labels[key].span(code, start, end, most)

    @classmethod
    def compute(
        cls,
        store: Any,
        module: Any,
        policies: PolicySet,
        *,
        model: str,
        weights_sha256: str,
        progress: Callable[[int], None] | None = None,
    ) -> TrafficScores:
        """One pass over the stored frames of ``model`` scored with ``weights_sha256``
        (``progress`` is told the rows read so far, batch by batch)."""
        started = time.perf_counter()
        compiled = policies.compiled
        labels = compiled.labels
        names: dict[str, int] = {}
        streams, times, places, scores, margins = [], [], [], [], []
        read = 0
        registry = module.RowRegistry(compiled.matrix.shape[1])
        edited = registry.add(compiled.matrix)  # (rows,) registry columns of the policy's rows
        baseline = _BaselineRows(store, model, registry)
        with module.CosineKernel() as kernel:
            for group in module.scan_cosines(
                store,
                module.FrameFilter(model=model),
                _COLUMNS,
                weights=weights_sha256,
                registry=registry,
                prepare=lambda batch: (baseline.needed(batch, edited), None),
                kernel=kernel,
                cache=module.CosineCache.beside(store.location),
            ):
                read += group.read
                if progress is not None:
                    progress(read)
                batch = group.table
                if batch.num_rows == 0:
                    continue
                # the backtest's own scoring of the backtest's cosines (computed by the store's
                # kernel, or read from its cosine cache), no softmax unless a rule judges it
                judged = compiled.evaluate_cosines(group.cosines[:, edited], probability=False)
                streams.append(_codes(batch.column(0), names))
                times.append(batch.column(1).to_numpy().astype(np.float64))
                places.append(
                    np.stack(
                        [batch.column(i).to_numpy().astype(np.int64) for i in (2, 3, 4)], axis=1
                    )
                )  # 3 x (B,) -> (B, 3)
                scores.append(judged.score)  # (B, L)
                ok = np.ones(judged.margin.shape, dtype=bool)  # (B, L)
                for j, lab in enumerate(labels):
                    if lab.margin is not None:
                        ok[:, j] = judged.margin[:, j] >= lab.margin
                margins.append(ok)
        if not streams:
            empty = np.zeros(0, np.int64)
            order = _Order(empty, None, np.zeros(0), module.StreamLayout.of([], 0), empty)
            score = np.zeros((0, len(labels)), np.float32)
            margin = np.zeros((0, len(labels)), bool)
        else:
            order = _order(
                np.concatenate(streams), np.concatenate(times), np.concatenate(places), module
            )
            score = np.concatenate(scores)[order.rows]  # (R, L)
            margin = np.concatenate(margins)[order.rows]  # (R, L)
        out = {
            lab.key: LabelTraffic(
                lab.key,
                policies.rules[lab.policy][0],
                np.ascontiguousarray(score[:, j]),
                np.ascontiguousarray(margin[:, j]),
                order,
                module.find_incidents,
            )
            for j, lab in enumerate(labels)
        }
        return cls(out, len(order.ts), time.perf_counter() - started, names)


class TrafficCache:
    """The last :data:`CACHED_POLICIES` policy versions' :class:`TrafficScores`; a policy
    version asked for by two requests at once is computed once."""

    def __init__(self) -> None:
        self._kept: OrderedDict[tuple[Any, ...], TrafficScores] = OrderedDict()
        self._lock = threading.Lock()
        self._computing: dict[tuple[Any, ...], threading.Lock] = {}
        self.made = 0  # passes over the store so far

    def peek(self, key: tuple[Any, ...]) -> TrafficScores | None:
        """The scores under ``key`` when they are made, else None (nothing is computed)."""
        with self._lock:
            return self._kept.get(key)

    def get(self, key: tuple[Any, ...], make: Any) -> TrafficScores:
        """The scores under ``key`` (policy set id, model, weights, store stamp), made with
        ``make()`` the first time."""
        with self._lock:
            if key in self._kept:
                self._kept.move_to_end(key)
                return self._kept[key]
            lock = self._computing.setdefault(key, threading.Lock())
        with lock:
            with self._lock:
                if key in self._kept:
                    return self._kept[key]
            made: TrafficScores = make()
            with self._lock:
                self.made += 1
                self._kept[key] = made
                self._computing.pop(key, None)
                while len(self._kept) > CACHED_POLICIES:
                    self._kept.popitem(last=False)
            return made


def order_of(
    ts: npt.NDArray[np.float64],
    stream: _I64,
    starts: _I64,
    frame_start: _I64 | None,
    module: Any,
) -> _Order:
    """The frame order of kept arrays (:mod:`consumers.studio.kept`), checked: ``ValueError``
    when they do not fit together."""
    frames = len(ts)
    if ts.dtype != np.float64 or stream.dtype != np.int64 or len(stream) != frames:
        raise ValueError("frame times and streams of the wrong type or length")
    if frame_start is not None and (
        frame_start.dtype != np.int64
        or len(frame_start) != frames
        or (frames and frame_start[0] != 0)
        or np.any(np.diff(frame_start) <= 0)
    ):
        raise ValueError("frame starts that do not increase from 0")
    if np.any(np.diff(stream) < 0) or (frames and stream.min() < 0):
        raise ValueError("stream codes out of order")
    layout = module.StreamLayout.of(starts.astype(np.int64), frames)
    return _Order(np.zeros(0, np.int64), frame_start, ts, layout, stream)


class _BaselineRows:
    """The prompt rows of the policy sets stored with the frames, registered as they are met,
    so that the pass asks for their cosines too: the store's cosine cache then holds every row
    the backtest of the same frames reads (edited set and stored sets), and the backtest that
    follows reads 4 bytes a frame and row instead of the embeddings. A stored set that cannot
    be read is left out here (the backtest says what is wrong with it)."""

    def __init__(self, store: Any, model: str, registry: Any) -> None:
        self.store, self.model, self.registry = store, model, registry
        self._columns: dict[str, _I64] = {}  # set id -> its rows' registry columns

    def needed(self, batch: pa.RecordBatch, edited: _I64) -> _I64:
        """Registry columns whose cosines ``batch``'s frames need (reading thread)."""
        column = batch.column(5)
        if not isinstance(column, pa.DictionaryArray):
            column = column.dictionary_encode()
        wanted = [edited]
        for set_id in column.dictionary.to_pylist():
            if set_id is None:
                continue
            if set_id not in self._columns:
                self._columns[set_id] = self._register(set_id)
            wanted.append(self._columns[set_id])
        return np.unique(np.concatenate(wanted))

    def _register(self, set_id: str) -> _I64:
        try:
            stored = self.store.policy_set(set_id)
            if stored is None or stored.model != self.model:
                return np.zeros(0, np.int64)
            return np.asarray(self.registry.add(stored.policies.compiled.matrix), np.int64)
        except ClipguardError:
            return np.zeros(0, np.int64)


def _codes(column: pa.Array, names: dict[str, int]) -> _I64:
    """Stream codes (in ``names``, extended on sight) of a string or dictionary column."""
    if not isinstance(column, pa.DictionaryArray):
        column = column.dictionary_encode()
    lookup = np.asarray(
        [names.setdefault(v, len(names)) for v in column.dictionary.to_pylist()], dtype=np.int64
    )
    codes: _I64 = lookup[column.indices.to_numpy(zero_copy_only=False)]
    return codes


def _place_keys(place: _I64) -> tuple[_I64, ...]:
    """The sort keys of (seq, frame index, tile), least significant first: one packed key
    when they fit in 39, 12 and 12 bits (a sort pass over a million rows instead of three),
    else the three columns."""
    if len(place) and place.min() >= 0:
        top = place.max(axis=0)
        if top[0] < 1 << 39 and top[1] < 1 << 12 and top[2] < 1 << 12:
            return ((place[:, 0] << 24) | (place[:, 1] << 12) | place[:, 2],)
    return place[:, 2], place[:, 1], place[:, 0]


def _order(stream: _I64, ts: npt.NDArray[np.float64], place: _I64, module: Any) -> _Order:
    """Rows in stream, time and place order; replays dropped (the same stream, segment, frame
    index and tile as the row before); frames grouped; a stream's frames whose time does not
    pass the frame before dropped, as the live tracker ignores them."""
    order = np.lexsort((*_place_keys(place), ts, stream))
    s, t, p = stream[order], ts[order], place[order]
    same = s[1:] == s[:-1]
    dup = np.concatenate([[False], same & np.all(p[1:] == p[:-1], axis=1)])
    if dup.any():
        order, s, t, p = order[~dup], s[~dup], t[~dup], p[~dup]
    new_frame = np.ones(len(order), bool)
    new_frame[1:] = (s[1:] != s[:-1]) | np.any(p[1:, :2] != p[:-1, :2], axis=1)
    starts = np.flatnonzero(new_frame)
    fs, ft = s[starts], t[starts]
    stale = np.zeros(len(starts), bool)
    stale[1:] = (fs[1:] == fs[:-1]) & (ft[1:] <= ft[:-1])
    if stale.any():
        keep_rows = ~stale[np.cumsum(new_frame) - 1]
        order, new_frame = order[keep_rows], new_frame[keep_rows]
        starts = np.flatnonzero(new_frame)
        fs, ft = fs[~stale], ft[~stale]
    stream_starts = np.flatnonzero(np.concatenate([[True], fs[1:] != fs[:-1]]))
    return _Order(
        rows=order,
        frame_start=None if len(starts) == len(order) else starts,
        ts=ft,
        layout=module.StreamLayout.of(stream_starts, len(fs)),
        stream=fs,
    )
