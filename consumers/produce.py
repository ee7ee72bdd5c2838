"""The test producer: a video file, cut into MPEG-TS segments, onto ``clipguard.segments``.

:func:`segment_video` copies the video packets of a file (no re-encode) into MPEG-TS segments
of about ``segment_seconds``, each starting at a keyframe; :func:`produce_file` sends them as
a live ingest edge would: key = stream id, headers ``content-type: video/mp2t``, ``stream-id``,
``seq`` (0, 1, 2, ...) and ``start-ts`` (seconds of the segment's first frame in the stream's
timeline, counted from the file's first frame). Only the video stream is copied; audio and
other streams are dropped.

MPEG-TS segments do not start at timestamp 0 (the muxer adds a delay): a frame's stream time is
``start-ts`` + (its time - the time of the segment's first frame).
"""

from __future__ import annotations

import io
import itertools
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Final

import av

from consumers.worker.segments import (
    CONTENT_TYPE_HEADER,
    END_HEADER,
    FPS_HEADER,
    SEQ_HEADER,
    START_TS_HEADER,
    STREAM_ID_HEADER,
)
from pipeline.errors import (
    ClipguardError,
    ConfigError,
    InvalidMedia,
    MediaUnavailable,
    UnsupportedMedia,
)

__all__ = [
    "CONTENT_TYPE",
    "DEFAULT_MAX_SEGMENT_BYTES",
    "ProduceError",
    "RawChunk",
    "Segment",
    "SegmentTooLarge",
    "produce_file",
    "raw_chunks",
    "segment_video",
]

_log = logging.getLogger(__name__)

CONTENT_TYPE: Final = "video/mp2t"
DEFAULT_MAX_SEGMENT_BYTES: Final = 8 * 1024 * 1024
"""Largest segment :func:`produce_file` sends. Apache Kafka refuses records over the broker's
``message.max.bytes`` (about 1 MiB by default) and the topic's ``max.message.bytes``: raise
those to match on a real cluster. Tansu enforces no limit."""
_REQUEST_OVERHEAD: Final = 64 * 1024  # record batch, headers and key around one segment
_SEND_TIMEOUT: Final = 30.0  # seconds to wait for each acknowledgement


class ProduceError(ClipguardError, RuntimeError):
    """A segment could not be sent to, or was not acknowledged by, the broker."""


class SegmentTooLarge(ProduceError, ValueError):
    """A segment is over the size limit: cut shorter segments or raise the limit."""


@dataclass(frozen=True, slots=True)
class Segment:
    """One MPEG-TS segment cut from a video file."""

    seq: int  # 0, 1, 2, ... in stream order
    start_ts: float  # seconds of the first frame, from the file's first frame
    duration: float  # seconds from the first frame to the end of the last one
    frames: int  # video packets (frames) in the segment
    data: bytes  # the MPEG-TS bytes


@contextmanager
def _open_video(path: Path) -> Iterator[tuple[Any, Any]]:
    """The open container of a video file and its first video stream; typed errors for a
    missing file, one FFmpeg cannot read, and one without video."""
    if not path.is_file():
        raise MediaUnavailable(f"{path}: no such file")
    try:
        container = av.open(str(path))
    except av.FFmpegError as e:
        raise InvalidMedia(f"{path}: not a media file FFmpeg can read: {e}") from e
    with container:
        if not container.streams.video:
            kinds = ", ".join(s.type for s in container.streams) or "none"
            raise UnsupportedMedia(f"{path}: no video stream (streams: {kinds})")
        yield container, container.streams.video[0]


