"""Stored frames with their cosines, row group by row group: cached cosines where the cache
has them, the embeddings read and multiplied only where it does not.

:func:`scan_cosines` reads a store's Parquet files row group by row group (a row group is the
unit pyarrow decodes; the writer makes them 64k rows). For each one it reads the columns the
caller asks for, keeps the rows the filter and the weights keep, asks the caller which prompt
rows those frames need (a backtest: the edited set's rows and the rows of the sets stored with
them, registered in a :class:`RowRegistry` so each distinct row has one column), and gets their
cosines:

- from the :class:`~pipeline.store.cosinecache.CosineCache`, one entry per row group and
  prompt row, when it has them;
- else from the row group's embeddings (read only then) through the
  :class:`~pipeline.store.cosines.CosineKernel`, the cosines then kept in the cache for the
  whole row group (the next run may filter other rows).

The caller may name some rows as needed only for some frames (:class:`Needed`): without a
cache to fill in the scan, those are computed only for the frames the caller then asks
(:meth:`ScannedGroup.complete`), and a cache written behind
(:meth:`~pipeline.store.cosinecache.CosineCache.put_behind`) computes them for the whole row
group on its writer thread, after the answer, from the embeddings read again.

A thread reads the next row groups' small columns (pyarrow releases the GIL) while the caller
scores this one, and two more decode their embeddings and multiply them with the rows every
frame needs (what the caller's thread would otherwise wait for: 0.6 of the 2 seconds a
first backtest of 2 million frames took), so reading, multiplying and the caller's scoring
overlap on a machine with two cores or more.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.errors import StoreError
from pipeline.store.cosinecache import CosineCache, FileKey, row_key
from pipeline.store.cosines import CosineKernel
from pipeline.store.halfs import half_cosines
from pipeline.store.location import StoredFile
from pipeline.store.query import FrameFilter, FrameStore
from pipeline.store.schema import embeddings_of

__all__ = [
    "Needed",
    "RowRegistry",
    "ScannedGroup",
    "filter_columns",
    "in_filter",
    "prefetched",
    "row_groups",
    "scan_cosines",
]

_F32 = npt.NDArray[np.float32]
_Cols = npt.NDArray[np.intp]
_DICTIONARIES: Final = ("stream_id", "policy_set", "weights_sha256")
_AHEAD: Final = 2  # row groups read ahead of the one being scored
_DECODERS: Final = 2  # threads decoding row groups' embeddings ahead
_DONE: Final = object()


class RowRegistry:
    """Distinct prompt rows (E float32 values each), each with a stable column number and its
    cache key; rows are added from any thread."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.keys: list[str] = []
        self._rows: list[_F32] = []
        self._index: dict[str, int] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.keys)

    def add(self, matrix: npt.ArrayLike) -> _Cols:
        """The column of each row of the (R, E) ``matrix``, rows seen before reusing theirs."""
        rows = np.asarray(matrix, dtype=np.float32)
        if rows.ndim != 2 or rows.shape[1] != self.dim:
            raise StoreError(f"prompt rows of shape {rows.shape} for embeddings of {self.dim}")
        out = np.empty(len(rows), np.intp)
        with self._lock:
            for i, row in enumerate(rows):
                key = row_key(row)
                column = self._index.get(key)
                if column is None:
                    column = self._index[key] = len(self.keys)
                    self.keys.append(key)
                    self._rows.append(np.array(row, dtype=np.float32))
                out[i] = column
        return out

    def matrix(self, columns: Sequence[int]) -> _F32:
        """The (E, len(columns)) matrix of those rows, for a product."""
        return np.ascontiguousarray(self.rows(columns).T)

    def rows(self, columns: Sequence[int]) -> _F32:
        """The (len(columns), E) rows themselves (C-contiguous)."""
        with self._lock:
            picked = [self._rows[c] for c in columns]
        return np.stack(picked) if picked else np.zeros((0, self.dim), np.float32)


@dataclass(frozen=True, eq=False)
class Needed:
    """The registry columns a row group's frames need: ``every`` for every frame (what decides
    their scores and passes), ``some`` only for the frames the caller later names
    (:meth:`ScannedGroup.complete`: what it reports of a few frames, such as an incident's
    margin and top prompt)."""

    every: _Cols
    some: _Cols


