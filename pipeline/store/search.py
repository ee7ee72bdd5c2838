"""Searching stored frames by text or image: the nearest frames by cosine, by brute force.

A query is one embedding of the store's model (a text prompt through the text tower, or a
picture through the image tower; :func:`search` takes the vector). Every stored embedding the
filter keeps is scored, row group by row group, and the best of each group kept; only the
winners' other columns (ids, stream, times) are read, at the end. No index: exact results.

A row group's embeddings come from the matrix cache beside the store where it has them
(:mod:`pipeline.store.matrixcache`: the raw float16 values, read in checked chunks of 4 MiB
into a reused buffer and scored there), else from the Parquet embedding column (about a
gigabyte a million frames to decode, most of an uncached search's time), the entry then
written for the next search. Either way each chunk is scored by
:func:`pipeline.store.halfs.half_dots` on every core (float16 converted inside the dot
product), so cached and uncached searches compute the same numbers from the same bytes and
return the same frames. The winners are ranked by score, ties by their order in the store
(file, row group, row), and a replayed frame counts once.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import StoreError
from pipeline.store.cosinecache import FileKey
from pipeline.store.cosines import CosineKernel
from pipeline.store.filescan import filter_columns, in_filter, prefetched
from pipeline.store.halfs import half_dots
from pipeline.store.matrixcache import CHECK_ROWS, Matrix, MatrixCache
from pipeline.store.query import FrameFilter, FrameStore
from pipeline.store.schema import embeddings_of

__all__ = ["MAX_TOP", "SearchHit", "search"]

#: The most results one search returns.
MAX_TOP: Final = 10_000
_META: Final = (
    "frame_id",
    "stream_id",
    "source",
    "scored_at",
    "ts",
    "seq",
    "frame_index",
    "tile",
)
_SLACK: Final = 16  # candidates beyond ``top``, for replayed duplicates
_F32 = npt.NDArray[np.float32]
_I64 = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class SearchHit:
    """A stored frame and its cosine with the query."""

    frame_id: str
    score: float
    stream_id: str
    source: str | None
    scored_at: dt.datetime
    ts: float
    seq: int
    frame_index: int
    tile: int

    def to_json(self) -> dict[str, Any]:
        return {
            "frame_id": self.frame_id,
            "score": round(self.score, 6),
            "stream_id": self.stream_id,
            "source": self.source,
            "scored_at": self.scored_at.isoformat(),
            "ts": self.ts,
            "seq": self.seq,
            "frame_index": self.frame_index,
            "tile": self.tile,
        }


def search(
    store: FrameStore,
    query: npt.ArrayLike,
    *,
    model: str,
    top: int = 50,
    flt: FrameFilter | None = None,
    cache: MatrixCache | bool = True,
    write_behind: bool = False,
) -> list[SearchHit]:
    """The ``top`` stored frames of ``model`` nearest to ``query`` (an (E,) embedding of that
    model, any scale) by cosine, best first (ties in store order); a replayed frame counts
    once. ``cache``: the matrix cache to read and fill (True: the store's own, for a local
    store; False: none; see :mod:`pipeline.store.matrixcache`). ``write_behind``: fill it on
    the cache's writer thread (:meth:`~pipeline.store.matrixcache.MatrixCache.put_behind`),
    so a first search returns as soon as an uncached one would."""
    if not 1 <= top <= MAX_TOP:
        raise StoreError(f"top must be between 1 and {MAX_TOP}, not {top}")
    q = np.asarray(query, dtype=np.float32).reshape(-1)
    norm = float(np.linalg.norm(q))
    if not np.isfinite(norm) or norm == 0:
        raise StoreError("the query embedding is zero or not finite")
    q = np.ascontiguousarray(q / norm, dtype=np.float32)
    flt = FrameFilter(
        model=model,
        since=flt.since if flt else None,
        until=flt.until if flt else None,
        streams=flt.streams if flt else (),
    )
    matrices = MatrixCache.beside(store.location) if cache is True else cache or None
    want = top + _SLACK
    found: list[_Found] = []
    try:
        with CosineKernel() as kernel:
            scorer = _Scorer(store, q, kernel, matrices, write_behind)
            for group in prefetched(_groups(store, flt, matrices, len(q))):
                sim = scorer.scores(group)
                keep = _best(sim, want)
                found.append(_Found(group.path, group.group, group.rows[keep], sim[keep]))
        hits = _hits(store, found, top, want)
    finally:  # the writer starts now (a failed search too: it must not wait for ever)
        if matrices is not None and write_behind:
            matrices.flush(wait=False)  # and trims the folder when it is done
    if matrices is not None and not write_behind:
        matrices.trim()
    return hits


@dataclass(eq=False)
class _Group:
    """A row group to score: its kept rows, and its embeddings' source."""

    path: str
    group: int
    count: int  # rows in the group
    rows: _I64  # the kept rows' positions in the group
    key: FileKey | None  # for the matrix cache (None: no cache)
    matrix: Matrix | None = None  # the cached embeddings, open
    emb: npt.NDArray[np.float16] | None = None  # else the whole group's, from Parquet