def segment_video(path: str | Path, *, segment_seconds: float = 2.0) -> Iterator[Segment]:
    """Cut the video stream of ``path`` into MPEG-TS segments at keyframes, by copying packets.

    A new segment starts at the first keyframe at least ``segment_seconds`` after the start of
    the current one, so segments are as long as that or longer (up to the next keyframe).
    Frames before the file's first keyframe cannot be decoded on their own and are dropped.
    Raises :class:`~pipeline.errors.MediaUnavailable` for a missing file,
    :class:`~pipeline.errors.UnsupportedMedia` for one with no video stream and
    :class:`~pipeline.errors.InvalidMedia` for one that is not media.
    """
    if not segment_seconds > 0:
        raise ConfigError(f"segment_seconds must be positive, not {segment_seconds}")
    path = Path(path)
    with _open_video(path) as (container, stream):
        time_base = stream.time_base
        if time_base is None:
            raise InvalidMedia(f"{path}: the video stream has no time base")
        cutter = _Cutter(stream, time_base, segment_seconds)
        try:
            for packet in container.demux(stream):
                if packet.size == 0 or packet.pts is None:
                    continue  # the demuxer's end-of-stream packet, or one with no timestamp
                done = cutter.add(packet)
                if done is not None:
                    yield done
        except av.FFmpegError as e:
            raise InvalidMedia(f"{path}: cannot read packets: {e}") from e
        last = cutter.finish()
        if last is not None:
            yield last
        if cutter.seq == 0:
            raise InvalidMedia(f"{path}: the video stream has no keyframe")
        if cutter.dropped:
            _log.warning("%s: dropped %d frame(s) before the first keyframe", path, cutter.dropped)


class _Cutter:
    """Collects packets into the current segment; hands back the finished one at each cut."""

    def __init__(self, stream: Any, time_base: Fraction, segment_seconds: float) -> None:
        self._stream = stream
        self._tb = time_base
        self._cut_ticks = segment_seconds / float(time_base)
        self._origin: int | None = stream.start_time  # the file's first pts
        self.seq = 0
        self.dropped = 0
        self._out: Any = None
        self._out_stream: Any = None
        self._buf = io.BytesIO()
        self._first_key_pts = 0
        self._min_pts = 0
        self._end_pts = 0
        self._frames = 0

    def add(self, packet: Any) -> Segment | None:
        pts: int = packet.pts
        if self._origin is None:
            self._origin = pts
        finished = None
        if packet.is_keyframe and (
            self._out is None or pts - self._first_key_pts >= self._cut_ticks - 0.5
        ):
            finished = self.finish()
            self._open(pts)
        if self._out is None:
            self.dropped += 1
            return None
        self._min_pts = min(self._min_pts, pts)
        self._end_pts = max(self._end_pts, pts + (packet.duration or 0))
        self._frames += 1
        packet.stream = self._out_stream
        self._out.mux(packet)
        return finished

    def _open(self, pts: int) -> None:
        self._buf = io.BytesIO()
        self._out = av.open(self._buf, "w", format="mpegts")
        self._out_stream = self._out.add_stream_from_template(self._stream)
        self._first_key_pts = self._min_pts = self._end_pts = pts
        self._frames = 0

    def finish(self) -> Segment | None:
        if self._out is None:
            return None
        self._out.close()
        self._out = None
        assert self._origin is not None
        segment = Segment(
            seq=self.seq,
            start_ts=max(0.0, float((self._min_pts - self._origin) * self._tb)),
            duration=float((self._end_pts - self._min_pts) * self._tb),
            frames=self._frames,
            data=self._buf.getvalue(),
        )
        self.seq += 1
        return segment


OnSent = Callable[["Segment | RawChunk", int, int], None]
"""Called after each acknowledged record with its segment (or raw chunk), partition and offset."""


@dataclass(frozen=True, slots=True)
class RawChunk:
    """A piece of a raw Annex-B H.264/HEVC byte stream, cut at an arbitrary byte."""

    seq: int  # 0, 1, 2, ...
    at: float  # seconds into the stream of the last frame the chunk completes (for pacing)
    data: bytes


