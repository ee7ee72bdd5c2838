"""Backtesting a policy edit on stored traffic: re-score, temporal rules, diff.

:func:`backtest` answers "what would this policy set have flagged in these stored frames, and
how does that differ from what was in force?" without decoding anything:

1. **Frames.** The stored frames of one model and weights (frames of other weights are
   counted and left out; none at all is refused), a few columns straight from Parquet.
2. **Re-score.** Row group by row group (:func:`pipeline.store.filescan.scan_cosines`), the
   cosines of the frames with the distinct prompt rows of the edited set and of the sets
   stored with the frames (or ``against``): from the cosine cache beside the store where it
   has them (:mod:`pipeline.store.cosinecache`: a re-run with edited thresholds reads 4
   bytes a frame and row instead of the embeddings), else from the float16 embeddings
   (:func:`pipeline.store.halfs.half_cosines`, which gives a frame the same cosines in any
   batch). Each frame is scored with the edited set and with the snapshot of the policy set
   in force when it was stored (or ``against``); a label both read alike is scored once and
   only its pass differs. A frame whose score reaches no cutoff in either set passes no
   label (a margin rule only takes passes away) and is the peak of no incident, so its
   margins and top prompt are never read: only the labels' own rows (and a softmax label's
   negatives) are multiplied for every frame, the negatives and prompts only for the few
   frames that reach a cutoff (a first backtest multiplied all 38 rows of the demo layout
   for every frame; now 2, and 36 for about one frame in twenty). With ``write_behind``,
   the cache gets every row's cosines for the whole row group after the answer, on its
   writer thread. Embeddings are not kept.
3. **Order.** Rows are put in stream and timestamp order, replays dropped (one row per stream,
   segment, frame index and tile), the tiles of a frame merged as the judge merges them (the
   best tile's score; passing when any tile passes), and frames whose time does not advance
   dropped, as the live tracker ignores them.
4. **Temporal rules.** Each label's rule runs over all streams at once
   (:func:`pipeline.store.temporal.find_incidents`): the incidents the live judge would have
   published, with the same event ids (stream, policy, version, label, start).
5. **Diff.** Per label: incidents added (no baseline incident of the stream overlaps them),
   removed (no new one overlaps them), changed (overlapping, other start or end), unchanged;
   passing frames before and after; score histograms.

Scores come from the stored float16 embeddings: a frame scored within about 1e-3 of its cutoff
may fall the other way than it did live.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from pipeline.errors import StoreError
from pipeline.policies.schema import Temporal
from pipeline.policies.score import CompiledLabel, CompiledPolicies
from pipeline.policies.snapshot import PolicySet
from pipeline.store.cosinecache import CosineCache
from pipeline.store.cosines import CosineKernel
from pipeline.store.eventids import EventIds
from pipeline.store.filescan import Needed, RowRegistry, ScannedGroup, scan_cosines
from pipeline.store.query import FrameFilter, FrameStore
from pipeline.store.results import (
    HISTOGRAM_BINS,
    BacktestResult,
    Incident,
    LabelDiff,
    fill_diffs,
)
from pipeline.store.temporal import StreamLayout, find_incidents

__all__ = ["HISTOGRAM_BINS", "BacktestResult", "Incident", "LabelDiff", "backtest"]

_COLUMNS: Final = (
    "stream_id",
    "ts",
    "seq",
    "frame_index",
    "tile",
    "weights_sha256",
    "policy_set",
)  # the embeddings are read by scan_cosines, and only where the cosine cache misses
_F32 = npt.NDArray[np.float32]
_F64 = npt.NDArray[np.float64]
_I64 = npt.NDArray[np.int64]
_Bool = npt.NDArray[np.bool_]


# --------------------------------------------------------------------------------------------


def backtest(
    policies: PolicySet,
    store: FrameStore,
    *,
    model: str,
    weights_sha256: str,
    flt: FrameFilter | None = None,
    against: PolicySet | None = None,
    progress: Callable[[int], None] | None = None,
    cache: CosineCache | bool = True,
    write_behind: bool = False,
) -> BacktestResult:
    """Re-score with ``policies`` the frames of ``model`` under weights ``weights_sha256``
    that ``flt`` keeps, find their incidents, and compare with ``against`` or, by default,
    the policy sets stored with the frames. :class:`StoreError` when the store holds no such
    frames, a policy names another model, the embeddings do not fit the compiled matrix, or a
    stored set's snapshot is missing (then pass ``against``). ``progress`` is told the number
    of stored rows read so far, batch by batch. ``cache``: the cosine cache to read and fill
    (True: the store's own, for a local store; False: none; see
    :mod:`pipeline.store.cosinecache`). ``write_behind``: fill it on the cache's writer
    thread once the result is made (:meth:`CosineCache.put_behind`), so a first backtest
    answers as soon as an uncached one would; the process ends once it is written."""
    started = time.perf_counter()
    flt = FrameFilter(
        model=model,
        since=flt.since if flt else None,
        until=flt.until if flt else None,
        streams=flt.streams if flt else (),
    )
    _check_model(policies, model, "policy")
    if against is not None:
        _check_model(against, model, "--against policy")
    cosines = CosineCache.beside(store.location) if cache is True else cache or None
    collecting = gc.isenabled()
    gc.disable()  # a run makes millions of arrays and thousands of incidents, no cycles
    try:
        with CosineKernel() as kernel:
            scan = _Scan(kernel, cosines, progress, write_behind)
            read = _read(store, flt, weights_sha256, policies, against, scan)
        return _judged(policies, read, flt, model, weights_sha256, started)
    finally:
        if collecting:
            gc.enable()
        if cosines is not None and write_behind:  # a failed run too: the writer must end
            cosines.flush(wait=False)  # and trims the folder when it is done


def _judged(
    policies: PolicySet,
    read: _Read,
    flt: FrameFilter,
    model: str,
    weights_sha256: str,
    started: float,
) -> BacktestResult:
    """The temporal rules and the diff over what :func:`_read` scored."""
    frames = _order(read)
    new = {
        lab.key: _LabelArrays.of(read.new[lab.key], frames, read.sizes)
        for lab in policies.compiled.labels
    }
    old = {key: _LabelArrays.of(parts, frames, read.sizes) for key, parts in read.old.items()}
    names = list(read.names)
    new_found = [
        i
        for lab in policies.compiled.labels
        for i in _incidents(lab, policies.rules[lab.policy][0], new[lab.key], frames, names)
    ]
    old_found = [
        i
        for key, arrays in old.items()
        for i in _baseline_incidents(key, arrays, read.sets, frames, names)
    ]
    labels = _diff(policies, read.sets, new, old, new_found, old_found)
    return BacktestResult(
        model=model,
        weights_sha256=weights_sha256,
        policy_set=policies.id,
        baseline=[s.id for s in read.sets],
        since=flt.since,
        until=flt.until,
        streams=names,
        rows=read.rows,
        other_weights=read.other_weights,
        frames=frames.count,
        incidents=_in_order(new_found),
        baseline_incidents=_in_order(old_found),
        labels=labels,
        seconds=time.perf_counter() - started,
        stream_spans=_stream_spans(frames, names),
    )


def _check_model(policies: PolicySet, model: str, what: str) -> None:
    from pipeline.models.loading import model_identity

    for lp in policies:
        named = lp.policy.model
        if named is not None and named != model and model_identity(named) != model:
            raise StoreError(
                f"{what} {lp.policy.id} is written for model {named}, the stored frames are "
                f"of {model}: one model's scores mean nothing for another"
            )


def _stream_spans(frames: _Order, names: Sequence[str]) -> dict[str, tuple[float, float]]:
    """Stream id -> the time of its first and last judged frame."""
    if frames.count == 0:
        return {}
    change = np.flatnonzero(frames.stream[1:] != frames.stream[:-1]) + 1
    first = np.concatenate([[0], change])
    last = np.concatenate([change, [frames.count]]) - 1
    return {
        names[int(frames.stream[a])]: (float(frames.ts[a]), float(frames.ts[b]))
        for a, b in zip(first.tolist(), last.tolist(), strict=True)
    }


def _in_order(found: list[Incident]) -> list[Incident]:
    return sorted(found, key=lambda i: (i.stream_id, i.start_ts, i.key))


# --------------------------------------------------------------------------------------------
# reading and scoring


@dataclass
class _Parts:
    """One label's per-row arrays, batch by batch (None: the batch's sets lack the label)."""

    score: list[_F32 | None] = field(default_factory=list)
    margin: list[_F32 | None] = field(default_factory=list)
    passed: list[_Bool | None] = field(default_factory=list)
    top: list[npt.NDArray[np.intp] | None] = field(default_factory=list)
    origin: list[_I64 | None] = field(default_factory=list)  # which set scored the row

    def pad(self, batches: int) -> None:
        """Extend every list with None up to ``batches`` entries."""
        for column in (self.score, self.margin, self.passed, self.top, self.origin):
            column.extend([None] * (batches - len(column)))


@dataclass
class _Read:
    names: dict[str, int] = field(default_factory=dict)  # stream id -> code
    stream: list[_I64] = field(default_factory=list)
    ts: list[_F64] = field(default_factory=list)
    place: list[_I64] = field(default_factory=list)  # (3, B) seq, frame_index, tile
    sizes: list[int] = field(default_factory=list)
    new: dict[str, _Parts] = field(default_factory=dict)
    old: dict[str, _Parts] = field(default_factory=dict)
    sets: list[PolicySet] = field(default_factory=list)  # the baseline sets
    rows: int = 0
    other_weights: int = 0


def _read(
    store: FrameStore,
    flt: FrameFilter,
    weights: str,
    policies: PolicySet,
    against: PolicySet | None,
    scan: _Scan,
) -> _Read:
    out = _Read()
    out.new = {lab.key: _Parts() for lab in policies.compiled.labels}
    if against is not None:
        out.sets.append(against)
    registry = RowRegistry(policies.compiled.matrix.shape[1])
    edited = _remapped(policies.compiled, registry.add(policies.compiled.matrix))
    wanted = _rows_of(edited)
    set_index: dict[str, int] = {}
    scorers: list[CompiledPolicies] = []  # per baseline set, its rows as registry columns

    def prepare(batch: pa.RecordBatch) -> tuple[Needed, _I64]:
        """(in the reading thread) the stored sets of these rows, their rows registered."""
        if against is not None:
            codes = np.zeros(batch.num_rows, np.int64)
        else:
            codes = _set_codes(batch.column(6), set_index, out.sets, store, flt)
        for s in out.sets[len(scorers) :]:
            scorers.append(_remapped(s.compiled, registry.add(s.compiled.matrix)))
        rows = [wanted, *(_rows_of(scorers[int(c)]) for c in np.unique(codes))]
        every = np.unique(np.concatenate([r[0] for r in rows]))
        return Needed(every, np.unique(np.concatenate([r[1] for r in rows]))), codes

    for group in scan_cosines(
        store,
        flt,
        _COLUMNS,
        weights=weights,
        registry=registry,
        prepare=prepare,
        kernel=scan.kernel,
        cache=scan.cache,
        write_behind=scan.write_behind,
    ):
        out.rows += group.read
        out.other_weights += group.other_weights
        if scan.progress is not None:
            scan.progress(out.rows)
        batch = group.table
        if batch.num_rows == 0:
            continue
        out.stream.append(_codes(batch.column(0), out.names))
        out.ts.append(np.asarray(batch.column(1).to_numpy(), dtype=np.float64))
        place = [np.asarray(batch.column(i).to_numpy(), dtype=np.int64) for i in (2, 3, 4)]
        out.place.append(np.stack(place))  # 3 x (B,) -> (3, B): each a contiguous row
        out.sizes.append(batch.num_rows)
        _score_group(out, group, edited, scorers, policies.compiled.labels)
    if not out.sizes:
        raise StoreError(_nothing(store, flt, weights, out.other_weights))
    return out


def _score_group(
    out: _Read,
    group: ScannedGroup,
    edited: CompiledPolicies,
    scorers: Sequence[CompiledPolicies],
    labels: Sequence[CompiledLabel],
) -> None:
    """Score the last batch's rows with the edited set and each with its baseline set: the
    scores of every row, then margins, passes and top prompts of the rows where some label's
    score reaches its cutoff in either set (no other row passes: a margin rule only takes
    passes away; an incident's peak is a passing frame's best tile, which reaches it), their
    cosines completed for that (:meth:`ScannedGroup.complete`). Other rows keep a NaN
    margin and top prompt 0, never read."""
    c, codes = group.cosines, group.extra
    shared: dict[tuple[Any, ...], Any] = {}  # arrays of labels both sets score alike
    scores = edited.evaluate_cosines(c, probability=False, shared=shared, details=False)
    for j, lab in enumerate(labels):
        p = out.new[lab.key]
        p.score.append(scores.score[:, j])
        p.margin.append(scores.margin[:, j])
        p.passed.append(scores.passed[:, j])
        p.top.append(scores.top_prompt[:, j])
        p.origin.append(None)
    reach = np.any(scores.passed, axis=1)  # the cutoff reached, the margin rule not applied
    reach |= _score_baseline(out, c, codes, scorers, shared)
    at = np.flatnonzero(reach)
    if len(at) == 0:
        return
    full = group.complete(at)
    detail = edited.evaluate_cosines(full, probability=False)
    for j, lab in enumerate(labels):
        p = out.new[lab.key]
        for column, values in (
            (p.margin, detail.margin[:, j]),
            (p.passed, detail.passed[:, j]),
            (p.top, detail.top_prompt[:, j]),
        ):
            _put(column[-1], at, values)
    _score_baseline(out, full, codes[at], scorers, {}, at=at)


def _put(target: Any, at: npt.NDArray[np.intp], values: Any) -> None:
    assert target is not None
    target[at] = values


@dataclass(frozen=True)
class _Scan:
    """How a backtest reads: the kernel, the cosine cache (None: none), the progress hook,
    whether the cache is written behind."""

    kernel: CosineKernel
    cache: CosineCache | None
    progress: Callable[[int], None] | None
    write_behind: bool = False


def _rows_of(compiled: CompiledPolicies) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """The matrix rows the labels of ``compiled`` read for every frame (a label's row, and
    its negatives where its score reads them: a softmax) and those they read only for the
    frames that reach a cutoff (negatives: a margin, the margin rule; prompts: the top
    prompt)."""
    every: set[int] = set()
    some: set[int] = set()
    for lab in compiled.labels:
        every.add(lab.row)
        (every if lab.kind == "softmax" else some).update(lab.negative_rows)
        some.update(lab.prompt_rows)
    return np.asarray(sorted(every), np.intp), np.asarray(sorted(some - every), np.intp)


def _remapped(compiled: CompiledPolicies, columns: npt.NDArray[np.intp]) -> CompiledPolicies:
    """``compiled`` with its labels reading the registry columns of their rows, so every set
    is scored from one array of the distinct rows' cosines (rows that several sets share,
    as an edit that changes only thresholds shares all, are multiplied once)."""

    def moved(rows: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(int(columns[r]) for r in rows)

    labels = tuple(
        replace(
            lab,
            row=int(columns[lab.row]),
            negative_rows=moved(lab.negative_rows),
            prompt_rows=moved(lab.prompt_rows),
        )
        for lab in compiled.labels
    )
    return replace(compiled, labels=labels)


def _score_baseline(
    out: _Read,
    c: _F32,
    codes: _I64,
    scorers: Sequence[CompiledPolicies],
    shared: dict[tuple[Any, ...], Any],
    at: npt.NDArray[np.intp] | None = None,
) -> _Bool:
    """Score the last batch's rows, each with the set in force for it (``codes``: index in
    ``out.sets``; ``c`` the batch's cosines with the registry's rows; ``shared``: what the
    edited set's scoring of ``c`` left to share); labels a row's set lacks stay NaN and not
    passing. Scores only (``evaluate_cosines`` without details), or with ``at``: ``c`` holds
    only these rows' completed cosines, of which margins, passes and top prompts are filled
    in. Per row, whether some label's score reached its cutoff."""
    batch, size = len(out.sizes) - 1, out.sizes[-1]
    reach = np.zeros(len(c), bool)
    for code in np.unique(codes):
        rows = np.flatnonzero(codes == code)
        s = out.sets[int(code)]
        whole = len(rows) == len(c)
        scores = scorers[int(code)].evaluate_cosines(
            c if whole else c[rows],
            probability=False,
            shared=shared if whole else None,
            details=at is not None,
        )
        if at is not None:
            for j, lab in enumerate(s.compiled.labels):
                p = out.old[lab.key]
                _put(p.margin[batch], at[rows], scores.margin[:, j])
                _put(p.passed[batch], at[rows], scores.passed[:, j])
                _put(p.top[batch], at[rows], scores.top_prompt[:, j])
            continue
        reach[rows] = np.any(scores.passed, axis=1)
        for j, lab in enumerate(s.compiled.labels):
            p = out.old.setdefault(lab.key, _Parts())
            p.pad(batch + 1)
            if p.score[batch] is None:
                p.score[batch] = np.full(size, np.nan, np.float32)
                p.margin[batch] = np.full(size, np.nan, np.float32)
                p.passed[batch] = np.zeros(size, bool)
                p.top[batch] = np.zeros(size, np.intp)
                p.origin[batch] = np.full(size, -1, np.int64)
            for column, values in (
                (p.score, scores.score[:, j]),
                (p.margin, scores.margin[:, j]),
                (p.passed, scores.passed[:, j]),
                (p.top, scores.top_prompt[:, j]),
                (p.origin, int(code)),
            ):
                target = column[batch]
                assert target is not None
                target[rows] = values
    return reach