@dataclass(frozen=True, eq=False)
class _Found:
    """A row group's best rows (positions in the group) and their scores."""

    path: str
    group: int
    rows: _I64
    scores: _F32


def _groups(
    store: FrameStore, flt: FrameFilter, matrices: MatrixCache | None, dim: int
) -> Iterator[_Group]:
    """The row groups of the frames ``flt`` keeps, in file order, each with its cached matrix
    (of ``dim`` values a frame) open or its embeddings read (in the reading thread: pyarrow
    releases the GIL)."""
    location = store.location
    told_by = filter_columns([], flt)
    for f in store.files(flt):
        file_key = None if matrices is None else FileKey.of(f, location.root)
        try:
            with location.fs.open_input_file(f.path) as source:
                parquet = pq.ParquetFile(source)
                for g in range(parquet.num_row_groups):
                    count = parquet.metadata.row_group(g).num_rows
                    rows = np.arange(count, dtype=np.int64)
                    if told_by:
                        keep = in_filter(parquet.read_row_group(g, columns=told_by), flt)
                        assert keep is not None
                        rows = np.flatnonzero(keep).astype(np.int64)
                    if count == 0 or len(rows) == 0:
                        continue
                    key = None
                    if file_key is not None and matrices is not None:
                        key = FileKey(f"{file_key.path}#{g}", file_key.size, file_key.mtime_ns)
                    group = _Group(f.path, g, count, rows, key)
                    if key is not None and matrices is not None:
                        group.matrix = matrices.get(key, count, dim)
                    if group.matrix is None:
                        group.emb = _embeddings(parquet, g)
                    yield group
        except (OSError, pa.ArrowInvalid) as e:
            raise StoreError(f"{location.uri}: cannot read the frames in {f.path}: {e}") from e


def _read_group(store: FrameStore, path: str, group: int) -> npt.NDArray[np.float16]:
    location = store.location
    try:
        with location.fs.open_input_file(path) as source:
            return _embeddings(pq.ParquetFile(source), group)
    except (OSError, pa.ArrowInvalid) as e:
        raise StoreError(f"{location.uri}: cannot read the frames in {path}: {e}") from e


def _embeddings(parquet: pq.ParquetFile, group: int) -> npt.NDArray[np.float16]:
    return np.ascontiguousarray(
        embeddings_of(parquet.read_row_group(group, columns=["embedding"]).column(0))
    )


@dataclass(eq=False)
class _Scorer:
    """Scores row groups on the kernel's threads, from the cache or from Parquet."""

    store: FrameStore
    q: _F32
    kernel: CosineKernel
    matrices: MatrixCache | None
    write_behind: bool = False
    local: threading.local = field(default_factory=threading.local)

    def scores(self, group: _Group) -> _F32:
        """The kept rows' dot products with the query."""
        out = np.empty(group.count, np.float32)
        if group.matrix is not None:
            with group.matrix as matrix:
                whole = self._cached(matrix, out)
            if not whole:  # a chunk is short or corrupt: the Parquet file is the truth
                assert self.matrices is not None and self.matrices.hits
                self.matrices.hits -= 1
                self.matrices.reject(self.matrices.path(_known(group.key)), "a corrupt chunk")
                group.emb = self._read_again(group)
        if group.matrix is None or group.emb is not None:
            emb = group.emb
            assert emb is not None
            if emb.shape != (group.count, len(self.q)):
                raise StoreError(
                    f"the query has {len(self.q)} values, the stored embeddings {emb.shape[1]}"
                )
            bounds = [
                (lo, min(lo + CHECK_ROWS, group.count)) for lo in range(0, group.count, CHECK_ROWS)
            ]
            self.kernel.map(bounds, lambda lo, hi: half_dots(emb[lo:hi], self.q, out[lo:hi]))
            if group.key is not None and self.matrices is not None:
                if self.write_behind:  # read again by the writer: see _again
                    self.matrices.put_behind(group.key, self._again(group), emb.nbytes)
                else:
                    self.matrices.put(group.key, emb)
        return out if len(group.rows) == group.count else out[group.rows]

    def _cached(self, matrix: Matrix, out: _F32) -> bool:
        """Score every chunk of ``matrix`` into ``out``; False when a chunk failed."""
        if matrix.dim != len(self.q):
            raise StoreError(
                f"the query has {len(self.q)} values, the stored embeddings {matrix.dim}"
            )
        failed = threading.Event()

        def chunk(lo: int, hi: int) -> None:
            buf = getattr(self.local, "buf", None)
            if buf is None or buf.shape != (CHECK_ROWS, matrix.dim):
                buf = self.local.buf = np.empty((CHECK_ROWS, matrix.dim), np.uint16)
            rows = matrix.read(lo, hi, buf)
            if rows is None:
                failed.set()
            else:
                half_dots(rows, self.q, out[lo:hi])

        self.kernel.map(matrix.chunks(), chunk)
        return not failed.is_set()

    def _read_again(self, group: _Group) -> npt.NDArray[np.float16]:
        return _read_group(self.store, group.path, group.group)

    def _again(self, group: _Group) -> Callable[[], npt.NDArray[np.float16] | None]:
        """The row group's embeddings read again, for the matrix cache's writer after the
        answer (None when the file changed since: a later search's entry). Handing the writer
        the search's own arrays instead kept up to 512 MiB of them alive, so the search could
        not reuse that memory: a first search then took 2.2 s where the uncached one took
        0.7-1.3 s (a million frames, this project's 2-core machine)."""
        store, path, index, key = self.store, group.path, group.group, _known(group.key)

        def read() -> npt.NDArray[np.float16] | None:
            info = store.location.fs.get_file_info(path)
            if (info.size, info.mtime_ns) != (key.size, key.mtime_ns):
                return None
            return _read_group(store, path, index)

        return read


