"""Where inputs come from: bytes in memory, local files, and http(s) URLs.

:func:`decode_bytes` decodes one input held in memory, :func:`decode_uri` one stored file
(path or ``file://``) or one ``http(s)://`` URL (FFmpeg's own network input, with connect and
read timeouts, restricted to the http, https, tcp and tls protocols, server certificates
verified). Local files are opened by Python and handed to FFmpeg as a file object, so FFmpeg
never parses a path (no ``concat:``, ``subfile,`` or other protocol prefixes); only regular
files are read, opened non-blocking (a FIFO cannot hang the open). Every other URL scheme is
refused with :class:`UnsupportedMedia`. URLs in messages are :func:`redact`-ed (no credentials,
no query).

With an :class:`~pipeline.decode.access.InputAccess` (scan jobs: the reference comes from a
Kafka record), files must lie under its roots and URLs are fetched by
:func:`~pipeline.decode.access.fetch_url` instead of FFmpeg: allowed hosts only, every address
and every redirect checked, the body bounded in a temporary file the decoder then reads.

The content type (given, or from the file extension) picks how the input is decoded
(:func:`~pipeline.decode.media.media_kind`): containers stream from the file or URL through
FFmpeg; raw streams and images are read whole (within ``Limits.max_input_bytes``) and decoded
from memory.
"""

from __future__ import annotations

import io
import os
import ssl
import time
from pathlib import Path
from typing import IO, cast
from urllib.parse import unquote, urlsplit
from urllib.request import url2pathname

import av

from pipeline.decode.access import InputAccess, fetch_url, open_input_file
from pipeline.decode.container import decode_container
from pipeline.decode.failures import map_error
from pipeline.decode.frames import DecodeResult
from pipeline.decode.image import decode_image
from pipeline.decode.media import (
    MediaKind,
    RawCodec,
    content_type_for,
    media_kind,
    normalize_content_type,
)
from pipeline.decode.options import DecodeOptions, Limits, ResolvedOptions
from pipeline.decode.raw import decode_raw_whole
from pipeline.errors import (
    DecodeError,
    DecodeTimeout,
    InputRefused,
    InvalidMedia,
    LimitExceeded,
    UnsupportedMedia,
)

__all__ = ["decode_bytes", "decode_uri", "redact"]


def decode_bytes(
    data: bytes | bytearray | memoryview,
    content_type: str,
    options: DecodeOptions,
) -> DecodeResult:
    """Decode one input held in memory, its format pinned by ``content_type``.

    ``options.threads`` None: 0, FFmpeg picks one thread per core. Runs in this process: for
    untrusted input use :class:`~pipeline.decode.pool.DecodePool`.
    """
    opts = DecodeOptions.check(options).resolve(limits=Limits(), threads=0)
    kind, name = media_kind(content_type)
    ct = normalize_content_type(content_type)
    label = f"{ct} input of {len(data)} bytes"
    if len(data) > opts.limits.max_input_bytes:
        raise LimitExceeded(f"{label}: over the limit of {opts.limits.max_input_bytes} bytes")
    if len(data) == 0:
        raise InvalidMedia(f"{ct} input is empty (0 bytes)")
    deadline = time.monotonic() + opts.limits.timeout
    payload = bytes(data)
    if kind == "image":
        return decode_image(payload, name, opts, label=label, ct=ct)
    if kind == "raw":
        return decode_raw_whole(payload, cast(RawCodec, name), opts, ct=ct)
    return decode_container(
        io.BytesIO(payload), name, opts, label=label, content_type=ct, deadline=deadline
    )


def redact(uri: str) -> str:
    """A URL for messages: scheme, host and path; no credentials or query."""
    parts = urlsplit(uri)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}{parts.path}"


def _local_path(uri: str | os.PathLike[str]) -> Path | None:
    """The local path a URI names, None for http(s); refuses every other scheme."""
    if not isinstance(uri, str):
        return Path(os.fspath(uri))
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        return None
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise UnsupportedMedia(f"{uri!r}: file URLs must name a local file")
        return Path(url2pathname(unquote(parts.path)))
    if scheme == "" or (len(scheme) == 1 and os.name == "nt"):
        return Path(uri)
    raise UnsupportedMedia(f"{redact(uri)!r}: URL scheme {scheme!r} is not supported")


def _fetch(url: str, limits: Limits, label: str, ca_file: str | None) -> bytes:
    """The body of an http(s) URL, read through FFmpeg's network input (``data`` demuxer)."""
    chunks: list[bytes] = []
    total = 0
    deadline = time.monotonic() + limits.timeout
    try:
        with av.open(
            url,
            mode="r",
            format="data",
            options=_network_options(url, limits, ca_file),
            timeout=(limits.network_timeout, limits.network_timeout),
        ) as container:
            if container.size > limits.max_input_bytes:
                raise LimitExceeded(
                    f"{label}: {container.size} bytes, over the limit of {limits.max_input_bytes}"
                )
            for packet in container.demux():
                chunk = bytes(packet)
                total += len(chunk)
                if total > limits.max_input_bytes:
                    raise LimitExceeded(
                        f"{label}: more than {limits.max_input_bytes} bytes, the input limit"
                    )
                if time.monotonic() > deadline:
                    raise DecodeTimeout(f"{label}: reading took longer than {limits.timeout:g} s")
                chunks.append(chunk)
    except DecodeError:
        raise
    except Exception as e:
        raise map_error(e, label, network=True) from e
    return b"".join(chunks)


