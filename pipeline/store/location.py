"""Where a store lives: a local folder or any filesystem pyarrow reaches, and its layout.

::

    <root>/model=<name>/date=YYYY-MM-DD/<file>.parquet     frames (Hive partitions)
    <root>/_policy_sets/<id>.json                          policy set snapshots
    <root>/_labels.sqlite                                   review labels (local stores)

:func:`open_location` takes a path (``demo-output/store``), a ``file://`` URI or any URI
pyarrow's filesystems understand (``s3://bucket/frames``, ``gs://...``, ``hdfs://...``).
Names starting with ``.`` or ``_`` are not frame files: writers use them for temporary files
and side data, and Spark, Trino and Athena skip them too.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pyarrow.fs as pafs

from pipeline.errors import StoreError
from pipeline.store.schema import model_from_partition, model_partition

__all__ = [
    "LABELS_FILE",
    "POLICY_SETS_DIR",
    "StoreLocation",
    "StoredFile",
    "open_location",
]

POLICY_SETS_DIR: Final = "_policy_sets"
LABELS_FILE: Final = "_labels.sqlite"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,199}")
_FILE = re.compile(r"model=([^/]+)/date=(\d{4}-\d{2}-\d{2})/([^/]+)\.parquet")


@dataclass(frozen=True, slots=True)
class StoredFile:
    """One Parquet file of frames."""

    path: str  # in the store's filesystem
    model: str
    date: dt.date
    name: str  # without .parquet
    size: int
    mtime_ns: int | None = None  # its last modification (None: the filesystem gives none)


@dataclass(frozen=True, eq=False)
class StoreLocation:
    """A store's filesystem and root path in it."""

    fs: pafs.FileSystem
    root: str
    uri: str  # as given, for messages

    @property
    def local(self) -> bool:
        """On this machine's file system (fsync and rename apply, DuckDB reads it directly)."""
        return isinstance(self.fs, pafs.LocalFileSystem)

    def join(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    def partition_dir(self, model: str, day: str) -> str:
        return self.join(f"model={model_partition(model)}", f"date={day}")

    def file_path(self, model: str, day: str, name: str) -> str:
        """Where the frames of ``model`` scored on ``day`` in file ``name`` go."""
        if not _NAME.fullmatch(name):
            raise StoreError(f"not a valid store file name: {name!r}")
        return f"{self.partition_dir(model, day)}/{name}.parquet"

    def files(self) -> list[StoredFile]:
        """Every frame file, sorted by path."""
        try:
            info = self.fs.get_file_info(pafs.FileSelector(self.root, allow_not_found=True))
        except OSError as e:
            raise StoreError(f"{self.uri}: cannot list the store: {e}") from e
        models = [
            i
            for i in info
            if i.type == pafs.FileType.Directory and i.base_name.startswith("model=")
        ]
        out: list[StoredFile] = []
        for m in models:
            try:
                found = self.fs.get_file_info(pafs.FileSelector(m.path, recursive=True))
            except OSError as e:
                raise StoreError(f"{self.uri}: cannot list {m.path}: {e}") from e
            for f in found:
                stored = self._stored(f)
                if stored is not None:
                    out.append(stored)
        return sorted(out, key=lambda f: f.path)

    def _stored(self, info: pafs.FileInfo) -> StoredFile | None:
        if info.type != pafs.FileType.File or info.base_name.startswith((".", "_")):
            return None
        relative = info.path[len(self.root.rstrip("/")) + 1 :]
        match = _FILE.fullmatch(relative)
        if match is None:
            return None
        try:
            day = dt.date.fromisoformat(match.group(2))
        except ValueError:
            return None
        return StoredFile(
            path=info.path,
            model=model_from_partition(match.group(1)),
            date=day,
            name=match.group(3),
            size=int(info.size or 0),
            mtime_ns=info.mtime_ns,
        )

    def read_bytes(self, path: str, *, limit: int) -> bytes | None:
        """A small side file's bytes (None when it does not exist); :class:`StoreError` when
        it is over ``limit`` bytes or unreadable."""
        try:
            info = self.fs.get_file_info(path)
            if info.type == pafs.FileType.NotFound:
                return None
            if (info.size or 0) > limit:
                raise StoreError(f"{path}: {info.size} bytes, over the limit of {limit}")
            with self.fs.open_input_stream(path) as fh:
                data: bytes = fh.read(limit + 1)
        except OSError as e:
            raise StoreError(f"{path}: cannot read: {e}") from e
        if len(data) > limit:
            raise StoreError(f"{path}: over the limit of {limit} bytes")
        return data


def open_location(where: str | Path | StoreLocation) -> StoreLocation:
    """The store at ``where``: a local path, a ``file://`` URI or a pyarrow filesystem URI
    (``s3://bucket/prefix``). A local root is made absolute; nothing is created."""
    if isinstance(where, StoreLocation):
        return where
    text = str(where)
    if "://" not in text:
        root = Path(text).expanduser().absolute()
        return StoreLocation(pafs.LocalFileSystem(), root.as_posix(), text)
    try:
        fs, path = pafs.FileSystem.from_uri(text)
    except (OSError, ValueError, NotImplementedError) as e:  # pyarrow's errors derive from these
        raise StoreError(f"{text}: not a store location pyarrow can open: {e}") from e
    return StoreLocation(fs, path.rstrip("/") or "/", text)