def _known(key: FileKey | None) -> FileKey:
    assert key is not None
    return key


def _best(sim: _F32, want: int) -> _I64:
    """The positions of the ``want`` highest of ``sim`` (NaN lowest), ties to the first, in
    position order."""
    n = len(sim)
    if n <= want:
        return np.arange(n, dtype=np.int64)
    key = np.where(np.isnan(sim), -np.inf, sim)
    kth = np.partition(key, n - want)[n - want]  # the want-th highest
    above = np.flatnonzero(key > kth)
    ties = np.flatnonzero(key == kth)[: want - len(above)]
    return np.sort(np.concatenate([above, ties])).astype(np.int64)


def _hits(store: FrameStore, found: list[_Found], top: int, want: int) -> list[SearchHit]:
    """The best ``want`` of every group's candidates (ties in store order), their other
    columns read, replays dropped, at most ``top``."""
    if not found:
        return []
    sim = np.concatenate([f.scores for f in found])
    which = np.concatenate([np.full(len(f.rows), i, np.int64) for i, f in enumerate(found)])
    row = np.concatenate([f.rows for f in found])
    picked = _best(sim, want)
    key = np.where(np.isnan(sim), -np.inf, sim)
    picked = picked[np.argsort(-key[picked], kind="stable")]
    meta = _metadata(store, found, which[picked], row[picked])
    out: list[SearchHit] = []
    seen: set[str] = set()
    for i, score in zip(picked.tolist(), sim[picked].tolist(), strict=True):
        m = meta[(int(which[i]), int(row[i]))]
        if m["frame_id"] in seen:
            continue
        seen.add(m["frame_id"])
        out.append(
            SearchHit(
                frame_id=m["frame_id"],
                score=float(score),
                stream_id=str(m["stream_id"]),
                source=m["source"],
                scored_at=m["scored_at"],
                ts=float(m["ts"]),
                seq=int(m["seq"]),
                frame_index=int(m["frame_index"]),
                tile=int(m["tile"]),
            )
        )
        if len(out) == top:
            break
    return out


def _metadata(
    store: FrameStore, found: list[_Found], which: _I64, rows: _I64
) -> dict[tuple[int, int], dict[str, Any]]:
    """(found index, row in its group) -> the winner's other columns, read per row group, two
    row groups at a time (pyarrow releases the GIL while reading)."""
    location = store.location

    def read(i: int) -> list[tuple[tuple[int, int], dict[str, Any]]]:
        f = found[i]
        wanted = np.unique(rows[which == i])
        try:
            with location.fs.open_input_file(f.path) as source:
                table = pq.ParquetFile(source).read_row_group(f.group, columns=list(_META))
        except (OSError, pa.ArrowInvalid) as e:
            raise StoreError(f"{location.uri}: cannot read the frames in {f.path}: {e}") from e
        values = table.take(pa.array(wanted)).to_pylist()
        return [((i, r), v) for r, v in zip(wanted.tolist(), values, strict=True)]

    with ThreadPoolExecutor(2, thread_name_prefix="search-meta") as pool:
        return dict(pair for part in pool.map(read, np.unique(which).tolist()) for pair in part)