def _system_ca_file() -> str | None:
    """The CA bundle Python's ssl module would use, if it is a file."""
    paths = ssl.get_default_verify_paths()
    for candidate in (os.environ.get(paths.openssl_cafile_env), paths.cafile, paths.openssl_cafile):
        if candidate and os.path.isfile(candidate):
            return candidate
    return None


def _network_options(url: str, limits: Limits, ca_file: str | None) -> dict[str, str]:
    micros = str(int(limits.network_timeout * 1_000_000))
    options = {
        # a redirect or a nested open can only reach the network, never a local file
        "protocol_whitelist": "http,https,tcp,tls",
        "rw_timeout": micros,
        "timeout": micros,
        "reconnect": "0",
        "raw_packet_size": str(1 << 16),
        # FFmpeg does not check server certificates unless asked to
        "tls_verify": "1",
    }
    ca_file = ca_file or _system_ca_file()
    if ca_file:
        options["ca_file"] = ca_file
    return options


def decode_uri(
    uri: str | os.PathLike[str],
    options: DecodeOptions,
    *,
    content_type: str | None = None,
    ca_file: str | None = None,
    access: InputAccess | None = None,
) -> DecodeResult:
    """Decode a stored file (a path or ``file://`` URL) or an ``http(s)://`` URL.

    The content type comes from ``content_type`` when given, else from the file extension;
    playlists (``.m3u8``, ``.mpd``, ``.ffconcat``) and other URL schemes are refused with
    :class:`UnsupportedMedia`. Network reads use ``limits.network_timeout`` for connecting and
    for each read; the input is limited to ``limits.max_input_bytes`` (Content-Length when the
    server sends one, else bytes read). HTTPS server certificates are verified against
    ``ca_file`` (a PEM bundle; default: the one Python's :mod:`ssl` uses). ``options.threads``
    None: 0, FFmpeg picks one thread per core.
    """
    opts = DecodeOptions.check(options).resolve(limits=Limits(), threads=0)
    path = _local_path(uri)
    where = str(path) if path is not None else redact(str(uri))
    if access is not None:  # before anything else is read off the reference
        _check_reference(access, path, where)
    if content_type is None:
        content_type = content_type_for(path if path is not None else urlsplit(str(uri)).path)
    kind, name = media_kind(content_type)
    ct = normalize_content_type(content_type)
    label = f"{ct} {where!r}"
    deadline = time.monotonic() + opts.limits.timeout
    if path is None and access is not None:
        limits = opts.limits
        body = fetch_url(
            str(uri),
            access,
            limit=limits.max_input_bytes,
            timeout=limits.timeout,
            network_timeout=limits.network_timeout,
            label=label,
            ca_file=ca_file,
        )
        with body:
            return _decode_handle(body, kind, name, opts, label=label, ct=ct, deadline=deadline)
    if path is None:
        url = str(uri)
        if kind != "container":
            data = _fetch(url, opts.limits, label, ca_file)
            return _decode_fetched(data, kind, name, opts, label=label, ct=ct)
        return decode_container(
            url,
            name,
            opts,
            label=label,
            content_type=ct,
            deadline=deadline,
            open_options=_network_options(url, opts.limits, ca_file),
            network=True,
        )
    handle, length = open_input_file(path, access, limit=opts.limits.max_input_bytes, label=label)
    with handle:
        if length == 0:
            raise InvalidMedia(f"{label}: the file is empty (0 bytes)")
        return _decode_handle(handle, kind, name, opts, label=label, ct=ct, deadline=deadline)


def _check_reference(access: InputAccess, path: Path | None, where: str) -> None:
    if path is not None:
        if not access.path_allowed(os.path.realpath(path)):
            raise InputRefused(f"{where!r} is not under an allowed root")
        return
    host = urlsplit(where).hostname or ""
    if not access.host_allowed(host):
        raise InputRefused(f"{where!r}: host {host!r} is not an allowed URL host")


def _decode_handle(
    handle: IO[bytes],
    kind: MediaKind,
    name: str,
    opts: ResolvedOptions,
    *,
    label: str,
    ct: str,
    deadline: float,
) -> DecodeResult:
    if kind != "container":
        return _decode_fetched(handle.read(), kind, name, opts, label=label, ct=ct)
    return decode_container(handle, name, opts, label=label, content_type=ct, deadline=deadline)


def _decode_fetched(
    data: bytes, kind: MediaKind, name: str, opts: ResolvedOptions, *, label: str, ct: str
) -> DecodeResult:
    if not data:
        raise InvalidMedia(f"{label}: empty (0 bytes)")
    if kind == "image":
        return decode_image(data, name, opts, label=label, ct=ct)
    return decode_raw_whole(data, cast(RawCodec, name), opts, ct=ct)