def _nothing(store: FrameStore, flt: FrameFilter, weights: str, other: int) -> str:
    if other:
        return (
            f"refused: the {other} stored frames of {flt.model} in this range were scored "
            f"with other weights than {weights[:16]}...; backtest with the weights that "
            "scored them"
        )
    models = ", ".join(store.models()) or "none"
    return (
        f"refused: the store holds no frames of model {flt.model} in this range "
        f"(models stored: {models}); a policy is backtested on frames of its own model"
    )


def _codes(column: pa.Array, names: dict[str, int]) -> _I64:
    """Codes (in ``names``, extended on sight) of a string or dictionary column's values; a
    dictionary's values no row holds (the rows of other weights left out) are not named."""
    if not isinstance(column, pa.DictionaryArray):
        column = column.dictionary_encode()
    indices = column.indices.to_numpy(zero_copy_only=False)
    held = np.zeros(len(column.dictionary), bool)
    held[indices] = True
    lookup = [
        names.setdefault(v, len(names)) if h else -1
        for v, h in zip(column.dictionary.to_pylist(), held.tolist(), strict=True)
    ]
    codes: _I64 = np.asarray(lookup, dtype=np.int64)[indices]
    return codes


def _set_codes(
    column: pa.Array,
    index: dict[str, int],
    sets: list[PolicySet],
    store: FrameStore,
    flt: FrameFilter,
) -> _I64:
    """Per row, the index in ``sets`` of its stored policy set (snapshots loaded on sight)."""
    if not isinstance(column, pa.DictionaryArray):
        column = column.dictionary_encode()
    lookup = []
    for set_id in column.dictionary.to_pylist():
        if set_id not in index:
            stored = store.policy_set(set_id)
            if stored is None:
                raise StoreError(
                    f"the store keeps no snapshot of policy set {set_id}, in force for some "
                    "of these frames: compare with --against POLICIES"
                )
            if stored.model != flt.model:
                raise StoreError(f"policy set snapshot {set_id} is of model {stored.model}")
            index[set_id] = len(sets)
            sets.append(stored.policies)
        lookup.append(index[set_id])
    table = np.asarray(lookup, dtype=np.int64)
    codes: _I64 = table[column.indices.to_numpy(zero_copy_only=False)]
    return codes


