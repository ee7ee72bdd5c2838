"""The pool's wire format: tasks to a decode process, results and errors back.

One :class:`multiprocessing.connection.Connection` per decode process; one task in flight on it.

A new process first says ``("hello", filter_status)`` (:func:`pipeline.decode.sandbox.enter`).
Parent to child: ``(kind, task_id, cpu_seconds, *header)``, then for ``bytes`` and ``feed`` the
input as one ``send_bytes`` message; ``("stop",)`` ends the process. ``cpu_seconds`` is the
call's CPU budget (``Limits.max_cpu``). Headers by kind:

==========  ===========================================================
kind        header
==========  ===========================================================
``bytes``   ``(content_type, options)``
``uri``     ``(uri, options, content_type, ca_file, access)``
``open``    ``(stream_id, codec, options, fps)``
``feed``    ``(stream_id,)``
``close``   ``(stream_id,)``
``call``    ``(function, args)``: tests only (``sandbox.allow_test_calls``)
==========  ===========================================================

``options`` is a :class:`~pipeline.decode.DecodeOptions` with ``limits`` (and, but for
``open``, ``threads``) already filled in by the pool.

Child to parent: ``("ok", task_id, meta, fatal)`` then the pictures, or ``("error", task_id,
error_name, message, fatal)``; then ``("ready",)`` once the call's frames and decoders are freed.
``fatal`` says the process leaves after this reply (it ran out of memory). ``meta`` is None for
``open``, else ``(result, metas, side)``: the :class:`~pipeline.decode.DecodeResult` fields but
its frames (``result``, None for stream calls), every frame's fields but its picture
(:func:`frame_metas`; its PDQ hash among them, when the options ask for one), and the
pictures' side. Each picture then follows as one ``send_bytes``
message straight from its array (:func:`send_pictures`), and the parent reads them back to back
into one buffer (:func:`receive_pictures`) whose views become the frames' images
(:func:`unpack_frames`): one copy fewer on each side than pickling the frames
(``bench/bench_decode.py`` measures both).
"""

from __future__ import annotations

import io
import pickle
from multiprocessing.connection import Connection
from typing import Any, Final, cast

import numpy as np

from pipeline import errors
from pipeline.decode.frames import DecodeResult, Frame
from pipeline.errors import ClipguardError, DecodeCrash

__all__ = [
    "FrameMeta",
    "build_value",
    "error_from",
    "frame_metas",
    "receive_pictures",
    "receive_reply",
    "result_meta",
    "send_pictures",
    "unpack_frames",
]

# the errors a child may report by name; anything else arrives as DecodeCrash
_ERRORS: Final[dict[str, type[ClipguardError]]] = {
    name: cls
    for name in (
        "ConfigError",
        "DecodeCrash",
        "DecodeError",
        "DecodeTimeout",
        "InputRefused",
        "InvalidMedia",
        "LimitExceeded",
        "MediaUnavailable",
        "UnsupportedMedia",
    )
    if isinstance(cls := getattr(errors, name), type)
}
#: The only classes a reply may name: a decode process is not trusted, and unpickling a global
#: it chose could run code in the worker. Everything else in a reply is plain data.
_REPLY_CLASSES: Final = frozenset(
    {("pipeline.hashes.pdq", "PdqHash"), ("pipeline.hashes.pdq", "DihedralHashes")}
)


class _ReplyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _REPLY_CLASSES:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"a decode process's reply names {module}.{name}")


def receive_reply(conn: Connection) -> Any:
    """A message from a decode process, unpickled with only plain data and the hash values
    allowed (:class:`pickle.UnpicklingError` otherwise), as the pickle documentation's
    "Restricting Globals" does."""
    return _ReplyUnpickler(io.BytesIO(conn.recv_bytes())).load()


#: A frame but its picture: pts, t, index, keyframe, source width and height, reason, tile,
#: PDQ hash (a small frozen value, pickled with the metas; None when not hashed).
FrameMeta = tuple[float, float, int, bool, int, int, str, int, Any]


def frame_metas(frames: list[Frame] | tuple[Frame, ...]) -> tuple[list[FrameMeta], int]:
    """Everything about the frames but their pictures, and the pictures' side."""
    metas: list[FrameMeta] = [
        (f.pts, f.t, f.index, f.keyframe, f.source_width, f.source_height, f.reason, f.tile, f.pdq)
        for f in frames
    ]
    return metas, (frames[0].image.shape[0] if frames else 0)


def send_pictures(conn: Connection, frames: list[Frame] | tuple[Frame, ...]) -> None:
    """Each picture straight from its array (no copy on this side)."""
    for frame in frames:
        conn.send_bytes(np.ascontiguousarray(frame.image).data.cast("B"))


def receive_pictures(conn: Connection, count: int, side: int) -> bytearray:
    """``count`` pictures read back to back into one buffer."""
    size = side * side * 3
    buffer = bytearray(count * size)
    for i in range(count):
        if conn.recv_bytes_into(buffer, i * size) != size:
            raise EOFError("a picture of the wrong size")
    return buffer


def unpack_frames(metas: list[FrameMeta], side: int, buffer: bytearray) -> list[Frame]:
    """Frames whose images are views into ``buffer`` (writable, C-contiguous)."""
    if not metas:
        return []
    block = np.frombuffer(buffer, dtype=np.uint8).reshape(len(metas), side, side, 3)
    return [
        Frame(
            image=block[i],
            pts=pts,
            t=t,
            index=index,
            keyframe=keyframe,
            source_width=width,
            source_height=height,
            reason=cast(Any, reason),
            tile=tile,
            pdq=pdq,
        )
        for i, (pts, t, index, keyframe, width, height, reason, tile, pdq) in enumerate(metas)
    ]


def result_meta(result: DecodeResult) -> dict[str, Any]:
    """A result's fields but its frames."""
    return {
        "width": result.width,
        "height": result.height,
        "duration": result.duration,
        "frames_decoded": result.frames_decoded,
        "codec": result.codec,
        "content_type": result.content_type,
        "start_pts": result.start_pts,
        "fps": result.fps,
        "decode_errors": result.decode_errors,
        "first_error": result.first_error,
    }


def error_from(name: str, message: str) -> ClipguardError:
    """The typed error a child reported by name (:class:`DecodeCrash` for unknown names)."""
    return _ERRORS.get(name, DecodeCrash)(message)


def build_value(kind: str, meta: Any, buffer: bytearray) -> Any:
    """What a call's future resolves to: None (open), frames (feed, close), a result, or
    (``call``) the function's return value."""
    if kind == "open":
        return None
    if kind == "call":
        return meta[0]
    info, metas, side = meta
    frames = unpack_frames(metas, side, buffer)
    if info is None:
        return frames
    return DecodeResult(frames=tuple(frames), **info)
