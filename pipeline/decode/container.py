"""Containers (MPEG-TS, MP4 / MOV, WebM / Matroska): the first video stream, frame by frame.

:func:`decode_container` runs in four steps:

1. **open** the input with the demuxer its content type pins (never probed); bytes and files
   come in through Python, so no demuxer may open anything else by itself
   (``protocol_whitelist`` "none"; network inputs get their own whitelist from
   :mod:`pipeline.decode.sources`);
2. **header checks**, before any frame is decoded: the first video stream (cover art is not one;
   audio and every other stream are discarded by the demuxer), its width x height, frame count
   and duration against the :class:`~pipeline.decode.Limits`;
3. **the packet loop**: packets demuxed and decoded in order, each decoded frame through the
   :class:`~pipeline.decode.frames.FrameSink` (limits, sampling, fitting). A corrupt packet is
   skipped and counted, a demuxer error ends the input where it is; the loop stops early once
   the sampler's ``max_frames`` are picked;
4. **the timeline**: ``t`` from the smallest packet pts of the input, ``index`` the rank of a
   frame's pts among all packets' (see :mod:`pipeline.decode.frames`), and the duration.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Final

import av
import av.error
import numpy as np
import numpy.typing as npt
from av.container import InputContainer
from av.stream import Discard, Disposition
from av.video.stream import VideoStream

from pipeline.decode.failures import describe_error, map_error
from pipeline.decode.frames import DEFAULT_FPS, DecodeResult, Frame, FrameSink, Picked, frames_from
from pipeline.decode.options import Limits, ResolvedOptions
from pipeline.decode.sampling import Sampling
from pipeline.errors import (
    DecodeError,
    DecodeTimeout,
    InvalidMedia,
    LimitExceeded,
    MediaUnavailable,
    UnsupportedMedia,
)

__all__ = ["SKIP_BIDIR_BELOW", "configure_decoder", "decode_container", "seconds", "skips_bidir"]

_FILE_BUFFER: Final = 1 << 20  # bytes per read when FFmpeg reads a Python file object
# decoders that ignore skip_frame="NONKEY" (measured): keyframes mode drops their other packets
_NO_SKIP_FRAME: Final = frozenset({"vp8", "vp9", "libvpx", "libvpx-vp9"})
# with Sampling.skip_b_frames, fps sampling at most this fraction of the stream's frame rate
# skips B-frames: every picked frame is then an I- or P-frame, after the wanted time by up to the
# distance between reference frames. Measured on 720p H.264 at 25 fps with 2 B-frames
# (bench/bench_skip_frame.py): decode time 0.57x, picked frames within 60 ms of the wanted times
# at 2 fps; with x264's adaptive B-frames on low-motion video the gap reached 0.3 s, which is why
# it is not the default
SKIP_BIDIR_BELOW: Final = 0.25


def seconds(ticks: int | None, time_base: Fraction | None) -> float | None:
    """``ticks * time_base`` in seconds, None when either is unknown."""
    if ticks is None or time_base is None:
        return None
    return float(ticks * time_base)


def configure_decoder(
    ctx: av.VideoCodecContext, opts: ResolvedOptions, *, stream_fps: float | None = None
) -> None:
    """Threads, ``max_pixels`` and ``skip_frame`` of a video decoder: keyframes mode decodes
    keyframes only; with ``skip_b_frames``, fps sampling at no more than a quarter of
    ``stream_fps`` (when known) skips B-frames (:data:`SKIP_BIDIR_BELOW`)."""
    ctx.options = {"max_pixels": str(opts.limits.max_pixels)}
    ctx.thread_count = opts.threads
    if opts.sampling.keyframes_only:
        # skipped frames leave frame threads nothing to overlap: slice threads only
        ctx.thread_type = "SLICE"
        ctx.skip_frame = "NONKEY"
        return
    ctx.thread_type = "AUTO" if opts.threads != 1 else "SLICE"
    if skips_bidir(opts.sampling, stream_fps):
        ctx.skip_frame = "BIDIR"


def skips_bidir(sampling: Sampling, stream_fps: float | None) -> bool:
    """Whether a stream of ``stream_fps`` sampled by ``sampling`` is decoded without B-frames."""
    return (
        sampling.skip_b_frames
        and sampling.mode == "fps"
        and stream_fps is not None
        and stream_fps > 0
        and sampling.fps <= SKIP_BIDIR_BELOW * stream_fps
    )


def decode_container(
    source: Any,
    demuxer: str,
    opts: ResolvedOptions,
    *,
    label: str,
    content_type: str,
    deadline: float,
    open_options: dict[str, str] | None = None,
    network: bool = False,
) -> DecodeResult:
    """Decode the first video stream of a container read from ``source`` (a file object, or a
    URL when ``network``) with FFmpeg's ``demuxer``; see the module docstring."""
    sink = FrameSink(opts, label, deadline)
    container = _open(source, demuxer, opts.limits, label, open_options, network)
    with container:
        video = _video_stream(container, label, demuxer)
        ctx = video.codec_context
        if ctx is None:  # a truncated or broken header names no codec FFmpeg knows
            raise InvalidMedia(f"{label}: the video stream has no known codec")
        header_duration = _check_header(container, video, ctx, sink, demuxer, network=network)
        rate = video.average_rate or video.guessed_rate
        configure_decoder(ctx, opts, stream_fps=float(rate) if rate else None)
        sar = video.sample_aspect_ratio
        sink.fitter.sar = sar if sar else None
        loop = _PacketLoop(
            video,
            ctx,
            sink,
            network=network,
            # decoders that ignore skip_frame: in keyframes mode, only keyframe packets reach them
            skip_nonkey=opts.sampling.keyframes_only and ctx.name in _NO_SKIP_FRAME,
        )
        loop.run(container.demux(video))
        if sink.decoded == 0:
            why = f" ({loop.first_error})" if loop.first_error else ""
            raise InvalidMedia(f"{label}: no frame could be decoded{why}")
        frames, origin = loop.timeline()
        display = sink.display or (ctx.width, ctx.height)
        rate = video.average_rate
        return DecodeResult(
            frames=tuple(frames),
            width=display[0],
            height=display[1],
            duration=loop.duration(header_duration),
            frames_decoded=sink.decoded,
            codec=ctx.codec.canonical_name if ctx.codec else ctx.name,
            content_type=content_type,
            start_pts=origin,
            fps=float(rate) if rate else None,
            decode_errors=loop.errors,
            first_error=loop.first_error,
        )


