"""What a scan reads: command-line arguments to inputs, and the content hash of a file.

:func:`discover` turns command-line arguments into sources: files, folders (searched
recursively for video files, by extension), ``http(s)://`` URLs, and text files listing any of
these (``.txt``, ``.list``, ``.lst``; one a line, ``#`` comments, relative paths from the list's
folder). A path that does not exist, a URL scheme other than http(s) and a list file that
cannot be read become inputs with an ``error``: a bad argument never stops a scan.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal
from urllib.parse import unquote, urlsplit, urlunsplit
from urllib.request import url2pathname

from pipeline.decode import content_type_for
from pipeline.errors import DecodeError, MediaUnavailable, UnsupportedMedia

__all__ = ["LIST_SUFFIXES", "ScanInput", "discover", "file_sha256"]

#: Suffixes of text files that list inputs, one a line.
LIST_SUFFIXES: Final = frozenset({".txt", ".list", ".lst"})
_HASH_CHUNK: Final = 1 << 20


@dataclass(frozen=True, slots=True)
class ScanInput:
    """One input to scan: its source name (stream id), or why it cannot be scanned."""

    source: str  # absolute path, or http(s) URL without credentials
    kind: Literal["file", "url"]
    error: DecodeError | None = None  # found unusable while listing (missing, unknown scheme)


def discover(args: Iterable[str | os.PathLike[str]]) -> list[ScanInput]:
    """The inputs named by ``args``, in order, each once; see the module docstring.

    A path that does not exist, a URL scheme other than http(s) and a list file that cannot
    be read become inputs with an ``error`` (reported per input, never raised); a folder
    without video files adds nothing."""
    found: dict[str, ScanInput] = {}
    for arg in args:
        _discover_one(os.fspath(arg), None, found, set())
    return list(found.values())


def _discover_one(
    arg: str, base: Path | None, found: dict[str, ScanInput], lists: set[str]
) -> None:
    parts = urlsplit(arg)
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        source = _without_credentials(arg)
        found.setdefault(source, ScanInput(source, "url"))
        return
    if scheme == "file":
        arg = url2pathname(unquote(parts.path))
    elif len(scheme) > 1:  # "c:" would be a Windows drive, not a scheme
        found.setdefault(
            arg,
            ScanInput(
                arg, "url", UnsupportedMedia(f"{arg!r}: URL scheme {scheme!r} is not supported")
            ),
        )
        return
    path = Path(arg).expanduser()
    if base is not None and not path.is_absolute():
        path = base / path
    source = os.path.abspath(path)
    if path.is_dir():
        for media in _walk(path):
            found.setdefault(media, ScanInput(media, "file"))
    elif path.suffix.lower() in LIST_SUFFIXES and path.is_file():
        if source in lists:  # a list that includes itself, directly or not
            return
        lists.add(source)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            found.setdefault(
                source,
                ScanInput(
                    source, "file", MediaUnavailable(f"{source}: list file cannot be read: {e}")
                ),
            )
            return
        for line in text.splitlines():
            entry = line.strip()
            if entry and not entry.startswith("#"):
                _discover_one(entry, path.parent, found, lists)
    elif path.exists():
        found.setdefault(source, ScanInput(source, "file"))
    else:
        found.setdefault(
            source, ScanInput(source, "file", MediaUnavailable(f"{source}: no such file or folder"))
        )


def _walk(folder: Path) -> list[str]:
    """Video files under ``folder``, recursively, sorted; hidden files and folders skipped."""
    out: list[str] = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and _is_video(name):
                out.append(os.path.abspath(os.path.join(root, name)))
    return out


def _is_video(name: str) -> bool:
    try:
        return content_type_for(name).startswith("video/")
    except UnsupportedMedia:
        return False


def _without_credentials(url: str) -> str:
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes; :class:`MediaUnavailable` when it cannot be read."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(_HASH_CHUNK):
                h.update(chunk)
    except OSError as e:
        raise MediaUnavailable(f"{os.fspath(path)}: cannot be read ({e.strerror or e})") from e
    return h.hexdigest()
