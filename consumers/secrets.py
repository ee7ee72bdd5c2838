"""Secrets read from files (Docker and Kubernetes secrets, ``/run/secrets/...``), never from the
environment, where every process the worker starts and anyone who can read
``/proc/<pid>/environ`` would see them.

:func:`read_secret_file` reads one secret: a regular file (opened without blocking, so a FIFO
cannot stall start-up), at most :data:`MAX_SECRET_BYTES`, UTF-8, one line (a trailing line
break, as ``echo`` writes, is dropped), not empty. Each failure is a
:class:`~pipeline.errors.ConfigError` that names the file and says what is wrong with it, and
never quotes what the file holds.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Final

from pipeline.errors import ConfigError

__all__ = ["MAX_SECRET_BYTES", "read_secret_file"]

#: A password file larger than this is not a password file (SCRAM passwords are short).
MAX_SECRET_BYTES: Final = 4096


def read_secret_file(path: Path, *, what: str = "secret") -> str:
    """The secret in ``path``; ``what`` names it in errors (e.g. ``"sasl_password_file"``)."""
    where = f"{what} {path}"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ConfigError(f"{where}: no such file (mount the secret there)") from None
    except PermissionError:
        raise ConfigError(
            f"{where}: unreadable: permission denied to user id {os.getuid()} (make the secret "
            "readable by the worker's user)"
        ) from None
    except OSError as e:
        raise ConfigError(f"{where}: unreadable: {e.strerror or e}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"{where}: not a regular file")
        if info.st_size > MAX_SECRET_BYTES:
            raise ConfigError(
                f"{where}: {info.st_size} bytes, over the {MAX_SECRET_BYTES} a secret may have "
                "(is it the right file?)"
            )
        data = _read_at_most(fd, MAX_SECRET_BYTES + 1, where)
    finally:
        os.close(fd)
    if len(data) > MAX_SECRET_BYTES:  # grew after fstat
        raise ConfigError(f"{where}: over the {MAX_SECRET_BYTES} bytes a secret may have")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: not UTF-8 text") from None
    text = text.removesuffix("\n").removesuffix("\r")
    if not text:
        raise ConfigError(f"{where}: empty (write the secret into it)")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise ConfigError(
            f"{where}: holds a line break or another control character; a secret file holds "
            "one line"
        )
    return text


def _read_at_most(fd: int, limit: int, where: str) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        try:
            chunk = os.read(fd, limit - size)
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                raise ConfigError(f"{where}: would block (not a regular file?)") from None
            raise ConfigError(f"{where}: unreadable: {e.strerror or e}") from None
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)