# --------------------------------------------------------------------------- open and headers


def _open(
    source: Any,
    demuxer: str,
    limits: Limits,
    label: str,
    open_options: dict[str, str] | None,
    network: bool,
) -> InputContainer:
    # bytes and files come in through Python: no demuxer may open anything else by itself
    options = {"max_pixels": str(limits.max_pixels), "protocol_whitelist": "none"}
    options.update(open_options or {})
    timeout = (limits.network_timeout, limits.network_timeout) if network else None
    try:
        container: InputContainer = av.open(
            source,
            mode="r",
            format=demuxer,
            options=options,
            buffer_size=_FILE_BUFFER,
            timeout=timeout,
        )
    except Exception as e:  # PyAV raises FFmpegError subclasses, and OSError for I/O
        raise map_error(e, label, network=network) from e
    return container


def _video_stream(container: InputContainer, label: str, demuxer: str) -> VideoStream:
    """The first video stream that is not cover art; every other stream is discarded."""
    streams = list(container.streams)
    if not streams:
        raise InvalidMedia(f"{label}: no streams found: not a valid {demuxer} input")
    videos = [s for s in container.streams.video if not (s.disposition & Disposition.attached_pic)]
    if not videos:
        kinds = sorted({s.type for s in streams})
        error = UnsupportedMedia if "audio" in kinds else InvalidMedia  # audio-only is valid
        raise error(f"{label}: no video stream (streams: {', '.join(kinds)})")
    video = videos[0]
    for s in streams:
        if s is not video:
            s.discard = Discard.all
    return video


def _check_header(
    container: InputContainer,
    video: VideoStream,
    ctx: av.VideoCodecContext,
    sink: FrameSink,
    demuxer: str,
    *,
    network: bool,
) -> float | None:
    """The limits checked on what the header says, before any frame is decoded; returns the
    duration the header gives (None if it gives none)."""
    label, limits = sink.label, sink.opts.limits
    if ctx.width and ctx.height:
        sink.check_pixels(ctx.width, ctx.height, "header says")
    if video.frames and video.frames > limits.max_frames:
        raise LimitExceeded(
            f"{label}: header says {video.frames} frames, over the limit of {limits.max_frames}"
        )
    header_duration = seconds(video.duration, video.time_base)
    if header_duration is None and demuxer != "mpegts" and container.duration:
        header_duration = container.duration / av.time_base
    if header_duration is not None and header_duration > limits.max_duration:
        raise LimitExceeded(
            f"{label}: header says {header_duration:.1f} s, over the duration limit of "
            f"{limits.max_duration:g} s"
        )
    if network and container.size > limits.max_input_bytes:
        raise LimitExceeded(
            f"{label}: {container.size} bytes, over the limit of {limits.max_input_bytes}"
        )
    return header_duration


# --------------------------------------------------------------------------- the packet loop


