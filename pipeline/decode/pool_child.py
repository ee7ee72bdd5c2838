"""The decode process: one task at a time from the pool's pipe, until told to stop.

Started by :class:`~pipeline.decode.DecodePool` through :mod:`pipeline.decode.launch` (with a
minimal environment); :func:`child_main` is its entry. Before its first task the process
ignores Ctrl-C (the parent handles it), confines itself (:func:`pipeline.decode.sandbox.enter`:
resource limits and the system-call filter), watches FFmpeg's log for failed allocations
(:mod:`pipeline.decode.ffmpeg_log`) and says ``("hello", filter status)``. Each task first gets
its CPU budget (:func:`~pipeline.decode.sandbox.cpu_budget`), then runs the in-process decoder
(:func:`~pipeline.decode.decode_bytes`, :func:`~pipeline.decode.decode_uri`, or a
:class:`~pipeline.decode.RawStreamDecoder` kept per stream id) and replies in the format of
:mod:`pipeline.decode.wire`; a typed error is reported by name. After running out of memory the
process replies and exits at once, so the pool starts a fresh one.
"""

from __future__ import annotations

import contextlib
import os
import signal
from multiprocessing.connection import Connection
from typing import Any

from pipeline.decode.ffmpeg_log import watch_allocations
from pipeline.decode.frames import Frame
from pipeline.decode.raw import RawStreamDecoder
from pipeline.decode.sandbox import SandboxSettings, cpu_budget, enter
from pipeline.decode.sources import decode_bytes, decode_uri
from pipeline.decode.wire import frame_metas, result_meta, send_pictures
from pipeline.errors import ClipguardError, ConfigError, DecodeError

__all__ = ["child_main"]


def child_main(
    conn: Connection, settings: SandboxSettings, *, capabilities_dropped: bool = False
) -> None:
    """A decode process: one task at a time, from the pool's pipe, until told to stop
    (``capabilities_dropped``: the launch gave up every capability; it says so in its hello)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    if hasattr(signal, "SIGXFSZ"):  # over RLIMIT_FSIZE: a failed write, not a killed process
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    status = enter(settings)
    watch_allocations()
    if settings.preload_hashing:
        _preload_hashing()
    try:
        conn.send(("hello", status, capabilities_dropped))
    except (OSError, EOFError):
        return
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
        cpu_budget(message[2])
        fatal = False
        # The error is kept until the reply is out: its traceback holds the decoder, and
        # freeing a decoder can block (FFmpeg's frame threads, after a failed allocation).
        error: BaseException | None = None
        try:
            payload = conn.recv_bytes() if kind in ("bytes", "feed") else b""
            reply = _child_task(kind, message, payload, streams, settings)
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


def _preload_hashing() -> None:
    """Load the compiled PDQ code (numba's disk cache, filled by the pool) before the first
    task, so that no task waits for it; a failure here shows again at the first hashed frame,
    as that frame's error."""
    from pipeline.decode.hashing import prepare_hashing

    with contextlib.suppress(Exception):
        prepare_hashing()


def _child_task(
    kind: str,
    message: tuple[Any, ...],
    payload: bytes,
    streams: dict[str, RawStreamDecoder],
    settings: SandboxSettings,
) -> tuple[tuple[Any, ...], list[Frame] | tuple[Frame, ...]]:
    task_id = message[1]
    if kind == "call":  # tests only: see pipeline.decode.sandbox.allow_test_calls
        if not settings.test_calls:
            raise ConfigError("this decode process runs no calls (test hook off)")
        function, args = message[3:]
        return ("ok", task_id, (function(*args), [], 0)), ()
    if kind in ("bytes", "uri"):
        if kind == "bytes":
            result = decode_bytes(payload, message[3], message[4])
        else:
            uri, options, content_type, ca_file, access = message[3:]
            result = decode_uri(
                uri, options, content_type=content_type, ca_file=ca_file, access=access
            )
        metas, side = frame_metas(result.frames)
        return ("ok", task_id, (result_meta(result), metas, side)), result.frames
    stream_id: str = message[3]
    if kind == "open":
        streams[stream_id] = RawStreamDecoder(message[4], message[5], fps=message[6])
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