@dataclass(eq=False)
class ScannedGroup:
    """One row group's kept rows: the columns asked for, and their cosines."""

    table: pa.RecordBatch
    cosines: _F32  # (rows, registered rows at the time), column-major: the needed columns
    # filled (``pending`` ones only by ``complete``), others NaN
    extra: Any  # what ``prepare`` returned for these rows
    read: int  # rows the filter keeps (before the weights)
    other_weights: int  # of those, rows of other weights (left out)
    pending: list[int] = field(default_factory=list)  # ``some`` columns not computed yet
    _fill: Callable[[npt.NDArray[np.intp], list[int]], _F32] | None = None

    def complete(self, rows: npt.NDArray[np.intp]) -> _F32:
        """The (len(rows), registered) cosines of the kept rows ``rows``, every needed column
        filled (the pending ones computed from these rows' embeddings: the same numbers as
        for the whole group, :func:`pipeline.store.halfs.half_cosines`)."""
        out: _F32 = self.cosines[rows]
        if self.pending and len(rows):
            assert self._fill is not None
            out[:, self.pending] = self._fill(rows, self.pending)
        return out


@dataclass(eq=False)
class _Loaded:
    table: pa.RecordBatch
    extra: Any
    read: int
    other_weights: int
    columns: _Cols  # the needed registry columns
    some: _Cols  # of those, the ones needed only for frames named later (Needed.some)
    rows: npt.NDArray[np.int64] | None  # kept rows' positions in the row group (None: all)
    group_rows: int
    key: FileKey | None
    path: str  # the stored file and row group, to read the embeddings again
    group: int
    found: dict[int, _F32] = field(default_factory=dict)  # column -> cached, whole group
    missing: list[int] = field(default_factory=list)
    emb: npt.NDArray[np.float16] | None = None  # whole group when cached, else kept rows
    decoding: Future[_Decoded] | None = None  # emb (and cosines), being read in a thread
    computed: dict[int, _F32] = field(default_factory=dict)  # column -> cosines of emb's rows

    def arrived(self) -> _Loaded:
        """This group with ``emb`` and ``computed`` where a decoding thread was making them
        (its error, a :class:`StoreError`, raised here)."""
        if self.decoding is not None:
            decoded, self.decoding = self.decoding.result(), None
            self.emb, self.computed = decoded.emb, decoded.cosines
        return self


@dataclass(frozen=True, eq=False)
class _Decoded:
    emb: npt.NDArray[np.float16]
    cosines: dict[int, _F32]  # registry column -> the cosines of each row of emb


Prepare = Callable[[pa.RecordBatch], tuple[Needed | Sequence[int] | _Cols, Any]]


def scan_cosines(
    store: FrameStore,
    flt: FrameFilter,
    columns: Sequence[str],
    *,
    weights: str,
    registry: RowRegistry,
    prepare: Prepare,
    kernel: CosineKernel,
    cache: CosineCache | None,
    write_behind: bool = False,
) -> Iterator[ScannedGroup]:
    """The row groups of the frames ``flt`` keeps and of weights ``weights``, in file order,
    with ``columns`` and the cosines of the registry columns ``prepare`` (called with the kept
    rows' table, in a reading thread) names for them (see the module docstring).
    ``write_behind``: the cache's entries are written by its writer thread
    (:meth:`CosineCache.put_behind`; the caller flushes it once it has answered), the
    ``Needed.some`` columns computed there for the whole group; else they are computed
    whole in the scan where a cache is to be filled."""
    # row group by row group in a reading thread, also uncached: pyarrow's dataset scanner
    # decodes several at once but was measured to take 3 times the CPU time (1.7 s a million
    # frames against 0.6 s), which a 2-core machine does not have to spare
    lazy = write_behind or cache is None
    reader = _Reader(store, flt, columns, weights, registry, prepare, cache, lazy=lazy)
    # an empty cache (a store's first run) misses from the first group on: read ahead at once
    reader.speculate = cache is not None and cache.empty()
    groups = iter(reader)
    try:
        for loaded in groups:
            loaded.arrived()
            if cache is not None and loaded.key is not None:
                _look_up(loaded, registry, cache, store)
                # a group that missed: the next probably will too (a first run), so the
                # reading threads read their embeddings ahead; one that hit: the next
                # probably will too
                reader.speculate = bool(loaded.missing)
            yield _finish(loaded, registry, kernel, cache, store, lazy=lazy)
    finally:  # also when the caller stops early: no thread goes on reading
        groups.close()
        reader.close()
    if cache is not None and not write_behind:
        cache.trim()  # else the writer trims once it is done