@dataclass(eq=False)
class _PacketLoop:
    """Demuxes and decodes one video stream, keeping what the timeline needs."""

    video: VideoStream
    ctx: av.VideoCodecContext
    sink: FrameSink
    network: bool
    skip_nonkey: bool  # only keyframe packets reach the decoder
    packets_pts: list[int] = field(default_factory=list)  # pts of every video packet
    pts_missing: bool = False  # a packet had no pts: indexes fall back to output order
    span_end: int | None = None  # largest packet pts + duration
    picked: list[Picked] = field(default_factory=list)
    errors: int = 0
    first_error: str | None = None
    stopped: bool = False  # the sampler's max_frames were reached
    drained: bool = False  # PyAV's final empty packet has drained the decoder

    def run(self, demuxed: Iterator[av.Packet[Any]]) -> None:
        """Every packet to the end (or to a demuxer error, or until stopped), then drain."""
        while not self.stopped:
            packet = self._next(demuxed)
            if packet is None:
                break
            self.sink.check_time()
            self.drained = not packet.size  # PyAV ends with an empty packet that drains
            if packet.size:
                self._note(packet)
                if self.skip_nonkey and not packet.is_keyframe:
                    continue
            frames = self._decode(packet)
            if frames is None:
                continue
            self._take(frames)
            self.stopped = self.sink.sampler.done
        if not self.stopped and not self.drained:
            self._drain()

    def _next(self, demuxed: Iterator[av.Packet[Any]]) -> av.Packet[Any] | None:
        """The next packet; None at the end, or after a demuxer error (which ends the input
        where it is, counted) unless that error is a timeout or a network failure."""
        try:
            return next(demuxed)
        except StopIteration:
            return None
        except Exception as e:
            if isinstance(e, DecodeError):
                raise
            mapped = map_error(e, self.sink.label, network=self.network)
            if isinstance(mapped, DecodeTimeout | MediaUnavailable):
                raise mapped from e
            self._count(e)
            return None

    def _note(self, packet: av.Packet[Any]) -> None:
        limits = self.sink.opts.limits
        if self.network and packet.pos is not None and packet.pos > limits.max_input_bytes:
            raise LimitExceeded(
                f"{self.sink.label}: read past {limits.max_input_bytes} bytes, the input limit"
            )
        if packet.pts is None:
            self.pts_missing = True
            return
        self.packets_pts.append(packet.pts)
        end = packet.pts + (packet.duration or 0)
        self.span_end = end if self.span_end is None else max(self.span_end, end)

    def _decode(self, packet: av.Packet[Any]) -> list[av.VideoFrame] | None:
        """The packet's frames; None when the packet is corrupt (skipped and counted)."""
        ctx, limits = self.ctx, self.sink.opts.limits
        try:
            return ctx.decode(packet)
        except Exception as e:
            mapped = map_error(e, self.sink.label, network=self.network)
            if not isinstance(mapped, InvalidMedia | UnsupportedMedia):  # else: skip the packet
                raise mapped from e
            if ctx.width * ctx.height > limits.max_pixels:
                raise LimitExceeded(
                    f"{self.sink.label}: the stream switched to {ctx.width}x{ctx.height}, over "
                    f"the limit of {limits.max_pixels} pixels"
                ) from e
            self.sink.check_memory(e)
            self._count(e)
            return None

    def _drain(self) -> None:
        try:
            self._take(self.ctx.decode(None))
        except DecodeError:
            raise
        except av.error.EOFError:
            pass
        except Exception as e:
            self._count(e)

    def _count(self, error: BaseException) -> None:
        self.errors += 1
        self.first_error = self.first_error or describe_error(error)

    def _take(self, frames: Sequence[av.VideoFrame]) -> None:
        sink, time_base = self.sink, self.video.time_base
        for frame in frames:
            ticks = frame.pts if frame.pts is not None else frame.dts
            pts = seconds(ticks, time_base)
            if pts is None:  # no timestamp at all: place it one frame after the last
                rate = self.video.average_rate
                step = 1.0 / float(rate) if rate else 1.0 / DEFAULT_FPS
                pts = (sink.origin or 0.0) + sink.decoded * step
            item = sink.push(frame, ticks, pts)
            if item is not None:
                self.picked.append(item)

    # ------------------------------------------------------------------ the timeline

    def _first_ticks(self) -> int | None:
        return min(self.packets_pts) if self.packets_pts else None

    def timeline(self) -> tuple[list[Frame], float]:
        """The picked frames with ``t`` and ``index``, and the input's start pts (seconds):
        ``t`` counts from the smallest packet pts, ``index`` is the rank of the frame's pts
        among all packets' (output order when a packet had none)."""
        sink = self.sink
        origin = seconds(self._first_ticks(), self.video.time_base)
        if origin is None or sink.origin is None or origin > sink.origin:
            origin = sink.origin if sink.origin is not None else 0.0
        ranks: npt.NDArray[np.int64] | None = None
        if self.packets_pts and not self.pts_missing:
            ranks = np.unique(np.asarray(self.packets_pts, dtype=np.int64))
        frames: list[Frame] = []
        for item in self.picked:
            if ranks is not None and item.pts_ticks is not None:
                index = int(np.searchsorted(ranks, item.pts_ticks, side="left"))
            else:
                index = item.order
            frames.extend(frames_from(item, t=max(0.0, item.pts - origin), index=index))
        return frames, origin

    def duration(self, header_duration: float | None) -> float:
        """Seconds of video: the packets' span, or the header's when decoding stopped early."""
        first_ticks, time_base = self._first_ticks(), self.video.time_base
        if self.stopped and header_duration is not None:
            return header_duration
        if self.span_end is not None and first_ticks is not None and time_base is not None:
            return float((self.span_end - first_ticks) * time_base)
        return header_duration or 0.0
