"""A cache of stored row groups' embeddings as raw float16, so a search reads no Parquet
embedding column.

A search scores every stored embedding it keeps against one query. Read from Parquet, the
embedding column (1 KB a frame) is decoded into fresh Arrow buffers every time: that decoding
was most of a search's time. The embeddings of one row group are a fact of that file's bytes,
so they are kept here once, as the raw little-endian float16 matrix the Parquet column holds,
one entry per row group of a stored file (1 KB a frame of disk, the size of the column). A
search then reads each entry in chunks straight into a small reused buffer (``os.preadv``:
no decoding, no allocation), checks the chunk and scores it while it is in the CPU's cache.

Entries live in ``<store>/_cache/matrices/`` (beside the cosine cache,
:mod:`pipeline.store.cosinecache`), or in any local folder given. A store on another filesystem
(``s3://``...) has no default cache. When the folder cannot be written, searches go on
uncached. The Parquet files stay the truth: an entry is only a copy, used when it matches.

An entry is ``MAGIC``, the header's length (4 bytes, little-endian), a JSON header, zero bytes
up to :data:`_ALIGN`, then the float16 values row after row. The header names the row group by
its stored file's path in the store (and the group's number), size and modification time
(nanoseconds), the number of frames and values a frame, and holds the CRC-32C of each chunk of
:data:`CHECK_ROWS` rows. An entry is used only when all of these match the file as it is now
and its size is exactly what the header says; each chunk's checksum is checked as the chunk is
read (:meth:`Matrix.read`), so a corrupt chunk is found before its values are used. Anything
wrong (a rewritten store file, a truncated or corrupt entry, a link, a pipe, a header of the
wrong shape) is a miss: the caller reads that row group from Parquet and the entry is replaced.
The entries are read with ``preadv`` and not memory-mapped: a mapped file truncated by another
process kills the reader with SIGBUS, a short read is only a miss. The cache is bounded
(:data:`DEFAULT_MAX_BYTES`): entries used least recently are removed first. No library keeps
"arrays keyed by a remote file's identity" with these checks, hence this small module.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import crc32c
import numpy as np
import numpy.typing as npt

from pipeline.store.behind import WriteBehind
from pipeline.store.cosinecache import CACHE_DIR, FileKey, read_head, trim_folder
from pipeline.store.location import StoreLocation

__all__ = ["CHECK_ROWS", "DEFAULT_MAX_BYTES", "MAX_BEHIND_BYTES", "Matrix", "MatrixCache"]

#: The default bound on the entries' total size (8 million 512-d frames).
DEFAULT_MAX_BYTES: Final = 8 << 30
_Embeddings = npt.NDArray[np.float16]

#: Most bytes of entries :meth:`MatrixCache.put_behind` takes for its writer at a time (held in
#: memory, or to be read again by the writer).
MAX_BEHIND_BYTES: Final = 512 << 20
#: Rows per checksum, and per chunk a search reads and scores at a time (4 MiB at 512-d).
CHECK_ROWS: Final = 4096
_FORMAT: Final = 1
_MAGIC: Final = b"CGMAT01\n"
_ALIGN: Final = 4096  # the values start on a page boundary
_MAX_DIM: Final = 8192
_U16 = npt.NDArray[np.uint16]
_log = logging.getLogger(__name__)


@dataclass(eq=False)
class Matrix:
    """An open, checked entry: ``count`` rows of ``dim`` float16 values at ``start`` of the
    file ``fd``, one checksum per :data:`CHECK_ROWS` rows. Close it (or use ``with``)."""

    fd: int
    start: int
    count: int
    dim: int
    sums: list[int]

    def chunks(self) -> list[tuple[int, int]]:
        """The (first row, end row) of each checked chunk."""
        return [(lo, min(lo + CHECK_ROWS, self.count)) for lo in range(0, self.count, CHECK_ROWS)]

    def read(self, lo: int, hi: int, into: _U16) -> _U16 | None:
        """Rows ``lo:hi`` (one chunk of :meth:`chunks`) read into ``into`` (at least that
        many rows of ``dim``, C-contiguous) as raw float16 bits; None when the file is short
        or the chunk's checksum does not match. Safe from any thread (the GIL is released
        while reading and checking)."""
        if lo % CHECK_ROWS or hi - lo > CHECK_ROWS or hi > self.count:
            raise ValueError(f"rows {lo}:{hi} are not a chunk of this entry")
        out = into[: hi - lo]
        if out.shape[1] != self.dim or not out.flags.c_contiguous:
            raise ValueError(f"a buffer of shape {into.shape} for rows of {self.dim}")
        view = out.data.cast("B")
        try:
            got = os.preadv(self.fd, [view], self.start + 2 * self.dim * lo)
        except OSError:
            return None
        if got != len(view) or crc32c.crc32c(view) != self.sums[lo // CHECK_ROWS]:
            return None
        return out

    def close(self) -> None:
        """Close the file (again: nothing)."""
        fd, self.fd = self.fd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)

    def __del__(self) -> None:  # one read ahead and dropped (a search that failed)
        self.close()

    def __enter__(self) -> Matrix:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class MatrixCache:
    """Float16 matrix entries in ``folder`` (created on the first write), at most
    ``max_bytes`` in all after :meth:`trim`."""

    def __init__(self, folder: str | Path, *, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, not {max_bytes}")
        self.folder = Path(folder)
        self.max_bytes = max_bytes
        self.writable = True
        self.hits = 0
        self.misses = 0
        self.rejected = 0  # entries present but not usable (stale, corrupt, hostile)
        self._behind = WriteBehind("matrix-cache-writer", self._write_held, self.trim)

    @classmethod
    def beside(
        cls, location: StoreLocation, *, max_bytes: int = DEFAULT_MAX_BYTES
    ) -> MatrixCache | None:
        """The cache inside a local store (``<root>/_cache/matrices``); None for other
        filesystems."""
        if not location.local:
            return None
        return cls(Path(location.root) / CACHE_DIR / "matrices", max_bytes=max_bytes)

    def path(self, key: FileKey) -> Path:
        name = hashlib.sha256(key.path.encode()).hexdigest()[:40]
        return self.folder / f"{name}.f16"

    def get(self, key: FileKey, count: int, dim: int | None = None) -> Matrix | None:
        """The open entry of the row group ``key`` (``count`` frames; ``dim`` values each
        when known) if its header matches and its size is whole, else None (a miss; its
        chunks' checksums are checked by :meth:`Matrix.read`)."""
        path = self.path(key)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            self.misses += 1
            return None
        except OSError:  # a link (O_NOFOLLOW), no permission...
            self.reject(path, "cannot be opened")
            return None
        try:
            found, why = _open_entry(fd, key, count, dim)
        except OSError as e:
            found, why = None, str(e)
        if found is None:
            os.close(fd)
            self.reject(path, why)
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # used now: the last to be trimmed
        self.hits += 1
        return found

    def reject(self, path: Path, why: str) -> None:
        """Count an entry that was present but not usable."""
        self.rejected += 1
        self.misses += 1
        _log.debug("matrix cache entry %s ignored: %s", path, why)

    def put(self, key: FileKey, emb: npt.NDArray[np.float16]) -> bool:
        """Keep the (count, dim) float16 embeddings of the row group ``key``; False when the
        folder cannot be written (the cache then stops writing for this object)."""
        if not self.writable:
            return False
        values = np.ascontiguousarray(emb, dtype="<f2")
        if values.ndim != 2 or not 0 < values.shape[1] <= _MAX_DIM:
            raise ValueError(f"embeddings of shape {values.shape}")
        count, dim = values.shape
        flat = values.reshape(-1).view(np.uint8)
        step = 2 * dim * CHECK_ROWS
        sums = [crc32c.crc32c(flat[i : i + step].data) for i in range(0, len(flat), step)]
        header = json.dumps(
            {
                "format": _FORMAT,
                "path": key.path,
                "size": key.size,
                "mtime_ns": key.mtime_ns,
                "count": count,
                "dim": dim,
                "check_rows": CHECK_ROWS,
                "crc32c": sums,
            },
            separators=(",", ":"),
        ).encode()
        head = _MAGIC + struct.pack("<I", len(header)) + header
        head += b"\0" * (-len(head) % _ALIGN)
        path = self.path(key)
        tmp = path.with_name(f".tmp-{uuid.uuid4().hex}")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with open(tmp, "xb") as fh:
                fh.write(head)
                fh.write(flat.data)
            os.replace(tmp, path)
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink()
            self.writable = False
            _log.warning(
                "matrix cache %s cannot be written (%s): going on uncached", self.folder, e
            )
            return False
        return True

    def put_behind(
        self,
        key: FileKey,
        emb: _Embeddings | Callable[[], _Embeddings | None],
        nbytes: int | None = None,
    ) -> bool:
        """:meth:`put` on a writer thread of the cache's own
        (:class:`~pipeline.store.behind.WriteBehind`), which starts writing at :meth:`flush`:
        the search filling the cache neither waits for the disk (a million frames are a
        gigabyte to write) nor shares the cores with the writing (measured: writing beside it
        made a first search twice as slow). ``emb`` is the embeddings, or a function the writer
        calls for them (``nbytes`` of them; None: nothing to write), so that the search need not
        keep its arrays alive until then. At most :data:`MAX_BEHIND_BYTES` of entries wait to
        be written; an entry beyond that is left out (a later search writes it): False. A
        process ends once what it was given is written."""
        if not self.writable:
            return False
        if callable(emb):
            if nbytes is None:
                raise ValueError("the size of the embeddings a function gives is needed")
            size = nbytes
        else:
            size = emb.nbytes
        return self._behind.offer((key, emb), size, MAX_BEHIND_BYTES)

    def _write_held(
        self,
        item: tuple[FileKey, _Embeddings | Callable[[], _Embeddings | None]],
    ) -> None:
        key, given = item
        emb = given() if callable(given) else given
        if emb is not None:  # None: nothing to write (the stored file changed since)
            self.put(key, emb)

    def flush(self, *, wait: bool = True) -> None:
        """End the writer thread once what :meth:`put_behind` was given is written, then trim
        the folder; ``wait``: return only then."""
        self._behind.flush(wait=wait)

    def trim(self) -> int:
        """Remove the entries used least recently until the rest fit the bound, and stale
        temporary files; the bytes removed."""
        return trim_folder(self.folder, ".f16", self.max_bytes)


def _open_entry(fd: int, key: FileKey, count: int, dim: int | None) -> tuple[Matrix | None, str]:
    """The entry open on ``fd`` if it is the whole entry of the row group ``key`` (else None
    and why)."""
    want = {
        "format": _FORMAT,
        "path": key.path,
        "size": key.size,
        "mtime_ns": key.mtime_ns,
        "count": count,
        "check_rows": CHECK_ROWS,
    }
    entry, why = read_head(fd, _MAGIC, "matrix", want)
    if entry is None:
        return None, why
    width, sums = entry.header.get("dim"), entry.header.get("crc32c")
    if not (
        isinstance(width, int)
        and not isinstance(width, bool)
        and 0 < width <= _MAX_DIM
        and (dim is None or width == dim)
    ):
        return None, f"{width!r} values a frame"
    if not (
        isinstance(sums, list)
        and len(sums) == -(-count // CHECK_ROWS)
        and all(isinstance(c, int) and not isinstance(c, bool) for c in sums)
    ):
        return None, "a header of the wrong shape"
    start = entry.end + -entry.end % _ALIGN
    if entry.size != start + 2 * width * count:
        return None, f"{entry.size} bytes, not the {start + 2 * width * count} announced"
    return Matrix(fd, start, count, width, sums), ""