def _split(needed: Needed | Sequence[int] | _Cols) -> tuple[_Cols, _Cols]:
    """``prepare``'s answer as the needed columns and those of them only some frames need."""
    if isinstance(needed, Needed):
        every = np.asarray(needed.every, np.intp)
        some = np.setdiff1d(np.asarray(needed.some, np.intp), every).astype(np.intp)
        return np.union1d(every, some).astype(np.intp), some
    return np.asarray(needed, np.intp), np.zeros(0, np.intp)


def _look_up(loaded: _Loaded, registry: RowRegistry, cache: CosineCache, store: FrameStore) -> None:
    """Fill ``loaded.found`` from the cache and ``loaded.missing`` with the rest, and read
    the group's embeddings for those if the reading thread did not. On this thread: the
    cache's many small reads in the reading thread each wait for the GIL behind the scoring
    (measured: the warm run's reading took several times its own CPU time there)."""
    assert loaded.key is not None
    if len(loaded.table) == 0:
        return
    columns = loaded.columns.tolist()
    found = cache.get(loaded.key, [registry.keys[c] for c in columns], loaded.group_rows)
    for column in columns:
        values = found.get(registry.keys[column])
        if values is None:
            loaded.missing.append(column)
        else:
            loaded.found[column] = values
    if loaded.missing and loaded.emb is None:
        loaded.emb = _embeddings(store, loaded.path, loaded.group)


def _embeddings(store: FrameStore, path: str, group: int) -> npt.NDArray[np.float16]:
    """The embeddings of row group ``group`` of the stored file ``path``."""
    location = store.location
    try:
        with location.fs.open_input_file(path) as source:
            column = pq.ParquetFile(source).read_row_group(group, columns=["embedding"])[0]
    except (OSError, pa.ArrowInvalid) as e:
        raise StoreError(f"{location.uri}: cannot read the frames in {path}: {e}") from e
    return embeddings_of(column)


def _finish(
    loaded: _Loaded,
    registry: RowRegistry,
    kernel: CosineKernel,
    cache: CosineCache | None,
    store: FrameStore,
    *,
    lazy: bool,
) -> ScannedGroup:
    """The row group's cosines: computed where missing (and kept), gathered for the kept rows.
    ``lazy``: the ``some`` columns the cache lacks are left pending (computed by
    :meth:`ScannedGroup.complete` for the rows asked, and for the cache on its writer
    thread)."""
    n = loaded.table.num_rows
    # column-major: each row's cosines contiguous, as the scoring reads them (a label's column,
    # its negatives' columns) and as the cache gives them; rows these frames do not need (or
    # pending) are NaN (never read: their sets score none of these frames)
    out = np.full((len(registry), n), np.nan, np.float32).T
    picked = loaded.rows
    for column, values in loaded.found.items():
        out[:, column] = values if picked is None else values[picked]
    later = set(loaded.some.tolist()) if lazy else set()
    now = [c for c in loaded.missing if c not in later]
    pending = [c for c in loaded.missing if c in later]
    emb = loaded.emb
    if loaded.missing:
        assert emb is not None
        if emb.shape[1] != registry.dim:
            raise StoreError(
                f"stored embeddings have {emb.shape[1]} values, the policies were "
                f"compiled for {registry.dim} (another model?)"
            )
    whole = loaded.key is not None and cache is not None  # emb: the whole group
    kept: dict[str, _F32] = {}
    if now:
        assert emb is not None
        values_of = {c: loaded.computed[c] for c in now if c in loaded.computed}
        rest = [c for c in now if c not in values_of]
        if rest:
            computed = kernel.half_cosines(emb, registry.rows(rest))
            values_of.update((c, computed[:, j]) for j, c in enumerate(rest))
        for column in now:
            values = values_of[column]
            out[:, column] = values if picked is None or not whole else values[picked]
            kept[registry.keys[column]] = values
    group = ScannedGroup(
        loaded.table, out, loaded.extra, loaded.read, loaded.other_weights, pending
    )
    if pending:
        assert emb is not None
        group._fill = _filler(emb, picked if whole else None, registry, kernel)
    if whole and (kept or pending):  # the group's entry: these rows first, then those it held
        assert cache is not None and loaded.key is not None
        kept.update((registry.keys[c], v) for c, v in loaded.found.items())
        if lazy:
            more = None if not pending else _later(store, loaded, registry, pending)
            cache.put_behind(loaded.key, kept, more)
        else:
            cache.put(loaded.key, kept)
    return group


