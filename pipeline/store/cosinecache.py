"""A cache of stored frames' cosines with prompt rows, so a repeated backtest skips the
embeddings.

A policy author's loop re-runs a backtest with edited thresholds and mostly unchanged prompts.
Each run reads every stored embedding (512 float16 values, 1 KB a frame) only to multiply it
with the same prompt rows as the run before. The cosines of one stored file with one prompt
row are a fact of that file's bytes and that row's values, so they are kept here, one entry per
row group of a stored file, holding its cosines with each prompt row a run needed: 4 bytes a
frame and row. A warm backtest reads those and the few small columns it needs.

Entries live in ``<store>/_cache/cosines/`` (the ``_`` keeps the folder out of the frames for
clipguard, DuckDB, Spark, Trino and Athena alike), or in any local folder given. A store
on another filesystem (``s3://``...) has no default cache: its backtests compute every time
unless given a local folder. When the folder cannot be written, the run goes on uncached.
A first backtest hands its entries to the cache's writer thread (:meth:`CosineCache.put_behind`,
:class:`~pipeline.store.behind.WriteBehind`), which writes them once the answer is out.

An entry is ``MAGIC``, the header's length (4 bytes, little-endian), a JSON header and the
float32 values, row after row. The header names the row group by its stored file's path in the
store (and the group's number), size and modification time (nanoseconds), the number of
frames, and each row it holds by the SHA-256 of its float32 values (:func:`row_key`) with the
CRC-32C of its cosines. An entry is used only when all of these match the file as it is
now, its size is exactly what the header says and its values are
finite cosines; anything else (a rewritten store file, a truncated or corrupt entry, a link, a
pipe, a header of the wrong shape) is a miss, and the entry is replaced when the run computes
those cosines again. The cache is bounded (:data:`DEFAULT_MAX_BYTES`): entries used least
recently are removed first. No library keeps "arrays keyed by a remote file's identity" with
these checks, hence this small module.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import stat
import struct
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import crc32c
import numpy as np
import numpy.typing as npt

from pipeline.store.behind import WriteBehind
from pipeline.store.location import StoredFile, StoreLocation

__all__ = [
    "CACHE_DIR",
    "DEFAULT_MAX_BYTES",
    "MAX_BEHIND_BYTES",
    "MAX_ROWS",
    "CosineCache",
    "EntryHead",
    "FileKey",
    "read_head",
    "row_key",
    "trim_folder",
]

#: The cache folder inside a local store.
CACHE_DIR: Final = "_cache"
#: The default bound on the cosine entries' total size.
DEFAULT_MAX_BYTES: Final = 4 << 30
#: Most bytes of cosines :meth:`CosineCache.put_behind` holds waiting for the disk.
MAX_BEHIND_BYTES: Final = 512 << 20
#: Bump when the cosines' computation changes: older entries are then misses.
_FORMAT: Final = 3
_MAGIC: Final = b"CGCOS03\n"
_MAX_HEADER: Final = 64 * 1024
#: The most prompt rows one row group's entry holds (a run keeps the rows it needs first).
MAX_ROWS: Final = 256
_LIMIT: Final = np.float32(1.0001)  # a cosine of unit vectors, with float16 rounding
_STALE_TMP_S: Final = 3600.0
_F32 = npt.NDArray[np.float32]
_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FileKey:
    """A stored file as it is now: its path in the store, size and modification time."""

    path: str
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, f: StoredFile, root: str) -> FileKey | None:
        """The key of ``f`` (None when its filesystem gives no modification time)."""
        if f.mtime_ns is None:
            return None
        relative = f.path[len(root.rstrip("/")) + 1 :] if f.path.startswith(root) else f.path
        return cls(relative, f.size, f.mtime_ns)


def row_key(row: npt.ArrayLike) -> str:
    """The key of a prompt row: SHA-256 of its float32 little-endian values and the format."""
    values = np.ascontiguousarray(np.asarray(row, dtype="<f4").reshape(-1))
    digest = hashlib.sha256(f"cosines/{_FORMAT}/{values.shape[0]}/".encode())
    digest.update(values.tobytes())
    return digest.hexdigest()


class CosineCache:
    """Cosine entries in ``folder`` (created on the first write), at most ``max_bytes`` in
    all after :meth:`trim`."""

    def __init__(self, folder: str | Path, *, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, not {max_bytes}")
        self.folder = Path(folder)
        self.max_bytes = max_bytes
        self.writable = True
        self.hits = 0
        self.misses = 0
        self.rejected = 0  # entries present but not usable (stale, corrupt, hostile)
        self._behind = WriteBehind("cosine-cache-writer", self._write_held, self.trim)

    @classmethod
    def beside(
        cls, location: StoreLocation, *, max_bytes: int = DEFAULT_MAX_BYTES
    ) -> CosineCache | None:
        """The cache inside a local store (``<root>/_cache/cosines``); None for other
        filesystems."""
        if not location.local:
            return None
        return cls(Path(location.root) / CACHE_DIR / "cosines", max_bytes=max_bytes)

    def empty(self) -> bool:
        """Whether the folder holds no entry at all (every look-up of a run would miss)."""
        try:
            with os.scandir(self.folder) as found:
                return not any(e.name.endswith(".cos") for e in found)
        except OSError:  # no folder yet
            return True

    def path(self, key: FileKey) -> Path:
        name = hashlib.sha256(key.path.encode()).hexdigest()[:40]
        return self.folder / f"{name}.cos"

    # -- reading ----------------------------------------------------------------------------

    def get(self, key: FileKey, rows: Sequence[str], count: int) -> dict[str, _F32]:
        """Of the prompt rows ``rows`` (keys), those the cache has for the row group ``key``
        (``count`` frames): row key -> its ``count`` cosines. Counted in :attr:`hits` and
        :attr:`misses` per row."""
        path = self.path(key)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            self.misses += len(rows)
            return {}
        except OSError:  # a link (O_NOFOLLOW), no permission...
            self._reject(path, "cannot be opened", len(rows))
            return {}
        with os.fdopen(fd, "rb", buffering=0) as fh:
            found, why = _read_entry(fh, fd, key, rows, count)
        if found is None:
            self._reject(path, why, len(rows))
            return {}
        with contextlib.suppress(OSError):
            os.utime(path)  # used now: the last to be trimmed
        self.hits += len(found)
        self.misses += len(rows) - len(found)
        return found

    def _reject(self, path: Path, why: str, rows: int) -> None:
        self.rejected += 1
        self.misses += rows
        _log.debug("cosine cache entry %s ignored: %s", path, why)

    def _held(self, key: FileKey, count: int) -> dict[str, _F32]:
        """Every row the entry of ``key`` holds, if it is whole (else nothing)."""
        path = self.path(key)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            return {}
        with os.fdopen(fd, "rb", buffering=0) as fh:
            found, _ = _read_entry(fh, fd, key, None, count)
        return found or {}

    # -- writing ----------------------------------------------------------------------------

    def put(self, key: FileKey, cosines: Mapping[str, npt.ArrayLike]) -> bool:
        """Keep the cosines of the row group ``key`` with these prompt rows (row key ->
        values), with the other rows its entry held, at most :data:`MAX_ROWS` (these first);
        False when the folder cannot be written (the cache then stops writing for this
        object)."""
        if not self.writable or not cosines:
            return False
        keys = list(cosines)[:MAX_ROWS]
        data = [np.ascontiguousarray(np.asarray(cosines[k], dtype="<f4").reshape(-1)) for k in keys]
        count = int(data[0].shape[0])
        if any(d.shape[0] != count for d in data):
            raise ValueError("cosines of different lengths for one row group")
        # the rows the entry held besides (another run's prompts), while there is room
        for k, v in self._held(key, count).items():
            if len(keys) < MAX_ROWS and k not in cosines:
                keys.append(k)
                data.append(v)
        header = json.dumps(
            {
                "format": _FORMAT,
                "path": key.path,
                "size": key.size,
                "mtime_ns": key.mtime_ns,
                "count": count,
                "rows": keys,
                "crc32c": [crc32c.crc32c(d.data) for d in data],
            },
            separators=(",", ":"),
        ).encode()
        path = self.path(key)
        tmp = path.with_name(f".tmp-{uuid.uuid4().hex}")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with open(tmp, "xb") as fh:
                fh.write(_MAGIC + struct.pack("<I", len(header)) + header)
                for d in data:
                    fh.write(d.data.cast("B"))
            os.replace(tmp, path)
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink()
            self.writable = False
            _log.warning(
                "cosine cache %s cannot be written (%s): going on uncached", self.folder, e
            )
            return False
        return True

    def put_behind(
        self,
        key: FileKey,
        cosines: Mapping[str, _F32],
        more: Callable[[], Mapping[str, _F32]] | None = None,
    ) -> bool:
        """:meth:`put` on a writer thread of the cache's own
        (:class:`~pipeline.store.behind.WriteBehind`), which starts at :meth:`flush`: a first
        backtest answers without writing beside its scan. ``more``, called on that thread
        before the entry is written, gives the row group's cosines with further prompt rows
        (a backtest computes some rows only for the frames it reports, and the whole group's
        afterwards). At most :data:`MAX_BEHIND_BYTES` of cosines wait; an entry beyond that is
        left out (a later run writes it): False."""
        if not self.writable:
            return False
        size = sum(int(np.asarray(v).nbytes) for v in cosines.values())
        return self._behind.offer((key, cosines, more), size, MAX_BEHIND_BYTES)

    def _write_held(
        self,
        item: tuple[FileKey, Mapping[str, _F32], Callable[[], Mapping[str, _F32]] | None],
    ) -> None:
        key, cosines, more = item
        if more is not None:
            cosines = {**cosines, **more()}
        self.put(key, cosines)

    def flush(self, *, wait: bool = True) -> None:
        """End the writer thread once what :meth:`put_behind` was given is written, then trim
        the folder; ``wait``: return only then."""
        self._behind.flush(wait=wait)

    @property
    def writing(self) -> bool:
        """Whether entries given to :meth:`put_behind` are still to be written."""
        return self._behind.busy

    def trim(self) -> int:
        """Remove the entries used least recently until the rest fit the bound, and stale
        temporary files; the bytes removed."""
        return trim_folder(self.folder, ".cos", self.max_bytes)


def trim_folder(folder: Path, suffix: str, max_bytes: int) -> int:
    """In a cache ``folder``: remove the entries (names ending in ``suffix``) used least
    recently until the rest fit ``max_bytes``, and stale temporary files; the bytes removed."""
    entries: list[tuple[float, int, Path]] = []
    now = time.time()
    removed = 0
    try:
        listing = list(os.scandir(folder))
    except OSError:
        return 0
    for e in listing:
        try:
            st = e.stat(follow_symlinks=False)
        except OSError:
            continue
        if e.name.startswith(".tmp-") and now - st.st_mtime > _STALE_TMP_S:
            removed += _unlink(Path(e.path), st.st_size)
        elif e.name.endswith(suffix):
            entries.append((st.st_mtime, st.st_size, Path(e.path)))
    total = sum(size for _, size, _ in entries)
    for _, size, path in sorted(entries, key=lambda e: e[0]):
        if total <= max_bytes:
            break
        removed += _unlink(path, size)
        total -= size
    return removed


@dataclass(frozen=True, slots=True)
class EntryHead:
    """The checked head of a cache entry: its JSON header, where the header ends, the file's
    size."""

    header: dict[str, Any]
    end: int
    size: int


def read_head(
    fd: int, magic: bytes, kind: str, want: Mapping[str, object]
) -> tuple[EntryHead | None, str]:
    """The head of the cache entry open on ``fd`` (the cosine and the matrix caches share the
    layout: ``magic``, a little-endian 4-byte header length of at most 64 KiB, a JSON object)
    if it is a regular file of that kind whose header holds ``want``'s values (the stored file
    and format it was written for); else None and why."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        return None, "not a regular file"
    head = os.pread(fd, len(magic) + 4, 0)
    if len(head) != len(magic) + 4 or head[: len(magic)] != magic:
        return None, f"not a {kind} cache entry"
    (length,) = struct.unpack("<I", head[len(magic) :])
    if length > _MAX_HEADER:
        return None, f"a header of {length} bytes"
    try:
        header: Any = json.loads(os.pread(fd, length, len(head)))
    except (ValueError, UnicodeDecodeError):
        return None, "an unreadable header"
    if not isinstance(header, dict) or any(header.get(k) != v for k, v in want.items()):
        return None, "written for another file or version"
    return EntryHead(header, len(head) + length, st.st_size), ""