# --------------------------------------------------------------------------------------------
# order, replays, tiles


@dataclass(eq=False)
class _Order:
    """Stored rows in stream and time order, replays dropped, grouped into frames."""

    rows: _I64  # (R,) indices into the rows as read
    place: _I64  # (3, R) seq, frame_index, tile of each
    frame_start: _I64  # (F,) first row (position in ``rows``) of each frame
    ts: _F64  # (F,)
    layout: StreamLayout  # streams of the F frames
    stream: _I64  # (F,) stream code of each frame
    tiled: bool  # some frame has several rows
    identity: bool  # rows == 0..R-1: the rows as read are already in order

    @property
    def count(self) -> int:
        return int(self.ts.shape[0])


def _order(read: _Read) -> _Order:
    stream = np.concatenate(read.stream)
    ts = np.concatenate(read.ts)
    place = np.concatenate(read.place, axis=1)
    # stores written stream by stream are read in order: no sort, no copies then
    identity = bool(np.all(stream[1:] >= stream[:-1]))
    order = np.arange(len(stream)) if identity else np.argsort(stream, kind="stable")
    s, t = (stream, ts) if identity else (stream[order], ts[order])
    same = s[1:] == s[:-1]
    if np.any(same & (t[1:] <= t[:-1])):  # not in time order, or replayed rows: sort fully
        order = np.lexsort((place[2], place[1], place[0], ts, stream))
        identity = False
        s, t = stream[order], ts[order]
        same = s[1:] == s[:-1]
    p = place if identity else place[:, order]
    # a replayed row: the same stream, segment, frame index and tile as the row before
    # (compared a column at a time: contiguous rows of ``p``)
    moved = [p[k, 1:] != p[k, :-1] for k in range(3)]
    frame_moved = moved[0] | moved[1]
    dup = np.concatenate([[False], same & ~(frame_moved | moved[2])])
    if dup.any():
        keep = ~dup
        order, s, t, p = order[keep], s[keep], t[keep], p[:, keep]
        identity = False
        frame_moved = (p[0, 1:] != p[0, :-1]) | (p[1, 1:] != p[1, :-1])
    new_frame = np.ones(len(order), bool)
    new_frame[1:] = (s[1:] != s[:-1]) | frame_moved
    starts = np.flatnonzero(new_frame)
    fs, ft = s[starts], t[starts]
    # the tracker ignores a frame whose time does not advance past the stream's last one
    stale = np.zeros(len(starts), bool)
    stale[1:] = (fs[1:] == fs[:-1]) & (ft[1:] <= ft[:-1])
    if stale.any():
        frame_of_row = np.cumsum(new_frame) - 1
        keep_rows = ~stale[frame_of_row]
        order, s, p = order[keep_rows], s[keep_rows], p[:, keep_rows]
        identity = False
        new_frame = new_frame[keep_rows]
        starts = np.flatnonzero(new_frame)
        fs, ft = fs[~stale], ft[~stale]
    stream_starts: Any = (
        np.flatnonzero(np.concatenate([[True], fs[1:] != fs[:-1]])) if len(fs) else []
    )
    return _Order(
        rows=order,
        place=p,
        frame_start=starts,
        ts=ft,
        layout=StreamLayout.of(stream_starts, len(fs)),
        stream=fs,
        tiled=len(starts) != len(order),
        identity=identity,
    )


