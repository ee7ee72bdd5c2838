"""Segments: a record of the segments topic, its headers parsed and its media checked.

Header names are the contract with every producer (``clipguard produce`` uses these constants):

==================  =========================================================================
header              meaning
==================  =========================================================================
``content-type``    the media type (MPEG-TS, MP4, WebM, raw H.264/HEVC, a still image)
``stream-id``       the stream; equal to the record key when given (the key picks the
                    partition: a header that differs would split a stream across partitions)
``seq``             the stream's segment number, 0 to 2**63-1 (default: the record offset)
``start-ts``        stream-timeline seconds of the segment's first frame (raw streams: optional)
``fps``             frame rate of a raw stream, whose chunks carry no timestamps (optional)
``stream-end``      ``1`` on a stream's last segment: its open incidents close
==================  =========================================================================

:func:`parse_headers` turns them into a :class:`SegmentHeaders` (raising :class:`HeaderError`);
:func:`check_media` refuses an empty, oversized or truncated value before anything decodes it.
:class:`Segment` is one consumed record and everything the worker learns about it on its way.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from kafka.structs import TopicPartition

from pipeline.decode import RAW_TYPES, Frame, normalize_content_type
from pipeline.errors import ClipguardError, InvalidMedia, LimitExceeded
from pipeline.policies.judge import FrameRef

__all__ = [
    "CONTENT_TYPE_HEADER",
    "END_HEADER",
    "FPS_HEADER",
    "MAX_STREAM_ID_CHARS",
    "SEQ_HEADER",
    "START_TS_HEADER",
    "STREAM_ID_HEADER",
    "HeaderError",
    "Phase",
    "Segment",
    "SegmentHeaders",
    "check_media",
    "parse_headers",
]

CONTENT_TYPE_HEADER: Final = "content-type"
STREAM_ID_HEADER: Final = "stream-id"
SEQ_HEADER: Final = "seq"
START_TS_HEADER: Final = "start-ts"
#: Frame rate of a raw H.264/HEVC stream (its chunks carry no timestamps); optional.
FPS_HEADER: Final = "fps"
#: A segment header that ends its stream ("1"): open incidents close, the stream's state goes.
END_HEADER: Final = "stream-end"

_TS_PACKET: Final = 188
#: Longest stream id, in characters (ids name streams in logs, metrics and checkpoints).
MAX_STREAM_ID_CHARS: Final = 256
_MAX_SEQ: Final = (1 << 63) - 1
_SEQ_DIGITS: Final = 19

Phase = Literal["pending", "outputs", "checkpoint", "done"]


class HeaderError(ClipguardError, ValueError):
    """A segment's headers are missing or malformed: it goes to the dead-letter topic."""


@dataclass(frozen=True, slots=True)
class SegmentHeaders:
    """What a segment's headers say, validated."""

    stream_id: str
    content_type: str  # normalised
    raw: bool  # a raw H.264/HEVC byte-stream chunk
    seq: int
    start_ts: float | None  # None only for raw chunks
    fps: float | None
    end: bool


def _text(value: bytes, name: str) -> str:
    try:
        return value.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise HeaderError(f"header {name!r} is not UTF-8") from None


