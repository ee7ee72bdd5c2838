"""MD5 of whole files, read in fixed-size chunks (memory stays bounded whatever the size).

MD5 is what ThreatExchange and HMA exchange for exact copies of videos (``video_md5``): a
match means the very same bytes. It is not a security function here, only an identifier that
others already share, so :mod:`hashlib` is asked for it with ``usedforsecurity=False``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import IO

from pipeline.errors import HashError

__all__ = ["CHUNK_SIZE", "md5_chunks", "md5_file", "md5_stream"]

CHUNK_SIZE = 1 << 20  # 1 MiB a read


def md5_stream(
    f: IO[bytes], *, max_bytes: int | None = None, chunk_size: int = CHUNK_SIZE
) -> bytes:
    """The MD5 digest (16 bytes) of everything left in ``f``; over ``max_bytes`` raises
    :class:`~pipeline.errors.HashError` (the file is not read further)."""
    if chunk_size < 1:
        raise HashError(f"chunk_size must be >= 1, not {chunk_size}")
    digest = hashlib.md5(usedforsecurity=False)
    total = 0
    while chunk := f.read(chunk_size):
        total += len(chunk)
        if max_bytes is not None and total > max_bytes:
            raise HashError(f"input is over the {max_bytes}-byte limit for hashing")
        digest.update(chunk)
    return digest.digest()


def md5_file(
    path: str | Path, *, max_bytes: int | None = None, chunk_size: int = CHUNK_SIZE
) -> bytes:
    """The MD5 digest (16 bytes) of the file at ``path``, read ``chunk_size`` bytes at a time."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            return md5_stream(f, max_bytes=max_bytes, chunk_size=chunk_size)
    except OSError as e:
        raise HashError(f"cannot read {p} to hash it: {e.strerror or e}") from e


def md5_chunks(chunks: Iterable[bytes]) -> bytes:
    """The MD5 digest of the concatenation of ``chunks`` (for bytes that arrive in pieces,
    such as a download or the segments of an upload)."""
    digest = hashlib.md5(usedforsecurity=False)
    for c in chunks:
        digest.update(c)
    return digest.digest()