def raw_chunks(path: str | Path, *, chunk_bytes: int = 64 * 1024) -> Iterator[RawChunk]:
    """The video stream of ``path`` as a raw Annex-B byte stream (H.264 or HEVC only), in
    chunks of ``chunk_bytes`` (the last one shorter): what a camera pushing its elementary
    stream sends. The chunks do not respect frame or NAL unit boundaries."""
    if chunk_bytes < 1:
        raise ConfigError(f"chunk_bytes must be positive, not {chunk_bytes}")
    path = Path(path)
    with _open_video(path) as (container, stream):
        codec = stream.codec_context.name
        if codec not in _RAW_FORMATS:
            raise UnsupportedMedia(
                f"{path}: raw streams are H.264 or HEVC, and this video is {codec}"
            )
        time_base = stream.time_base or Fraction(1, 90000)
        origin = stream.start_time
        buf = io.BytesIO()
        out = av.open(buf, "w", format=_RAW_FORMATS[codec])  # applies the Annex-B filter
        out_stream = out.add_stream_from_template(stream)
        seq, at, pending = 0, 0.0, b""
        try:
            for packet in container.demux(stream):
                if packet.size == 0 or packet.pts is None:
                    continue
                if origin is None:
                    origin = packet.pts
                at = max(at, float((packet.pts - origin) * time_base))
                packet.stream = out_stream
                out.mux(packet)
                pending += buf.getvalue()
                buf.seek(0)
                buf.truncate()
                while len(pending) >= chunk_bytes:
                    yield RawChunk(seq, at, pending[:chunk_bytes])
                    pending = pending[chunk_bytes:]
                    seq += 1
        except av.FFmpegError as e:
            raise InvalidMedia(f"{path}: cannot read packets: {e}") from e
        out.close()
        pending += buf.getvalue()
        while pending:
            yield RawChunk(seq, at, pending[:chunk_bytes])
            pending = pending[chunk_bytes:]
            seq += 1


_RAW_FORMATS: Final = {"h264": "h264", "hevc": "hevc"}
_RAW_CONTENT_TYPES: Final = {"h264": "video/h264", "hevc": "video/h265"}


@dataclass(frozen=True, slots=True)
class _Record:
    seq: int
    at: float  # seconds after the first record that a live source would send it
    data: bytes
    headers: list[tuple[str, bytes]]
    what: Segment | RawChunk


def _segment_records(segments: Iterator[Segment], key: bytes) -> Iterator[_Record]:
    for segment in segments:
        yield _Record(
            segment.seq,
            segment.start_ts,
            segment.data,
            [
                (CONTENT_TYPE_HEADER, CONTENT_TYPE.encode()),
                (STREAM_ID_HEADER, key),
                (SEQ_HEADER, str(segment.seq).encode()),
                (START_TS_HEADER, repr(segment.start_ts).encode()),
            ],
            segment,
        )


def _raw_records(path: Path, chunk_bytes: int, key: bytes) -> Iterator[_Record]:
    with av.open(str(path)) as container:  # raw_chunks checked it is readable
        stream = container.streams.video[0]
        content_type = _RAW_CONTENT_TYPES[stream.codec_context.name]
        rate = stream.average_rate
    for chunk in raw_chunks(path, chunk_bytes=chunk_bytes):
        headers = [
            (CONTENT_TYPE_HEADER, content_type.encode()),
            (STREAM_ID_HEADER, key),
            (SEQ_HEADER, str(chunk.seq).encode()),
        ]
        if chunk.seq == 0:
            headers.append((START_TS_HEADER, b"0.0"))
        if rate:
            headers.append((FPS_HEADER, repr(float(rate)).encode()))
        yield _Record(chunk.seq, chunk.at, chunk.data, headers, chunk)