@dataclass(eq=False)
class _Column:
    """A per-row column kept as its batches' pieces (None: ``fill`` for that batch), read at
    the few rows incidents need (their peaks and starts) instead of joined whole."""

    pieces: Sequence[Any]
    fill: Any
    dtype: Any
    starts: _I64  # each batch's first row in the rows as read, and the total

    def at(self, rows: _I64) -> Any:
        """The values at ``rows`` (positions in the rows as read)."""
        out = np.full(len(rows), self.fill, self.dtype)
        batch = np.searchsorted(self.starts, rows, side="right") - 1
        for b in np.unique(batch).tolist():
            piece = self.pieces[b]
            if piece is not None:
                hit = batch == b
                out[hit] = piece[rows[hit] - self.starts[b]]
        return out


@dataclass(eq=False)
class _LabelArrays:
    """One label under one set, per frame (tiles merged), and per row as read."""

    score: _F32  # (F,) the best tile's score
    passed: _Bool  # (F,) passing on any tile
    best: _I64  # (F,) the row (position in _Order.rows) of the best tile
    margin: _Column  # float32
    top: _Column  # intp
    origin: _Column  # int64, baseline: the set that scored the row (-1: none had the label)

    @classmethod
    def of(cls, parts: _Parts, order: _Order, sizes: Sequence[int]) -> _LabelArrays:
        parts.pad(len(sizes))
        starts = np.zeros(len(sizes) + 1, np.int64)
        np.cumsum(sizes, out=starts[1:])

        def whole(column: Sequence[Any], fill: Any, dtype: Any) -> Any:
            pieces = [
                np.full(n, fill, dtype) if piece is None else piece
                for piece, n in zip(column, sizes, strict=True)
            ]
            joined = np.concatenate(pieces)
            return joined if order.identity else joined[order.rows]

        score = whole(parts.score, np.nan, np.float32)
        passed = whole(parts.passed, False, bool)
        margin = _Column(parts.margin, np.nan, np.float32, starts)
        top = _Column(parts.top, 0, np.intp, starts)
        origin = _Column(parts.origin, -1, np.int64, starts)
        if not order.tiled:
            best = np.arange(len(score), dtype=np.int64)
            return cls(score, passed, best, margin, top, origin)
        starts = order.frame_start
        ranked = np.where(np.isnan(score), -np.inf, score)
        frame_score = np.maximum.reduceat(ranked, starts)
        frame_passed = np.logical_or.reduceat(passed, starts)
        marks = np.zeros(len(score), bool)
        marks[starts] = True
        frame_of_row = np.cumsum(marks) - 1
        is_best = ranked == frame_score[frame_of_row]
        hit = np.flatnonzero(is_best)
        _, first = np.unique(frame_of_row[hit], return_index=True)
        best = hit[first].astype(np.int64)  # the first best-scoring tile, as the judge keeps
        frame_score = np.where(np.isinf(frame_score), np.nan, frame_score).astype(np.float32)
        return cls(frame_score, frame_passed, best, margin, top, origin)


