"""Fetching CLIP weights into the cache, verified by SHA-256.

Downloads stream over plain ``urllib`` (``http``/``https`` only) into a temporary ``.part``
file next to the destination, hashing while they write; only a file whose SHA-256 matches the
expected one is moved into place, atomically, with :func:`os.replace`. Whatever goes wrong
(network error, short read, checksum mismatch, interruption) the partial file is deleted, so
the cache never holds a half-written or unverified file under its final name.

Mirrors
-------
Set ``CLIPGUARD_MODEL_MIRROR`` to a base URL to fetch registry models from a mirror instead
of their upstream URL. The file of a model is then looked up as::

    {CLIPGUARD_MODEL_MIRROR}/{sha256}/{filename}

for example ``https://mirror.example/clip/40d36571.../ViT-B-32.pt`` for ``ViT-B/32``, the
same layout as OpenAI's own server, so a mirror is a plain copy of it. Checksums are verified
exactly as for upstream downloads.

Models hosted on Hugging Face (SigLIP, SigLIP 2, open_clip checkpoints) are fetched file by
file in Hugging Face's own layout, from ``https://huggingface.co`` or from the mirror::

    {CLIPGUARD_MODEL_MIRROR}/{repo}/resolve/{revision}/{file}

into ``{cache}/{model name}/{file}``. A file whose registry entry has no SHA-256 downloads
unverified, with a warning (still through a ``.part`` file and an atomic rename).

OpenAI's releases are TorchScript archives, which run code when read: once the archive's
SHA-256 is confirmed it is converted to safetensors (``ViT-B-32.pt`` -> ``ViT-B-32.safetensors``
and its record, :mod:`pipeline.models.to_safetensors`), the only form workers load, and the
archive is deleted (kept with ``keep_archive``). A verified conversion already in the cache is
not downloaded again.

Weights under a restricted licence are refused unless it is accepted
(:mod:`pipeline.models.licenses`).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import re
import secrets
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path

from pipeline import __version__
from pipeline.errors import ChecksumMismatch, ConfigError, DownloadError
from pipeline.models.licenses import check_license
from pipeline.models.registry import ModelInfo, get_model_info

__all__ = ["download_file", "download_model"]

_log = logging.getLogger(__name__)

_MIRROR_ENV = "CLIPGUARD_MODEL_MIRROR"
_HF_ENDPOINT = "https://huggingface.co"
_SCHEMES = ("http", "https")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")

_Progress = Callable[[int, int | None], None]
"""Called as ``progress(bytes_done, bytes_total)``; the total is None when the server does
not say how large the file is."""


def download_file(
    url: str,
    dest: Path,
    *,
    sha256: str,
    timeout: float = 30.0,
    chunk_size: int = 1 << 20,
    progress: _Progress | None = None,
) -> Path:
    """Download ``url`` to ``dest`` and verify that its SHA-256 is ``sha256``.

    If ``dest`` already holds a file with that SHA-256 nothing is downloaded. Otherwise the
    file streams into a temporary ``.part`` file in ``dest``'s directory, is fsynced, and
    replaces ``dest`` atomically once its checksum is confirmed.

    Args:
        url: An ``http://`` or ``https://`` URL.
        dest: Where the file ends up; missing parent directories are created.
        sha256: The expected SHA-256, as 64 hex digits.
        timeout: Seconds to wait for the connection and for each read.
        chunk_size: Bytes read (and hashed) at a time.
        progress: Called with ``(bytes_done, bytes_total_or_None)`` as the download advances.

    Returns:
        ``dest``.

    Raises:
        ConfigError: The URL is not http(s), the checksum is malformed, or ``dest`` is not a
            regular file.
        DownloadError: The network failed, the server answered with an error status, or it
            sent fewer bytes than it announced. No partial file is left behind.
        ChecksumMismatch: The downloaded file's SHA-256 is not ``sha256``; it was deleted.
    """
    expected = _normalize_sha256(sha256)
    _check_url(url)
    dest = Path(dest)
    if dest.exists() and not dest.is_file():
        raise ConfigError(f"cannot download to {dest}: it exists and is not a regular file")
    if dest.is_file():
        actual = _sha256_of(dest)
        if actual == expected:
            _log.debug("%s is already present and verified; not downloading", dest)
            return dest
        _log.warning(
            "%s exists but its SHA-256 is %s, not %s; downloading it again", dest, actual, expected
        )
    return _fetch(
        url, dest, expected=expected, timeout=timeout, chunk_size=chunk_size, progress=progress
    )


def download_model(
    name: str,
    *,
    force: bool = False,
    progress: _Progress | None = None,
    accept_licenses: Iterable[str] | None = None,
    keep_archive: bool = False,
) -> Path:
    """Download the weights of registry model ``name`` into the cache and return their path.

    Nothing is downloaded when the cache already holds a verified copy, unless ``force``.
    Set ``CLIPGUARD_MODEL_MIRROR`` to fetch from a mirror (see the module docstring) and
    ``CLIPGUARD_CACHE_DIR`` to use another cache directory.

    Hugging Face models fetch every file the entry lists (weights, config, tokenizer) into
    one folder; the weights file's path is returned. OpenAI archives are converted to
    safetensors (the path returned) and deleted, unless ``keep_archive``.

    Raises:
        ConfigError: ``name`` is not a registry model, or it is bundled with clipguard (its
            weights ship inside the package and are never downloaded).
        LicenseNotAccepted: The weights' licence is restricted and not in
            ``accept_licenses`` or ``$CLIPGUARD_ACCEPT_LICENSES``.
        DownloadError, ChecksumMismatch: As for :func:`download_file`.
    """
    info = get_model_info(name)
    if info.bundled:
        raise ConfigError(
            f"{name} is bundled with clipguard and is never downloaded: its weights ship "
            f"inside the package (at {info.path()})"
        )
    check_license(info.name, info.license, accept=accept_licenses)
    if info.hf is not None:
        return _download_hf(info, force=force, progress=progress)
    if info.is_archive:
        return _download_archive(info, force=force, progress=progress, keep=keep_archive)
    url = _model_url(info)
    dest = info.path()
    _log.info("fetching %s from %s to %s", name, url, dest)
    if force:
        _check_url(url)
        return _fetch(url, dest, expected=_normalize_sha256(info.sha256), progress=progress)
    return download_file(url, dest, sha256=info.sha256, progress=progress)


def _download_archive(
    info: ModelInfo, *, force: bool, progress: _Progress | None, keep: bool
) -> Path:
    """An OpenAI archive fetched (unless its verified conversion is cached), converted to
    safetensors and, unless ``keep``, deleted; the converted file's path."""
    from pipeline.models.to_safetensors import convert_registry_archive, registry_conversion_ok

    if not force and registry_conversion_ok(info):
        _log.info("%s is converted and verified at %s; not downloading", info.name, info.path())
        return info.path()
    archive = info.archive_path()
    assert archive is not None
    url = _model_url(info)
    _log.info("fetching %s from %s to %s", info.name, url, archive)
    if force:
        _check_url(url)
        _fetch(url, archive, expected=_normalize_sha256(info.sha256), progress=progress)
    else:
        download_file(url, archive, sha256=info.sha256, progress=progress)
    converted = convert_registry_archive(info, archive)
    if not keep:
        for leftover in (archive, archive.with_name(f".{archive.name}.sha256.json")):
            with contextlib.suppress(OSError):
                leftover.unlink(missing_ok=True)
    return converted.path


