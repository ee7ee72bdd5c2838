"""Weights checked against their registry SHA-256 every time they are loaded.

A download is checked once (:mod:`pipeline.models.download`); a file in the cache can change
after that (a shared volume, a mistaken copy, a planted file). :func:`verified_sha256` hashes
the file before anything parses it and compares with the registry's digest, raising
:class:`~pipeline.errors.ChecksumMismatch` on a difference. Hashing a 600 MB checkpoint takes a
second or two, so a result is remembered beside the file (``.<name>.sha256.json``: size,
modification time in nanoseconds, digest) and reused while size and mtime are unchanged; where
the cache is mounted read-only (recommended: ``docker/README.md``) nothing is written and the
file is hashed at each load.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Final

from pipeline.errors import ChecksumMismatch

__all__ = ["verified_sha256"]

_log = logging.getLogger(__name__)
_CHUNK: Final = 1 << 22


def _memo_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.sha256.json")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def verified_sha256(path: Path, expected: str | None, *, remember: bool = True) -> str:
    """The SHA-256 of ``path`` (hex), checked against ``expected`` when given (raising
    :class:`ChecksumMismatch`); with ``remember``, kept beside the file by size and mtime (see
    the module docstring)."""
    if not remember:
        fresh = _sha256(path)
        _check(path, fresh, expected)
        return fresh
    info = path.stat()
    stamp = {"size": info.st_size, "mtime_ns": info.st_mtime_ns}
    memo = _memo_path(path)
    digest: str | None = None
    with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
        data = json.loads(memo.read_text(encoding="utf-8"))
        if {k: data.get(k) for k in stamp} == stamp and isinstance(data.get("sha256"), str):
            digest = data["sha256"]
    if digest is None:
        digest = _sha256(path)
        try:
            tmp = memo.with_name(memo.name + f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps({**stamp, "sha256": digest}), encoding="utf-8")
            os.replace(tmp, memo)
        except OSError as e:  # a read-only cache: hash again next time
            _log.debug("cannot remember the hash of %s: %s", path, e)
    _check(path, digest, expected)
    return digest


def _check(path: Path, digest: str, expected: str | None) -> None:
    if expected is not None and digest != expected.strip().lower():
        raise ChecksumMismatch(
            f"{path}: SHA-256 {digest} is not the registry's {expected}; the file changed "
            "since it was downloaded: remove it and download it again"
        )