# --------------------------------------------------------------------------------------------
# incidents


def _incidents(
    lab: CompiledLabel,
    rule: Temporal,
    arrays: _LabelArrays,
    order: _Order,
    names: Sequence[str],
    facts: Mapping[int, CompiledLabel] | None = None,
) -> list[Incident]:
    """The incidents ``rule`` finds for label ``lab``; ``facts`` (baseline) gives, per set,
    the label as that set had it, taken from the set in force at each incident's start.
    Every incident's values are gathered with one array operation each, then made objects."""
    found = find_incidents(order.ts, arrays.passed, arrays.score, rule, order.layout)
    if len(found.start) == 0:
        return []
    peak_rows = arrays.best[found.peak]  # positions in order.rows
    read_rows = peak_rows if order.identity else order.rows[peak_rows]
    margins = arrays.margin.at(read_rows).tolist()
    tops = arrays.top.at(read_rows).tolist()
    places = order.place[:, peak_rows].T.tolist()
    if facts is None:
        known_of = [lab] * len(found.start)
    else:
        start_rows = arrays.best[found.start]
        origins = arrays.origin.at(start_rows if order.identity else order.rows[start_rows])
        known_of = [facts.get(o, lab) for o in origins.tolist()]
    ts = order.ts
    columns = zip(
        known_of,
        order.stream[found.start].tolist(),
        ts[found.start].tolist(),
        ts[found.end].tolist(),
        ts[found.peak].tolist(),
        arrays.score[found.peak].tolist(),
        margins,
        tops,
        places,
        strict=True,
    )
    ids = EventIds()
    out = []
    for known, stream, start_ts, end_ts, peak_ts, score, margin, top, place in columns:
        stream_id = names[stream]
        out.append(
            Incident(
                event_id=ids(stream_id, known.policy, known.version, known.label, start_ts),
                stream_id=stream_id,
                policy=known.policy,
                label=known.label,
                policy_version=known.version,
                severity=known.severity,
                action=known.action,
                mode=known.mode,
                start_ts=start_ts,
                end_ts=end_ts,
                peak_ts=peak_ts,
                peak_score=round(score, 6),
                threshold=known.cutoff,
                margin=None if math.isnan(margin) else round(margin, 6),
                top_prompt=known.prompts[top],
                peak_seq=place[0],
                peak_frame_index=place[1],
                peak_tile=place[2],
            )
        )
    return out