def _download_hf(info: ModelInfo, *, force: bool, progress: _Progress | None) -> Path:
    """Every file of a Hugging Face entry into ``{cache}/{name}/``; the weights file's path."""
    assert info.hf is not None
    base = os.environ.get(_MIRROR_ENV, "").strip() or _HF_ENDPOINT
    folder = info.path().parent
    for file in info.hf.files:
        url = info.hf.url(base, file.name)
        _check_url(url)
        dest = folder / file.name
        if file.sha256:
            expected = _normalize_sha256(file.sha256)
            if force:
                _fetch(url, dest, expected=expected, progress=progress)
            else:
                download_file(url, dest, sha256=expected, progress=progress)
        elif force or not dest.is_file():
            _log.warning(
                "%s: no published SHA-256 in the registry for %s; downloading it unverified",
                info.name,
                file.name,
            )
            _fetch(url, dest, expected=None, progress=progress)
    return info.path()


def _model_url(info: ModelInfo) -> str:
    """The URL to fetch ``info``'s weights from: its own, or the mirror's if one is set."""
    mirror = os.environ.get(_MIRROR_ENV, "").strip()
    if mirror:
        return f"{mirror.rstrip('/')}/{info.sha256}/{info.filename}"
    return info.url


def _normalize_sha256(sha256: str) -> str:
    value = sha256.strip().lower()
    if not _SHA256_RE.fullmatch(value):
        raise ConfigError(f"not a SHA-256 (64 hex digits): {sha256!r}")
    return value


