"""Writing frames to a store: Parquet files in Hive partitions, each put in place whole.

:meth:`StoreWriter.write` splits a table of frame records (:data:`RECORD_SCHEMA`) by model
and UTC day and writes one file per part, all with the caller's name, so a caller that names
files after what they hold (the sink: partition and offset range; a scan: the input and its
key) overwrites rather than duplicates when it writes the same frames again.

A file appears whole or not at all. On a local file system it is written under a temporary
name beginning with ``.`` in its folder, flushed to disk (``fsync``), renamed into place, and
the folder is flushed too, so it survives a power cut once :meth:`~StoreWriter.write`
returns. Object stores (S3, GCS, Azure) make an object visible only when its upload
completes, so there it is written straight to its name.

Parquet settings: row groups of :data:`ROW_GROUP_SIZE` rows; zstd for the small columns,
none for the embeddings and thumbnails (float16 vectors and JPEGs do not compress), no
dictionary for the per-frame unique columns.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline.errors import StoreError
from pipeline.store.location import POLICY_SETS_DIR, StoredFile, StoreLocation, open_location
from pipeline.store.schema import FILE_SCHEMA, RECORD_SCHEMA, file_table, utc_day

__all__ = ["ROW_GROUP_SIZE", "StoreWriter"]

#: Rows per Parquet row group: readers scan a file in parallel row group by row group.
ROW_GROUP_SIZE: Final = 64 * 1024
_DAY_MS: Final = 86_400_000
_UNCOMPRESSED: Final = ("embedding", "thumbnail", "pdq")
_NO_DICTIONARY: Final = ("frame_id", "embedding", "thumbnail", "ts", "pdq")


class StoreWriter:
    """Writes frame files, policy set snapshots and rewrites into the store at ``where``."""

    def __init__(self, where: str | Path | StoreLocation, *, row_group_size: int = ROW_GROUP_SIZE):
        self.location = open_location(where)
        if row_group_size < 1:
            raise StoreError(f"row_group_size must be >= 1, not {row_group_size}")
        self.row_group_size = row_group_size

    def write(self, table: pa.Table, name: str) -> list[StoredFile]:
        """Write ``table`` (:data:`RECORD_SCHEMA`) as ``model=<m>/date=<d>/<name>.parquet``
        files, one per model and day it holds; the files written. An empty table writes
        nothing."""
        if not table.schema.equals(RECORD_SCHEMA, check_metadata=False):
            raise StoreError("frames to write must have the store's record schema")
        written = []
        for model, day, part in _split(table):
            path = self.location.file_path(model, day, name)
            self.write_file(path, part.drop_columns(["model"]).cast(FILE_SCHEMA))
            written.append(
                StoredFile(
                    path=path,
                    model=model,
                    date=_date(day),
                    name=name,
                    size=self._size(path),
                )
            )
        return written

    def write_file(self, path: str, table: pa.Table) -> None:
        """Put ``table`` (:data:`FILE_SCHEMA`) in place at ``path``, whole (see the module
        docstring), its embeddings as a file holds them (:func:`file_table`); an existing
        file there is replaced."""
        table = file_table(table)
        options = {
            "row_group_size": self.row_group_size,
            "compression": {
                c: "none" if c in _UNCOMPRESSED else "zstd" for c in table.column_names
            },
            "use_dictionary": [c for c in table.column_names if c not in _NO_DICTIONARY],
        }
        try:
            if self.location.local:
                _write_local(Path(path), table, options)
            else:
                self.location.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
                with self.location.fs.open_output_stream(path) as out:
                    pq.write_table(table, out, **options)
        except OSError as e:
            raise StoreError(f"{path}: cannot write: {e}") from e

    def delete_file(self, path: str) -> None:
        """Remove one frame file (a missing one is not an error)."""
        try:
            self.location.fs.delete_file(path)
        except FileNotFoundError:
            return
        except OSError as e:
            raise StoreError(f"{path}: cannot delete: {e}") from e
        if self.location.local:
            _fsync_dir(Path(path).parent)

    def write_snapshot(self, policy_set: str, data: bytes) -> bool:
        """Keep a policy set snapshot (``_policy_sets/<id>.json``) unless the store has it
        already; True when it was written."""
        path = self.location.join(POLICY_SETS_DIR, f"{policy_set}.json")
        fs = self.location.fs
        try:
            if fs.get_file_info(path).type != pafs.FileType.NotFound:
                return False
            if self.location.local:
                _write_bytes_local(Path(path), data)
            else:
                fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
                with fs.open_output_stream(path) as out:
                    out.write(data)
        except OSError as e:
            raise StoreError(f"{path}: cannot write: {e}") from e
        return True

    def _size(self, path: str) -> int:
        return int(self.location.fs.get_file_info(path).size or 0)


def _split(table: pa.Table) -> Iterator[tuple[str, str, pa.Table]]:
    """(model, day, rows) for each model and UTC day in ``table``, rows in table order."""
    if table.num_rows == 0:
        return
    encoded = table.column("model").combine_chunks().dictionary_encode()
    models = encoded.dictionary.to_pylist()
    ms = table.column("scored_at").combine_chunks().cast(pa.int64()).to_numpy()
    day = ms // _DAY_MS
    model_idx = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    key = model_idx * 10_000_000 + (day - day.min())
    for k in np.unique(key):
        rows = np.flatnonzero(key == k)
        first = int(rows[0])
        yield models[model_idx[first]], utc_day(int(ms[first]) / 1000), table.take(rows)


def _date(day: str) -> dt.date:
    return dt.date.fromisoformat(day)


def _write_local(path: Path, table: pa.Table, options: dict[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        pq.write_table(table, tmp, **options)  # type: ignore[arg-type]
        _fsync_file(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    _fsync_dir(path.parent)


def _write_bytes_local(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with tmp.open("wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    _fsync_dir(path.parent)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