def _baseline_incidents(
    key: str,
    arrays: _LabelArrays,
    sets: Sequence[PolicySet],
    order: _Order,
    names: Sequence[str],
) -> list[Incident]:
    """The baseline's incidents of label ``key``: the rule of the last set that has it, the
    facts (version, severity...) of the set in force at each incident's start."""
    facts: dict[int, CompiledLabel] = {}
    for i, s in enumerate(sets):
        try:
            facts[i] = s.compiled.label(key)
        except KeyError:
            continue
    if not facts:
        return []
    last = max(facts)
    rule = sets[last].rules[facts[last].policy][0]
    return _incidents(facts[last], rule, arrays, order, names, facts)


# --------------------------------------------------------------------------------------------
# the diff


def _diff(
    policies: PolicySet,
    sets: Sequence[PolicySet],
    new: Mapping[str, _LabelArrays],
    old: Mapping[str, _LabelArrays],
    new_found: Sequence[Incident],
    old_found: Sequence[Incident],
) -> dict[str, LabelDiff]:
    out: dict[str, LabelDiff] = {}
    for lab in policies.compiled.labels:
        out[lab.key] = LabelDiff(key=lab.key, mode=lab.mode, kind=lab.kind, cutoff=lab.cutoff)
    for s in sets:
        for lab in s.compiled.labels:
            if lab.key not in out:
                out[lab.key] = LabelDiff(key=lab.key, mode="", kind=lab.kind, cutoff=lab.cutoff)
    fill_diffs(out, new, old, new_found, old_found)
    return out