def _check_url(url: str) -> None:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() not in _SCHEMES or not parts.netloc:
        raise ConfigError(
            f"refusing to download {url!r}: only http:// and https:// URLs are allowed"
        )


def _sha256_of(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def _content_length(response: http.client.HTTPResponse) -> int | None:
    value = response.headers.get("Content-Length")
    if value is None:
        return None
    try:
        length = int(value)
    except ValueError:
        return None
    return length if length >= 0 else None


def _fetch(
    url: str,
    dest: Path,
    *,
    expected: str | None,
    timeout: float = 30.0,
    chunk_size: int = 1 << 20,
    progress: _Progress | None = None,
) -> Path:
    """Download ``url`` to ``dest`` through a ``.part`` file, whatever is there already;
    ``expected=None`` skips the checksum (files no SHA-256 is published for)."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DownloadError(f"cannot create the directory {dest.parent}: {e}") from e
    part = dest.with_name(f"{dest.name}.{secrets.token_hex(4)}.part")
    try:
        actual = _stream_to(url, part, timeout=timeout, chunk_size=chunk_size, progress=progress)
        if expected is not None and actual != expected:
            raise ChecksumMismatch(
                f"checksum mismatch for {url}: expected SHA-256 {expected}, got {actual}; "
                "the downloaded file was deleted"
            )
        os.replace(part, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            part.unlink(missing_ok=True)
        raise
    _fsync_dir(dest.parent)
    verified = "SHA-256 verified" if expected is not None else f"unverified, SHA-256 {actual}"
    _log.info("downloaded %s to %s (%s)", url, dest, verified)
    return dest


def _stream_to(
    url: str,
    part: Path,
    *,
    timeout: float,
    chunk_size: int,
    progress: _Progress | None,
) -> str:
    """Write the body at ``url`` to ``part`` (created new) and return its SHA-256."""
    # the scheme was checked by _check_url (and redirects are checked below): only http(s)
    headers = {"User-Agent": f"clipguard/{__version__}"}
    request = urllib.request.Request(url, headers=headers)  # noqa: S310
    digest = hashlib.sha256()
    done = 0
    total: int | None = None
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            final_url = response.geturl()
            if urllib.parse.urlsplit(final_url).scheme.lower() not in _SCHEMES:
                raise DownloadError(f"{url} redirected to {final_url!r}, which is not http(s)")
            total = _content_length(response)
            fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            with os.fdopen(fd, "wb") as out:
                if progress is not None:
                    progress(0, total)
                while chunk := response.read(chunk_size):
                    out.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress(done, total)
                out.flush()
                os.fsync(out.fileno())
    except urllib.error.HTTPError as e:
        raise DownloadError(f"downloading {url} failed: HTTP {e.code} {e.reason}") from e
    except urllib.error.URLError as e:
        raise DownloadError(f"downloading {url} failed: {_describe(e.reason)}") from e
    except TimeoutError as e:
        raise DownloadError(
            f"downloading {url} failed: timed out after {timeout:g} s without data "
            f"({_mb(done)} received)"
        ) from e
    except http.client.HTTPException as e:
        raise DownloadError(
            f"downloading {url} failed: bad HTTP response ({type(e).__name__}: {e})"
        ) from e
    except DownloadError:
        raise
    except OSError as e:
        raise DownloadError(f"downloading {url} failed: {_describe(e)}") from e
    if total is not None and done != total:
        raise DownloadError(
            f"downloading {url} failed: the connection closed after {done} of {total} bytes; "
            "the partial file was deleted"
        )
    return digest.hexdigest()


def _describe(reason: object) -> str:
    if isinstance(reason, TimeoutError):
        return "timed out"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason) or type(reason).__name__


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _fsync_dir(directory: Path) -> None:
    """Make the rename durable where the platform allows syncing a directory."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
