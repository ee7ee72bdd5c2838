"""The decode process: one task at a time from the pool's pipe, until told to stop.

Started with ``spawn`` by :class:`~pipeline.decode.DecodePool`; :func:`child_main` is the process
target. Before its first task the process ignores Ctrl-C (the parent handles it), caps its
address space at ``max_memory`` (``RLIMIT_AS``), writes no core files (``RLIMIT_CORE`` 0), opens
at most 256 files (``RLIMIT_NOFILE``), writes no file larger than ``max_file`` bytes
(``RLIMIT_FSIZE``: only a fetched job URL is spooled to disk), drops every environment variable
but a few harmless ones from ``os.environ`` (a decoder cannot ``getenv`` the worker's secrets;
the launch environment in ``/proc/<pid>/environ`` is the parent's) and watches FFmpeg's log for
failed allocations
(:mod:`pipeline.decode.ffmpeg_log`). Each task runs the in-process decoder
(:func:`~pipeline.decode.decode_bytes`, :func:`~pipeline.decode.decode_uri`, or a
:class:`~pipeline.decode.RawStreamDecoder` kept per stream id) and replies in the format of
:mod:`pipeline.decode.wire`; a typed error is reported by name. After running out of memory the
process replies and exits at once, so the pool starts a fresh one.
"""

from __future__ import annotations

import os
import signal
from multiprocessing.connection import Connection
from typing import Any, Final

from pipeline.decode.ffmpeg_log import watch_allocations
from pipeline.decode.frames import Frame
from pipeline.decode.raw import RawStreamDecoder
from pipeline.decode.sources import decode_bytes, decode_uri
from pipeline.decode.wire import frame_metas, result_meta, send_pictures
from pipeline.errors import ClipguardError, ConfigError, DecodeError

__all__ = ["child_main"]


def _limit_memory(max_bytes: int) -> None:
    try:
        import resource
    except ImportError:  # not on POSIX: no cap
        return
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        max_bytes = min(max_bytes, hard)
    resource.setrlimit(resource.RLIMIT_AS, (max_bytes, hard))


_KEPT_ENV: Final = frozenset(
    {"PATH", "LANG", "LC_ALL", "TMPDIR", "TZ", "SSL_CERT_FILE", "SSL_CERT_DIR", "HOME"}
)
_MAX_FILES: Final = 256


def _limit_resources(max_file: int) -> None:
    try:
        import resource
    except ImportError:  # not on POSIX: no limits
        return
    for limit, value in (
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_NOFILE, _MAX_FILES),
        (resource.RLIMIT_FSIZE, max_file),
    ):
        _soft, hard = resource.getrlimit(limit)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        resource.setrlimit(limit, (value, hard))


def _minimal_environment() -> None:
    for name in list(os.environ):
        if name not in _KEPT_ENV:
            del os.environ[name]


def child_main(conn: Connection, max_memory: int, max_file: int = 1 << 31) -> None:
    """A decode process: one task at a time, from the pool's pipe, until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    if hasattr(signal, "SIGXFSZ"):  # over RLIMIT_FSIZE: a failed write, not a killed process
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    _minimal_environment()
    _limit_resources(max_file)
    _limit_memory(max_memory)
    watch_allocations()
    streams: dict[str, RawStreamDecoder] = {}
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        kind = message[0]
        if kind == "stop":
            return
        task_id: int = message[1]
        fatal = False
        # The error is kept until the reply is out: its traceback holds the decoder, and
        # freeing a decoder can block (FFmpeg's frame threads, after a failed allocation).
        error: BaseException | None = None
        try:
            payload = conn.recv_bytes() if kind in ("bytes", "feed") else b""
            reply = _child_task(kind, message, payload, streams)
        except DecodeError as e:
            error = e
            reply = ("error", task_id, type(e).__name__, str(e)), ()
        except MemoryError as e:  # RLIMIT_AS reached in Python code (FFmpeg's lands above)
            error, fatal = e, True
            reply = ("error", task_id, "LimitExceeded", f"decode process out of memory: {e}"), ()
        except ClipguardError as e:
            error = e
            reply = ("error", task_id, type(e).__name__, str(e)), ()
        except Exception as e:  # a bug, or a library failing in a way not mapped yet
            error = e
            reply = ("error", task_id, "DecodeCrash", f"unexpected {type(e).__name__}: {e}"), ()
        header, frames = reply
        if header[0] == "error" and header[2] == "LimitExceeded":
            fatal = fatal or "out of memory" in str(header[3])
        try:
            conn.send((*header, fatal))
            if frames:
                send_pictures(conn, frames)
            if fatal:  # give the memory back at once: the pool starts a fresh process
                os._exit(0)
            del reply, header, frames, error  # frees frames and decoders: may block
            conn.send(("ready",))
        except (OSError, EOFError):
            return


def _child_task(
    kind: str, message: tuple[Any, ...], payload: bytes, streams: dict[str, RawStreamDecoder]
) -> tuple[tuple[Any, ...], list[Frame] | tuple[Frame, ...]]:
    task_id = message[1]
    if kind in ("bytes", "uri"):
        if kind == "bytes":
            result = decode_bytes(payload, message[2], message[3])
        else:
            uri, options, content_type, ca_file, access = message[2:]
            result = decode_uri(
                uri, options, content_type=content_type, ca_file=ca_file, access=access
            )
        metas, side = frame_metas(result.frames)
        return ("ok", task_id, (result_meta(result), metas, side)), result.frames
    stream_id: str = message[2]
    if kind == "open":
        streams[stream_id] = RawStreamDecoder(message[3], message[4], fps=message[5])
        return ("ok", task_id, None), ()
    decoder = streams.get(stream_id)
    if decoder is None:
        raise ConfigError(f"stream {stream_id!r} is not open in this decode process")
    if kind == "feed":
        frames = decoder.feed(payload)
    else:
        del streams[stream_id]
        frames = decoder.flush()
    metas, side = frame_metas(frames)
    return ("ok", task_id, (None, metas, side)), frames