def _number(text: str, name: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise HeaderError(f"header {name} is not a number: {text!r}") from None


def _stream_id(header: str | None, key: bytes | None) -> str:
    """The stream id: the record key, which a ``stream-id`` header must repeat."""
    try:
        keyed = key.decode("utf-8") if key else ""
    except UnicodeDecodeError:
        raise HeaderError("the record key is not UTF-8") from None
    if header and header != keyed:
        raise HeaderError(
            "the stream-id header differs from the record key (the key picks the partition: "
            "set both to the stream id)"
        )
    stream = keyed
    if not stream:
        raise HeaderError("no stream id: set the record key to the stream id")
    if len(stream) > MAX_STREAM_ID_CHARS:
        raise HeaderError(f"the stream id is over {MAX_STREAM_ID_CHARS} characters")
    if not stream.isprintable():
        raise HeaderError("the stream id has control characters")
    return stream


def _seq(text: str) -> int:
    if not (text.isascii() and text.isdigit() and len(text) <= _SEQ_DIGITS):
        raise HeaderError(f"header seq must be a whole number from 0 to 2**63-1: {text[:40]!r}")
    seq = int(text)
    if seq > _MAX_SEQ:
        raise HeaderError(f"header seq must be a whole number from 0 to 2**63-1: {text!r}")
    return seq


def parse_headers(
    headers: list[tuple[str, bytes]], *, key: bytes | None, offset: int
) -> SegmentHeaders:
    """The segment's headers, validated; :class:`HeaderError` names the first problem."""
    values = {name.lower(): _text(value, name) for name, value in headers}
    stream = _stream_id(values.get(STREAM_ID_HEADER), key)
    content_type = values.get(CONTENT_TYPE_HEADER)
    if not content_type:
        raise HeaderError("no content-type header")
    content_type = normalize_content_type(content_type)
    raw = content_type in RAW_TYPES
    seq_text = values.get(SEQ_HEADER)
    seq = _seq(seq_text) if seq_text is not None else offset
    start: float | None = None
    start_text = values.get(START_TS_HEADER)
    if start_text is not None:
        start = _number(start_text, START_TS_HEADER)
        if not math.isfinite(start) or start < 0:
            raise HeaderError(f"header start-ts must be a finite number >= 0, not {start_text!r}")
    elif not raw:
        raise HeaderError("no start-ts header (seconds of the segment's first frame)")
    fps: float | None = None
    fps_text = values.get(FPS_HEADER)
    if fps_text is not None:
        fps = _number(fps_text, FPS_HEADER)
        if not (math.isfinite(fps) and 0 < fps <= 1000):
            raise HeaderError(f"header fps must be in (0, 1000], not {fps_text!r}")
    end = values.get(END_HEADER, "").lower() in ("1", "true", "yes")
    return SegmentHeaders(stream, content_type, raw, seq, start, fps, end)


def check_media(value: bytes | None, content_type: str, limit: int) -> None:
    """Refuse a value that cannot be a whole segment: none, over ``limit`` bytes, or an MPEG-TS
    segment cut short on its way (not a whole number of 188-byte packets: FFmpeg would decode
    the frames before the cut and say nothing)."""
    if not value:
        raise HeaderError("the record has no value (empty segment)")
    if len(value) > limit:
        raise LimitExceeded(
            f"{content_type} segment of {len(value)} bytes is over the limit of {limit} bytes "
            "(decode.max_input_bytes)"
        )
    if content_type == "video/mp2t" and len(value) % _TS_PACKET:
        raise InvalidMedia(
            f"truncated MPEG-TS segment: {len(value)} bytes is not a whole number of "
            f"{_TS_PACKET}-byte packets"
        )


@dataclass(eq=False)
class Segment:
    """One consumed record and what the worker learns about it on its way.

    Its life: accepted -> decoding -> encoding -> ready (or failed: ``error``) -> judged in
    stream order -> outputs published (``phase`` "outputs") -> its stream's checkpoint
    published ("checkpoint") -> "done". ``cancelled``: its partition went away; drop it."""

    tp: TopicPartition
    offset: int
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]
    stream_id: str
    info: SegmentHeaders | None = None  # None when the headers could not be parsed
    arrived: float = field(default_factory=time.monotonic)
    created: float | None = None  # the record's timestamp (producer's clock), seconds
    error: BaseException | None = None
    attempts: int = 0  # decode attempts
    decode_started: float = 0.0
    frames: list[Frame] = field(default_factory=list)
    refs: list[FrameRef] = field(default_factory=list)
    embeddings: Any = None  # (frames, E) NumPy array once encoded
    ready: bool = False  # decoded and encoded (or failed): may be judged
    cancelled: bool = False
    phase: Phase = "pending"
    carrier: bool = False  # not a record: carries the outputs of an idle stream's close

    @property
    def seq(self) -> int:
        return self.info.seq if self.info is not None else self.offset

    @property
    def end(self) -> bool:
        """The stream's last segment (or an idle stream's close)."""
        return self.carrier or (self.info is not None and self.info.end)

    @property
    def where(self) -> str:
        return f"{self.tp.topic}[{self.tp.partition}]@{self.offset}"

    def log(self) -> dict[str, str]:
        """Log fields: ``stream=... at=topic[p]@offset``."""
        return {"stream": self.stream_id or "?", "where": self.where}

    def release(self) -> None:
        """Judged: the pictures, embeddings and media are no longer needed."""
        self.frames, self.embeddings, self.value = [], None, b""