def _filler(
    emb: npt.NDArray[np.float16],
    rows: npt.NDArray[np.int64] | None,
    registry: RowRegistry,
    kernel: CosineKernel,
) -> Callable[[npt.NDArray[np.intp], list[int]], _F32]:
    """Computes columns for some kept rows (``rows``: their places in ``emb``; None: the same)."""

    def fill(wanted: npt.NDArray[np.intp], columns: list[int]) -> _F32:
        at = wanted if rows is None else rows[wanted]
        return kernel.half_cosines(np.ascontiguousarray(emb[at]), registry.rows(columns))

    return fill


def _later(
    store: FrameStore, loaded: _Loaded, registry: RowRegistry, columns: list[int]
) -> Callable[[], dict[str, _F32]]:
    """The whole row group's cosines with ``columns``, for the cache's writer thread: its
    embeddings read again (the scan kept none) and multiplied there."""
    path, group, keys = loaded.path, loaded.group, [registry.keys[c] for c in columns]
    matrix = registry.rows(columns)

    def compute() -> dict[str, _F32]:
        # a StoreError (a ValueError) when the file went since: no entry, a later run's
        emb = np.ascontiguousarray(_embeddings(store, path, group))
        if emb.shape[1] != matrix.shape[1]:
            raise ValueError(f"stored embeddings of {emb.shape[1]} values")
        out = np.empty((matrix.shape[0], len(emb)), np.float32).T
        half_cosines(emb, matrix, out)
        return {k: out[:, j] for j, k in enumerate(keys)}

    return compute


class _Reader:
    """Reads and prepares row groups (in a thread of its own: :func:`prefetched`)."""

    def __init__(
        self,
        store: FrameStore,
        flt: FrameFilter,
        columns: Sequence[str],
        weights: str,
        registry: RowRegistry,
        prepare: Prepare,
        cache: CosineCache | None,
        *,
        lazy: bool,
    ) -> None:
        self.store, self.flt, self.weights = store, flt, weights
        self.lazy = lazy  # the ``some`` columns are left to complete(): not multiplied ahead
        self.registry, self.prepare, self.cache = registry, prepare, cache
        self.columns = filter_columns([*columns, "weights_sha256"], flt)
        self.out_columns = list(columns)
        self.speculate = False  # read cached groups' embeddings too (a cold cache)
        self._decoders = ThreadPoolExecutor(_DECODERS, thread_name_prefix="store-embeddings")

    def __iter__(self) -> Generator[_Loaded, None, None]:
        return prefetched(self._all())

    def close(self) -> None:
        """Stop the decoding threads, reads not begun cancelled."""
        self._decoders.shutdown(wait=True, cancel_futures=True)

    def _all(self) -> Iterator[_Loaded]:
        for f in self.store.files(self.flt):
            yield from self._file(f)

    def _file(self, f: StoredFile) -> Iterator[_Loaded]:
        location = self.store.location
        key = None if self.cache is None else FileKey.of(f, location.root)
        try:
            # not closed here: the decoding threads read its embeddings from this same open
            # file (a file replaced meanwhile is not mixed in), and the last of them to hold
            # it closes it as it lets go (pyarrow closes a file object when it is freed)
            source = location.fs.open_input_file(f.path)
            parquet = pq.ParquetFile(source, read_dictionary=list(_DICTIONARIES))
            for group in range(parquet.num_row_groups):
                yield self._group(parquet, source, group, key, f.path)
        except (OSError, pa.ArrowInvalid) as e:
            raise StoreError(f"{location.uri}: cannot read the frames in {f.path}: {e}") from e

    def _group(
        self,
        parquet: pq.ParquetFile,
        source: pa.NativeFile,
        group: int,
        file_key: FileKey | None,
        path: str,
    ) -> _Loaded:
        table = parquet.read_row_group(group, columns=self.columns)
        n = table.num_rows
        in_range = in_filter(table, self.flt)
        right = _equal(table.column("weights_sha256"), self.weights)
        keep = right if in_range is None else right & in_range
        read = n if in_range is None else int(in_range.sum())
        rows = None if keep.all() else np.flatnonzero(keep)
        kept = table if rows is None else table.take(pa.array(rows))
        out = _one_batch(kept.select(self.out_columns))
        needed, extra = self.prepare(out)
        columns, some = _split(needed)
        key = (
            None if file_key is None else FileKey(f"{file_key.path}#{group}", n, file_key.mtime_ns)
        )
        loaded = _Loaded(
            table=out,
            extra=extra,
            read=read,
            other_weights=read - len(kept),
            columns=columns,
            some=some,
            rows=rows,
            group_rows=n,
            key=key,
            path=path,
            group=group,
        )
        if len(kept) == 0:
            return loaded
        if key is None:
            loaded.missing = [int(c) for c in loaded.columns]
        elif not self.speculate:  # the cache is looked up on the consumer's thread
            return loaded
        uri = f"{self.store.location.uri}: cannot read the frames in {path}"
        # the columns every frame needs, multiplied there too (a cache looked up later may
        # have some: the same numbers, unused)
        later = set(some.tolist()) if self.lazy else set()
        ahead = [int(c) for c in columns if int(c) not in later]
        loaded.decoding = self._decoders.submit(
            _decoded,
            source,
            parquet.metadata,
            group,
            rows if key is None else None,  # the cache is filled for the whole group
            (ahead, self.registry.rows(ahead)),
            uri,
        )
        return loaded


