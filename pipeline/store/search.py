"""Searching stored frames by text or image: the nearest frames by cosine, by brute force.

A query is one embedding of the store's model (a text prompt through the text tower, or a
picture through the image tower; :func:`search` takes the vector). Every stored embedding the
filter keeps is scored with one matrix product per row group (by
:class:`~pipeline.store.cosines.CosineKernel`: float16 converted chunk by chunk, on every
core; the next row group read meanwhile, :func:`~pipeline.store.filescan.row_groups`) and the
best ``top`` kept with a partial sort; only the winners' other columns are kept. No index:
exact results. A scan of 1 million 512-d float16 embeddings is about a gigabyte read from
Parquet; decoding that column is most of a search's time.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from pipeline.errors import StoreError
from pipeline.store.cosines import CosineKernel
from pipeline.store.filescan import row_groups
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
) -> list[SearchHit]:
    """The ``top`` stored frames of ``model`` nearest to ``query`` (an (E,) embedding of that
    model, any scale) by cosine, best first; a replayed frame counts once."""
    if not 1 <= top <= MAX_TOP:
        raise StoreError(f"top must be between 1 and {MAX_TOP}, not {top}")
    q = np.asarray(query, dtype=np.float32).reshape(-1)
    norm = float(np.linalg.norm(q))
    if not np.isfinite(norm) or norm == 0:
        raise StoreError("the query embedding is zero or not finite")
    q = q / norm
    flt = FrameFilter(
        model=model,
        since=flt.since if flt else None,
        until=flt.until if flt else None,
        streams=flt.streams if flt else (),
    )
    want = top + 16  # slack for replayed duplicates
    best: list[pa.Table] = []
    scores: list[npt.NDArray[np.float32]] = []
    with CosineKernel() as kernel:
        for batch in row_groups(store, flt, ("embedding", *_META)):
            if batch.num_rows == 0:
                continue
            emb = embeddings_of(batch.column(0))  # (B, E) float16
            if emb.shape[1] != q.shape[0]:
                raise StoreError(
                    f"the query has {q.shape[0]} values, the stored embeddings {emb.shape[1]}"
                )
            sim = kernel.dots(emb, q)  # (B,) as emb.astype(float32) @ q
            keep = np.argpartition(-sim, want)[:want] if len(sim) > want else np.arange(len(sim))
            best.append(
                pa.Table.from_batches([batch.select(list(range(1, len(_META) + 1)))]).take(keep)
            )
            scores.append(sim[keep])
    if not best:
        return []
    table = pa.concat_tables(best)
    sim = np.concatenate(scores)
    return _hits(table, sim, top)


def _hits(table: pa.Table, sim: npt.NDArray[np.float32], top: int) -> list[SearchHit]:
    order = np.argsort(-sim, kind="stable")
    rows = table.take(order).to_pylist()
    out: list[SearchHit] = []
    seen: set[str] = set()
    for row, score in zip(rows, sim[order].tolist(), strict=True):
        if row["frame_id"] in seen:
            continue
        seen.add(row["frame_id"])
        out.append(
            SearchHit(
                frame_id=row["frame_id"],
                score=float(score),
                stream_id=str(row["stream_id"]),
                source=row["source"],
                scored_at=row["scored_at"],
                ts=float(row["ts"]),
                seq=int(row["seq"]),
                frame_index=int(row["frame_index"]),
                tile=int(row["tile"]),
            )
        )
        if len(out) == top:
            break
    return out
