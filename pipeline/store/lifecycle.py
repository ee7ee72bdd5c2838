"""A store's lifecycle: what it holds, retention by date, deleting one stream's frames.

- :func:`stats`: frames, streams, bytes, files, models, the time range, thumbnails.
- :func:`prune`: drop whole date partitions before a day (retention); a file is removed at
  once, so a reader sees each file whole or not at all.
- :func:`delete_streams`: remove the frames of some streams (or sources) wherever they are:
  each file holding them is rewritten without them (put in place whole, like any write) or
  removed when nothing is left.

Policy set snapshots are kept: they are small and name no stream.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.errors import StoreError
from pipeline.store.query import FrameStore
from pipeline.store.schema import as_file_schema
from pipeline.store.writer import StoreWriter

__all__ = ["StoreStats", "delete_streams", "prune", "stats"]


@dataclass
class StoreStats:
    """What a store holds."""

    frames: int = 0  # stored rows (a replayed frame may be stored twice)
    streams: int = 0
    files: int = 0
    bytes: int = 0
    thumbnails: int = 0
    first: dt.datetime | None = None  # earliest scored_at
    last: dt.datetime | None = None
    models: dict[str, int] = field(default_factory=dict)  # model -> frames
    policy_sets: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "frames": self.frames,
            "streams": self.streams,
            "files": self.files,
            "bytes": self.bytes,
            "thumbnails": self.thumbnails,
            "first": None if self.first is None else self.first.isoformat(),
            "last": None if self.last is None else self.last.isoformat(),
            "models": self.models,
            "policy_sets": self.policy_sets,
        }


def stats(store: FrameStore) -> StoreStats:
    """Counts over the whole store (one DuckDB query over its small columns)."""
    files = store.files()
    out = StoreStats(files=len(files), bytes=sum(f.size for f in files))
    out.policy_sets = len(store.policy_sets())
    if not files:
        return out
    table = store.sql(
        "SELECT model, count(*) AS frames, count(DISTINCT stream_id) AS streams, "
        "count(thumbnail) AS thumbnails, min(scored_at) AS first, max(scored_at) AS last "
        "FROM frames GROUP BY model ORDER BY model"
    )
    streams = store.sql("SELECT count(DISTINCT stream_id) AS n FROM frames")
    for row in table.to_pylist():
        out.models[row["model"]] = int(row["frames"])
        out.frames += int(row["frames"])
        out.thumbnails += int(row["thumbnails"])
        out.first = row["first"] if out.first is None else min(out.first, row["first"])
        out.last = row["last"] if out.last is None else max(out.last, row["last"])
    out.streams = int(streams.column("n")[0].as_py())
    return out


def prune(store: FrameStore, before: dt.date) -> list[str]:
    """Remove every frame file of a day before ``before``; the paths removed."""
    writer = StoreWriter(store.location)
    removed = []
    for f in store.files():
        if f.date < before:
            writer.delete_file(f.path)
            removed.append(f.path)
    return removed


def delete_streams(
    store: FrameStore, streams: Sequence[str] = (), *, sources: Sequence[str] = ()
) -> int:
    """Remove the frames of ``streams`` and of ``sources`` from every file; the rows removed."""
    if not streams and not sources:
        raise StoreError("name at least one stream or source to delete")
    writer = StoreWriter(store.location)
    removed = 0
    for f in store.files():
        try:
            table = pq.read_table(f.path, filesystem=store.location.fs)
        except (OSError, pa.ArrowInvalid) as e:
            raise StoreError(f"{f.path}: cannot read: {e}") from e
        gone = pc.is_in(table.column("stream_id"), pa.array(list(streams), pa.string()))
        if sources:
            by_source = pc.is_in(table.column("source"), pa.array(list(sources), pa.string()))
            gone = pc.or_(gone, pc.fill_null(by_source, False))
        count = int(pc.sum(gone).as_py() or 0)
        if not count:
            continue
        removed += count
        if count == table.num_rows:
            writer.delete_file(f.path)
        else:
            writer.write_file(f.path, as_file_schema(table.filter(pc.invert(gone))))
    return removed