def _decoded(
    source: pa.NativeFile,
    metadata: pq.FileMetaData,
    group: int,
    rows: npt.NDArray[np.int64] | None,
    multiply: tuple[list[int], _F32],
    what: str,
) -> _Decoded:
    """The embeddings of row group ``group`` (of the rows ``rows``; None: all), read from the
    open file ``source`` (positioned reads: threads share it), and their cosines with the
    registry ``multiply`` gives (columns, their rows): the numbers
    :meth:`CosineKernel.half_cosines` gives, on this thread alone; no cosines where the
    embeddings are not as long as the rows (the caller's thread then says so)."""
    try:
        parquet = pq.ParquetFile(source, metadata=metadata)
        column = parquet.read_row_group(group, columns=["embedding"]).column(0)
    except (OSError, pa.ArrowInvalid) as e:
        raise StoreError(f"{what}: {e}") from e
    emb = embeddings_of(column if rows is None else column.take(pa.array(rows)))
    columns, matrix = multiply
    if not columns or not len(emb) or emb.shape[1] != matrix.shape[1]:
        return _Decoded(emb, {})
    out = np.empty((len(columns), len(emb)), np.float32).T
    half_cosines(np.ascontiguousarray(emb), matrix, out)
    return _Decoded(emb, {c: out[:, j] for j, c in enumerate(columns)})


def prefetched(items: Iterator[Any], ahead: int = _AHEAD) -> Generator[Any, None, None]:
    """``items``, produced by a thread of their own at most ``ahead`` ahead of the consumer
    (pyarrow's reads release the GIL: reading overlaps the consumer's work); an error there
    is raised here, and a consumer that stops early stops the thread."""
    channel: queue.Queue[Any] = queue.Queue(ahead)
    stop = threading.Event()

    def send(item: Any) -> bool:
        while not stop.is_set():
            try:
                channel.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not send(item):
                    return
        except BaseException as e:  # handed to the consumer, raised there
            send(_Failed(e))
            return
        send(_DONE)

    worker = threading.Thread(target=produce, name="store-reader", daemon=True)
    worker.start()
    try:
        while True:
            item = channel.get()
            if item is _DONE:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        stop.set()
        with contextlib.suppress(queue.Empty):
            while True:
                channel.get_nowait()
        worker.join()


@dataclass(frozen=True)
class _Failed:
    error: BaseException


def row_groups(
    store: FrameStore, flt: FrameFilter, columns: Sequence[str]
) -> Iterator[pa.RecordBatch]:
    """``columns`` of the frames ``flt`` keeps, one record batch per row group, in file order,
    read ahead in a thread (:func:`prefetched`)."""

    def read() -> Iterator[pa.RecordBatch]:
        for f in store.files(flt):
            for table in _groups_of(store, f, columns, flt):
                yield _one_batch(table.select(list(columns)))

    return prefetched(read())


