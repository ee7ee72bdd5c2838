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
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Final

import av

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
    "Segment",
    "SegmentTooLarge",
    "produce_file",
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
        stream = container.streams.video[0]
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


OnSent = Callable[[Segment, int, int], None]
"""Called after each acknowledged segment with the segment, its partition and its offset."""


def produce_file(
    bootstrap: str,
    path: str | Path,
    *,
    stream_id: str,
    topic: str = "clipguard.segments",
    segment_seconds: float = 2.0,
    realtime: bool = False,
    max_segment_bytes: int = DEFAULT_MAX_SEGMENT_BYTES,
    connect_timeout: float = 10.0,
    on_sent: OnSent | None = None,
) -> int:
    """Send the segments of a video file to ``topic`` and return how many were sent.

    Every record has key ``stream_id`` (so all segments of one stream land on one partition)
    and the headers ``content-type``, ``stream-id``, ``seq`` and ``start-ts``; each is sent with
    ``acks=all`` and its acknowledgement awaited before this returns. ``realtime`` paces the
    segments as a live source would: segment n goes out ``start_ts`` seconds after the first.
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

    key = stream_id.encode()
    segments = segment_video(path, segment_seconds=segment_seconds)
    first = next(segments)  # a missing or unusable file fails here, before any connection
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
        )
    except KafkaError as e:
        raise ProduceError(f"cannot connect to the broker at {bootstrap}: {e}") from e
    sent = 0
    try:
        started = time.monotonic()
        pending: list[tuple[Segment, Any]] = []
        for segment in itertools.chain([first], segments):
            if len(segment.data) > max_segment_bytes:
                raise SegmentTooLarge(
                    f"{path}: segment {segment.seq} (at {segment.start_ts:.3f} s) is "
                    f"{len(segment.data)} bytes, over the limit of {max_segment_bytes}: use "
                    "shorter segments (--segment-seconds) or raise the limit (and the broker's "
                    "message.max.bytes on Apache Kafka)"
                )
            if realtime:
                delay = started + segment.start_ts - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            headers = [
                ("content-type", CONTENT_TYPE.encode()),
                ("stream-id", key),
                ("seq", str(segment.seq).encode()),
                ("start-ts", repr(segment.start_ts).encode()),
            ]
            future = producer.send(topic, key=key, value=segment.data, headers=headers)
            pending.append((segment, future))
            if realtime:  # a live source: each segment acknowledged before the next is cut
                sent += _await(pending, topic, on_sent)
        producer.flush(timeout=_SEND_TIMEOUT)
        sent += _await(pending, topic, on_sent)
    except KafkaError as e:
        raise ProduceError(f"producing {path} to {topic} on {bootstrap} failed: {e}") from e
    finally:
        producer.close(timeout=_SEND_TIMEOUT)
    return sent


def _await(pending: list[tuple[Segment, Any]], topic: str, on_sent: OnSent | None) -> int:
    """Wait for every pending send's acknowledgement, in order; empties ``pending``."""
    from kafka.errors import KafkaError

    count = 0
    for segment, future in pending:
        try:
            meta = future.get(timeout=_SEND_TIMEOUT)
        except KafkaError as e:
            raise ProduceError(
                f"segment {segment.seq} ({len(segment.data)} bytes) was not acknowledged by "
                f"{topic}: {e}"
            ) from e
        count += 1
        if on_sent is not None:
            on_sent(segment, meta.partition, meta.offset)
    pending.clear()
    return count