def produce_file(
    bootstrap: str,
    path: str | Path,
    *,
    stream_id: str,
    topic: str = "clipguard.segments",
    segment_seconds: float = 2.0,
    realtime: bool = False,
    raw: bool = False,
    chunk_bytes: int = 64 * 1024,
    end_stream: bool = True,
    max_segment_bytes: int = DEFAULT_MAX_SEGMENT_BYTES,
    connect_timeout: float = 10.0,
    on_sent: OnSent | None = None,
) -> int:
    """Send the segments of a video file to ``topic`` and return how many were sent.

    Every record has key ``stream_id`` (so all segments of one stream land on one partition)
    and the headers ``content-type``, ``stream-id``, ``seq`` and ``start-ts``; each is sent with
    ``acks=all`` and its acknowledgement awaited before this returns. ``realtime`` paces the
    segments as a live source would: segment n goes out ``start_ts`` seconds after the first.
    ``raw`` sends the raw H.264/HEVC byte stream instead, in chunks of ``chunk_bytes`` cut at
    any byte (content type ``video/h264`` or ``video/h265``, an ``fps`` header, ``start-ts`` on
    the first chunk). ``end_stream`` marks the last record with ``stream-end: 1``, which closes
    the stream's open incidents in the worker.
    Raises :class:`SegmentTooLarge` before sending a segment over ``max_segment_bytes``, and
    :class:`ProduceError` if the broker cannot be reached within ``connect_timeout`` seconds or
    does not acknowledge a segment. The file is checked (first segment cut) before connecting.
    """
    if not stream_id:
        raise ConfigError("stream_id must not be empty")
    if max_segment_bytes < 1:
        raise ConfigError(f"max_segment_bytes must be positive, not {max_segment_bytes}")
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    from consumers.kafka_auth import client_security

    key = stream_id.encode()
    records: Iterator[_Record] = (
        _raw_records(Path(path), chunk_bytes, key)
        if raw
        else _segment_records(segment_video(path, segment_seconds=segment_seconds), key)
    )
    first = next(records)  # a missing or unusable file fails here, before any connection
    try:
        producer = KafkaProducer(
            bootstrap_servers=bootstrap,
            client_id=f"clipguard-produce-{stream_id}",
            acks="all",
            max_request_size=max_segment_bytes + _REQUEST_OVERHEAD,
            request_timeout_ms=int(_SEND_TIMEOUT * 1000),
            max_block_ms=int(_SEND_TIMEOUT * 1000),
            bootstrap_timeout_ms=int(connect_timeout * 1000),
            linger_ms=5,
            **client_security(),
        )
    except KafkaError as e:
        raise ProduceError(f"cannot connect to the broker at {bootstrap}: {e}") from e
    try:
        return _send_all(
            producer,
            topic,
            key,
            itertools.chain([first], records),
            limit=max_segment_bytes,
            path=path,
            realtime=realtime,
            end_stream=end_stream,
            on_sent=on_sent,
        )
    except KafkaError as e:
        raise ProduceError(f"producing {path} to {topic} on {bootstrap} failed: {e}") from e
    finally:
        producer.close(timeout=_SEND_TIMEOUT)


def _send_all(
    producer: Any,
    topic: str,
    key: bytes,
    records: Iterator[_Record],
    *,
    limit: int,
    path: str | Path,
    realtime: bool,
    end_stream: bool,
    on_sent: OnSent | None,
) -> int:
    """Send every record (the last marked as the stream's end if ``end_stream``), paced as a
    live source when ``realtime``; the number acknowledged. :class:`SegmentTooLarge` at the
    first record over ``limit`` bytes (those before it are sent)."""
    sent = 0
    started = time.monotonic()
    pending: list[tuple[_Record, Any]] = []
    upcoming = next(records, None)
    while upcoming is not None:
        record = upcoming
        if len(record.data) > limit:
            raise SegmentTooLarge(
                f"{path}: segment {record.seq} (at {record.at:.3f} s) is {len(record.data)} "
                f"bytes, over the limit of {limit}: use shorter segments (--segment-seconds) "
                "or raise the limit (and the broker's message.max.bytes on Apache Kafka)"
            )
        upcoming = next(records, None)
        if realtime:
            delay = started + record.at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        headers = list(record.headers)
        if upcoming is None and end_stream:
            headers.append((END_HEADER, b"1"))
        future = producer.send(topic, key=key, value=record.data, headers=headers)
        pending.append((record, future))
        if realtime:  # a live source: each segment acknowledged before the next is cut
            sent += _await(pending, topic, on_sent)
    producer.flush(timeout=_SEND_TIMEOUT)
    return sent + _await(pending, topic, on_sent)


def _await(pending: list[tuple[_Record, Any]], topic: str, on_sent: OnSent | None) -> int:
    """Wait for every pending send's acknowledgement, in order; empties ``pending``."""
    from kafka.errors import KafkaError

    count = 0
    for record, future in pending:
        try:
            meta = future.get(timeout=_SEND_TIMEOUT)
        except KafkaError as e:
            raise ProduceError(
                f"segment {record.seq} ({len(record.data)} bytes) was not acknowledged by "
                f"{topic}: {e}"
            ) from e
        count += 1
        if on_sent is not None:
            on_sent(record.what, meta.partition, meta.offset)
    pending.clear()
    return count