def _groups_of(
    store: FrameStore, f: StoredFile, columns: Sequence[str], flt: FrameFilter
) -> Iterator[pa.Table]:
    """Per row group of ``f`` with rows ``flt`` keeps, those rows' ``columns`` (the filter's
    columns read first: a row group it keeps nothing of is not read further)."""
    location = store.location
    told_by = filter_columns([], flt)
    rest = [c for c in columns if c not in told_by]
    try:
        with location.fs.open_input_file(f.path) as source:
            parquet = pq.ParquetFile(source, read_dictionary=list(_DICTIONARIES))
            for group in range(parquet.num_row_groups):
                if not told_by:
                    yield parquet.read_row_group(group, columns=list(columns))
                    continue
                first = parquet.read_row_group(group, columns=told_by)
                keep = in_filter(first, flt)
                assert keep is not None
                if not keep.any():
                    continue
                table = parquet.read_row_group(group, columns=rest)
                for name in told_by:
                    table = table.append_column(name, first.column(name))
                yield table if keep.all() else table.filter(pa.array(keep))
    except (OSError, pa.ArrowInvalid) as e:
        raise StoreError(f"{location.uri}: cannot read the frames in {f.path}: {e}") from e


def filter_columns(columns: Sequence[str], flt: FrameFilter) -> list[str]:
    """``columns`` and those ``flt``'s rows are told by."""
    wanted = list(columns)
    if flt.since is not None or flt.until is not None:
        wanted.append("scored_at")
    if flt.streams:
        wanted.append("stream_id")
    return list(dict.fromkeys(wanted))


def _one_batch(table: pa.Table) -> pa.RecordBatch:
    """``table`` as one record batch (no copy when every column is one chunk, as a row
    group's are; else chunks concatenated, dictionaries unified)."""
    if table.num_rows and all(c.num_chunks == 1 for c in table.itercolumns()):
        return pa.RecordBatch.from_arrays(
            [c.chunk(0) for c in table.itercolumns()], schema=table.schema
        )
    whole = table.combine_chunks()
    arrays = [
        c.chunk(0) if c.num_chunks == 1 else pa.array([], c.type) for c in whole.itercolumns()
    ]
    return pa.RecordBatch.from_arrays(arrays, schema=whole.schema)


def in_filter(table: pa.Table, flt: FrameFilter) -> npt.NDArray[np.bool_] | None:
    """Per row, whether ``flt``'s time range and streams keep it (None: all kept)."""
    parts = []
    stamp = pa.timestamp("ms", tz="UTC")
    if flt.since is not None:
        parts.append(pc.greater_equal(table["scored_at"], pa.scalar(flt.since, stamp)))
    if flt.until is not None:
        parts.append(pc.less(table["scored_at"], pa.scalar(flt.until, stamp)))
    if flt.streams:
        streams = table["stream_id"]
        if pa.types.is_dictionary(streams.type):
            streams = streams.cast(pa.string())
        parts.append(pc.is_in(streams, value_set=pa.array(list(flt.streams), pa.string())))
    if not parts:
        return None
    out = np.ones(table.num_rows, bool)
    for p in parts:
        out &= np.asarray(p.to_numpy(zero_copy_only=False), dtype=bool)
    return out


def _equal(column: pa.ChunkedArray | pa.Array, value: str) -> npt.NDArray[np.bool_]:
    """Per row, whether a string (or dictionary) column holds ``value`` (a dictionary column
    without nulls: its few distinct values compared, the rows' codes looked up)."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    if all(isinstance(c, pa.DictionaryArray) and c.null_count == 0 for c in chunks):
        parts = []
        for c in chunks:
            hit = pc.equal(c.dictionary, pa.scalar(value, pa.string()))
            known = np.asarray(hit.to_numpy(zero_copy_only=False), dtype=bool)
            parts.append(known[c.indices.to_numpy(zero_copy_only=False)])
        return np.concatenate(parts) if parts else np.zeros(0, bool)
    out = pc.equal(column, pa.scalar(value, pa.string())).to_numpy(zero_copy_only=False)
    return np.asarray(out, dtype=bool)