def _read_entry(
    fh: Any, fd: int, key: FileKey, rows: Sequence[str] | None, count: int
) -> tuple[dict[str, _F32] | None, str]:
    """An open entry's cosines with those of ``rows`` (None: all) it holds, if it is the entry
    of the row group ``key`` and whole (else None and why)."""
    want = {
        "format": _FORMAT,
        "path": key.path,
        "size": key.size,
        "mtime_ns": key.mtime_ns,
        "count": count,
    }
    entry, why = read_head(fd, _MAGIC, "cosine", want)
    if entry is None:
        return None, why
    held, sums = entry.header.get("rows"), entry.header.get("crc32c")
    if not (
        isinstance(held, list)
        and isinstance(sums, list)
        and len(held) == len(sums) <= MAX_ROWS
        and all(isinstance(k, str) for k in held)
        and all(isinstance(c, int) for c in sums)
    ):
        return None, "a header of the wrong shape"
    start = entry.end
    if entry.size != start + 4 * count * len(held):
        return None, f"{entry.size} bytes, not the {start + 4 * count * len(held)} announced"
    out: dict[str, _F32] = {}
    place = {k: i for i, k in enumerate(held)}
    for row in held if rows is None else rows:
        i = place.get(row)
        if i is None:
            continue
        values = np.empty(count, dtype="<f4")
        fh.seek(start + 4 * count * i)
        if fh.readinto(values.data.cast("B")) != 4 * count:
            return None, "truncated"
        if sums[i] != crc32c.crc32c(values.data):
            return None, "its checksum does not match"
        if count and not (values.max() <= _LIMIT and values.min() >= -_LIMIT):  # NaN fails too
            return None, "values that are not cosines"
        out[row] = values.astype(np.float32, copy=False)
    return out, ""


def _unlink(path: Path, size: int) -> int:
    try:
        path.unlink()
    except OSError:
        return 0
    return size
