"""Decode: any video input to model-ready frames with exact timestamps.

Inputs, each pinned to one FFmpeg demuxer or decoder by its content type (never probed):

==========================================  ==========================================
content type                                decoded as
==========================================  ==========================================
``video/mp2t``                              MPEG-TS (``mpegts`` demuxer)
``video/mp4``, ``video/quicktime``          MP4 / MOV, fragmented MP4 too (``mov``)
``video/webm``, ``video/x-matroska``        WebM / Matroska (``matroska``)
``video/h264``, ``video/h265``              raw Annex-B byte streams (parser + decoder)
``image/jpeg``, ``image/png``, ``image/webp``  one still image, one frame
==========================================  ==========================================

Playlists (HLS, DASH, ffconcat) and every other type raise :class:`UnsupportedMedia`. From a
container the first video stream is decoded (cover art is not a video stream); audio and every
other stream are discarded by the demuxer.

:func:`decode_bytes` decodes one input held in memory, :func:`decode_uri` one stored file
(path or ``file://``) or one ``http(s)://`` URL (FFmpeg's own network input, with connect and
read timeouts, restricted to the http, https, tcp and tls protocols). Local files are opened by
Python and handed to FFmpeg as a file object, so FFmpeg never parses a path (no ``concat:``,
``subfile,`` or other protocol prefixes). :class:`RawStreamDecoder` decodes a raw H.264 or HEVC
byte stream that arrives in chunks cut at arbitrary byte boundaries.

Output: :class:`Frame` objects holding a ``(size, size, 3)`` uint8 RGB picture, fitted to the
square model input by ``fit``:

``pad`` (default)
    the whole frame scaled to fit, centred, black bars: nothing is cut off.
``crop``
    short side scaled to ``size``, centre square kept (CLIP's own preprocessing).
``tiles``
    short side scaled to ``size``, then two or three overlapping squares along the long side
    that together cover the whole frame (aspect above 3: three side-by-side squares, padded).
    Every tile is a :class:`Frame` of its own with ``tile`` 0, 1, 2 from left (or top).

Scaling and colour conversion run in FFmpeg's swscale (one reusable converter per input, one
swscale thread); only the small result becomes a numpy array. The display matrix (a rotated
phone video, JPEG EXIF orientation) is honoured in multiples of 90 degrees; mirroring is not.

Timestamps: ``pts`` is the frame's presentation time in seconds (pts * time base, as in the
input, so an MPEG-TS segment does not start at 0); ``t`` is seconds since the input's first frame
(the smallest video packet pts of the input, even when that frame could not be decoded), which a
stream worker adds to the segment's start time. ``index`` is the frame's presentation index within
the input, counted over every frame, sampled or not. Raw byte streams carry no timestamps: see
:class:`RawStreamDecoder`.

Safety: the :class:`Limits` are checked from the headers before anything is decoded where the
header tells (size in bytes, width and height, frame count, duration) and again on every decoded
frame; FFmpeg itself is given ``max_pixels`` so that no decoder allocates a larger picture. A
corrupt packet is skipped and counted (``DecodeResult.decode_errors``): a truncated or damaged
input yields the frames that could be decoded, and :class:`InvalidMedia` when there are none.
The in-process functions here cannot survive an FFmpeg crash or interrupt a hung decoder call;
untrusted input belongs in :class:`pipeline.decode.pool.DecodePool`, which runs them in
sandboxed processes with a hard wall-clock limit and a memory limit.
"""

from __future__ import annotations

import io
import logging
import math
import os
import ssl
import stat
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import IO, Any, Final, cast, get_args
from urllib.parse import unquote, urlsplit
from urllib.request import url2pathname

import av
import av.error
import numpy as np
import numpy.typing as npt
from av.stream import Discard, Disposition
from av.video.reformatter import Interpolation as _SwsInterpolation
from av.video.reformatter import VideoReformatter

from pipeline.decode.media import (
    CONTAINER_TYPES,
    IMAGE_TYPES,
    RAW_TYPES,
    RawCodec,
    content_type_for,
    media_kind,
    normalize_content_type,
)
from pipeline.decode.options import DecodeOptions, Fit, Interpolation, Limits, ResolvedOptions
from pipeline.decode.sampling import Reason, Sampler
from pipeline.errors import (
    ConfigError,
    DecodeError,
    DecodeTimeout,
    InvalidMedia,
    LimitExceeded,
    MediaUnavailable,
    UnsupportedMedia,
)

__all__ = [
    "CONTAINER_TYPES",
    "IMAGE_TYPES",
    "RAW_TYPES",
    "DecodeOptions",
    "DecodeResult",
    "Fit",
    "Frame",
    "Interpolation",
    "Limits",
    "RawCodec",
    "RawStreamDecoder",
    "content_type_for",
    "decode_bytes",
    "decode_uri",
    "normalize_content_type",
]

_RGBImage = npt.NDArray[np.uint8]

_SWS_FLAGS: Final[dict[str, _SwsInterpolation]] = {
    "fast_bilinear": _SwsInterpolation.FAST_BILINEAR,
    "bilinear": _SwsInterpolation.BILINEAR,
    "area": _SwsInterpolation.AREA,
    "bicubic": _SwsInterpolation.BICUBIC,
    "lanczos": _SwsInterpolation.LANCZOS,
}
_THUMB_SIDE: Final = 32  # scene-change thumbnails are 32 x 32 grey
_FILE_BUFFER: Final = 1 << 20  # bytes per read when FFmpeg reads a Python file object
_DEFAULT_RAW_FPS: Final = 25.0
# decoders that ignore skip_frame="NONKEY" (measured): keyframes mode drops their other packets
_NO_SKIP_FRAME: Final = frozenset({"vp8", "vp9", "libvpx", "libvpx-vp9"})


@dataclass(frozen=True, slots=True, eq=False)
class Frame:
    """One model-ready frame (or one tile of a frame)."""

    image: _RGBImage  # (size, size, 3) uint8 RGB, C-contiguous
    pts: float  # presentation time, seconds, on the input's own timeline
    t: float  # seconds since the input's first frame: pts - first pts
    index: int  # presentation index within the input, over all frames (sampled or not)
    keyframe: bool  # decoded from a keyframe (IDR / IRAP / intra)
    source_width: int  # the source frame as displayed (after rotation), pixels
    source_height: int
    reason: Reason  # why it was picked: "all", "fps", "keyframe", "scene", "image"
    tile: int = 0  # tile number for fit="tiles" (0 otherwise)


@dataclass(frozen=True, slots=True, eq=False)
class DecodeResult:
    """The frames picked from one input, with what was learnt about the source."""

    frames: tuple[Frame, ...]
    width: int  # source width as displayed (after rotation), pixels
    height: int  # source height as displayed
    duration: float  # seconds of video in the input (packet timestamps; header if stopped early)
    frames_decoded: int  # frames the decoder produced (keyframes mode: keyframes only)
    codec: str  # codec name, e.g. "h264", "hevc", "vp9", "av1", "mjpeg"
    content_type: str  # the normalised content type the input was decoded as
    start_pts: float = 0.0  # pts (seconds) of the input's first frame: frame.t = pts - start_pts
    fps: float | None = None  # average frame rate from the header, when known
    decode_errors: int = 0  # corrupt packets skipped (and a demuxer error ending the input early)
    first_error: str | None = None  # message of the first of those errors


# --------------------------------------------------------------------------- fitting


@dataclass(frozen=True, slots=True)
class _Geometry:
    scaled: tuple[int, int]  # swscale output (width, height), in the coded orientation
    turns: int  # np.rot90 turns (counter-clockwise) from coded to displayed orientation
    display: tuple[int, int]  # source (width, height) as displayed, pixels
    # per output square: (y, x, h, w) window of the scaled, displayed picture, and where that
    # window lands in the square (y, x); windows smaller than the square are padded
    windows: tuple[tuple[int, int, int, int, int, int], ...]


def _geometry(
    width: int, height: int, rotation: int, sar: Fraction | None, size: int, fit: Fit
) -> _Geometry:
    turns = round(rotation / 90) % 4
    disp_w, disp_h = (height, width) if turns % 2 else (width, height)
    # aspect as shown: non-square pixels (SAR) stretch the coded width
    aspect_w = float(width * sar) if sar and sar > 0 else float(width)
    shape_w, shape_h = (float(height), aspect_w) if turns % 2 else (aspect_w, float(height))
    long_side, short_side = max(shape_w, shape_h), min(shape_w, shape_h)
    wide = shape_w >= shape_h
    windows: list[tuple[int, int, int, int, int, int]] = []
    if fit == "crop":
        scale = size / short_side
        sw, sh = max(size, round(shape_w * scale)), max(size, round(shape_h * scale))
        windows.append(((sh - size) // 2, (sw - size) // 2, size, size, 0, 0))
    else:
        aspect = long_side / short_side
        tiles = 1 if fit == "pad" or aspect < 1.05 else min(3, math.ceil(aspect - 0.05))
        if tiles == 1:
            scale = size / long_side
        elif aspect <= 3.0:
            scale = size / short_side
        else:
            scale = 3 * size / long_side
        sw = min(max(1, round(shape_w * scale)), size if tiles == 1 else 3 * size)
        sh = min(max(1, round(shape_h * scale)), size if tiles == 1 else 3 * size)
        if tiles == 1:
            windows.append((0, 0, sh, sw, (size - sh) // 2, (size - sw) // 2))
        else:
            along = sw if wide else sh
            across = min(sh if wide else sw, size)
            step = (along - size) / (tiles - 1)
            for i in range(tiles):
                start = round(i * step)
                pad_across = (size - across) // 2
                if wide:
                    windows.append((0, start, across, size, pad_across, 0))
                else:
                    windows.append((start, 0, size, across, 0, pad_across))
    scaled = (sh, sw) if turns % 2 else (sw, sh)
    return _Geometry(scaled=scaled, turns=turns, display=(disp_w, disp_h), windows=tuple(windows))


class _Fitter:
    """Frame -> model-input squares, with one reusable swscale converter per target."""

    def __init__(self, size: int, fit: Fit, interpolation: Interpolation) -> None:
        self._size = size
        self._fit = fit
        self._flags = _SWS_FLAGS[interpolation]
        self._rgb = VideoReformatter()
        self._grey = VideoReformatter()
        self._cache: dict[tuple[int, int, int, Fraction | None], _Geometry] = {}
        self.sar: Fraction | None = None

    def geometry(self, frame: av.VideoFrame) -> _Geometry:
        key = (frame.width, frame.height, frame.rotation, self.sar)
        geo = self._cache.get(key)
        if geo is None:
            geo = _geometry(
                frame.width, frame.height, frame.rotation, self.sar, self._size, self._fit
            )
            self._cache[key] = geo
        return geo

    def fit(self, frame: av.VideoFrame) -> list[_RGBImage]:
        geo = self.geometry(frame)
        sw, sh = geo.scaled
        scaled = self._rgb.reformat(
            frame, sw, sh, "rgb24", interpolation=self._flags, dst_color_range="JPEG", threads=1
        )
        rgb = cast(_RGBImage, scaled.to_ndarray())
        if geo.turns:
            rgb = np.rot90(rgb, geo.turns)
        size = self._size
        out: list[_RGBImage] = []
        for y, x, h, w, py, px in geo.windows:
            window = rgb[y : y + h, x : x + w]
            if h == size and w == size:
                out.append(np.ascontiguousarray(window))
            else:
                square = np.zeros((size, size, 3), dtype=np.uint8)
                square[py : py + h, px : px + w] = window
                out.append(square)
        return out

    def thumbnail(self, frame: av.VideoFrame) -> _RGBImage:
        """A 32 x 32 grey thumbnail for scene-change tests. Area averaging: a point-sampling
        scaler turns camera motion over fine texture into noise as large as a cut."""
        small = self._grey.reformat(
            frame, _THUMB_SIDE, _THUMB_SIDE, "gray", interpolation="AREA", threads=1
        )
        return np.ascontiguousarray(small.to_ndarray(), dtype=np.uint8)


# --------------------------------------------------------------------------- FFmpeg's log


class _AllocationWatch(logging.Handler):
    """Counts picture allocations FFmpeg reports as failed for want of memory (under the pool's
    ``RLIMIT_AS`` a decoder like H.264's then reports invalid data, not ENOMEM)."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.failures = 0
        self.oversized = 0  # pictures refused for going over max_pixels
        self._refused = False  # the last get_buffer() failure was a size check, not memory

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "get_buffer() failed" in message:
            if not self._refused:
                self.failures += 1
            self._refused = False
        elif "max pixel count" in message:
            self.oversized += 1
            self._refused = True
        elif "image parameters invalid" in message:
            self._refused = True
        elif "Cannot allocate memory" in message:
            self.failures += 1


_allocation_watch: _AllocationWatch | None = None


def _watch_allocations() -> None:
    """Route FFmpeg's error log to a counter (and nowhere else). Decode processes call this;
    it changes PyAV's process-wide log level, so it is not done on import."""
    global _allocation_watch
    if _allocation_watch is not None:
        return
    _allocation_watch = _AllocationWatch()
    logger = logging.getLogger("libav")
    logger.propagate = False
    logger.addHandler(_allocation_watch)
    av.logging.set_level(av.logging.ERROR)


def _allocation_failures() -> int:
    return _allocation_watch.failures if _allocation_watch is not None else 0


def _oversized_pictures() -> int:
    return _allocation_watch.oversized if _allocation_watch is not None else 0


# --------------------------------------------------------------------------- frame sink


@dataclass(slots=True)
class _Picked:
    images: list[_RGBImage]
    pts_ticks: int | None
    pts: float
    keyframe: bool
    reason: Reason
    order: int  # output order among decoded frames
    display: tuple[int, int]


class _Sink:
    """Takes decoded frames in output order: limit checks, sampling, fitting."""

    def __init__(
        self, opts: ResolvedOptions, label: str, deadline: float, *, whole_input: bool = True
    ) -> None:
        self.opts = opts
        self.whole_input = whole_input  # frame and duration limits count the whole input
        self.label = label
        self.deadline = deadline
        self.fitter = _Fitter(opts.size, opts.fit, opts.interpolation)
        self.sampler = Sampler(opts.sampling)
        self.decoded = 0
        self.origin: float | None = None  # pts of the first decoded frame: the sampling grid's 0
        self.display: tuple[int, int] | None = None
        self.allocations_failed = _allocation_failures()
        self.oversized = _oversized_pictures()
        self.output_bytes = 0  # pictures picked so far

    def check_memory(self, error: BaseException) -> None:
        """After a decode error: LimitExceeded if FFmpeg's log says it failed to allocate a
        picture, or refused one over max_pixels (known in decode processes, which watch it)."""
        if _allocation_failures() > self.allocations_failed:
            self.allocations_failed = _allocation_failures()
            raise LimitExceeded(
                f"{self.label}: out of memory: FFmpeg could not allocate a picture"
            ) from error
        if _oversized_pictures() > self.oversized:
            self.oversized = _oversized_pictures()
            raise LimitExceeded(
                f"{self.label}: a picture over the limit of {self.opts.limits.max_pixels} pixels"
            ) from error

    def check_time(self) -> None:
        if time.monotonic() > self.deadline:
            raise DecodeTimeout(
                f"{self.label}: decoding took longer than {self.opts.limits.timeout:g} s"
            )

    def check_pixels(self, width: int, height: int, where: str) -> None:
        limit = self.opts.limits.max_pixels
        if width * height > limit:
            raise LimitExceeded(
                f"{self.label}: {where} {width}x{height} is {width * height} pixels, "
                f"over the limit of {limit}"
            )

    def push(self, frame: av.VideoFrame, pts_ticks: int | None, pts: float) -> _Picked | None:
        limits = self.opts.limits
        self.check_pixels(frame.width, frame.height, "frame")
        self.decoded += 1
        if self.whole_input and self.decoded > limits.max_frames:
            raise LimitExceeded(f"{self.label}: more than {limits.max_frames} frames")
        if self.origin is None:
            self.origin = pts
        t = pts - self.origin
        if self.whole_input and t > limits.max_duration:
            raise LimitExceeded(
                f"{self.label}: frame at {t:.3f} s, over the duration limit of "
                f"{limits.max_duration:g} s"
            )
        keyframe = bool(frame.key_frame)
        fitter = self.fitter
        reason = self.sampler.pick(t, keyframe=keyframe, thumbnail=lambda: fitter.thumbnail(frame))
        display = fitter.geometry(frame).display
        if self.display is None:
            self.display = display
        if reason is None:
            return None
        images = fitter.fit(frame)
        self.output_bytes += sum(image.nbytes for image in images)
        if self.output_bytes > limits.max_memory // 2:
            raise LimitExceeded(
                f"{self.label}: the frames picked would take more than half of max_memory "
                f"({limits.max_memory} bytes): sample fewer (Sampling.fps, max_frames)"
            )
        return _Picked(
            images=images,
            pts_ticks=pts_ticks,
            pts=pts,
            keyframe=keyframe,
            reason=reason,
            order=self.decoded - 1,
            display=display,
        )


def _frames(picked: _Picked, *, t: float, index: int) -> list[Frame]:
    w, h = picked.display
    return [
        Frame(
            image=image,
            pts=picked.pts,
            t=t,
            index=index,
            keyframe=picked.keyframe,
            source_width=w,
            source_height=h,
            reason=picked.reason,
            tile=tile,
        )
        for tile, image in enumerate(picked.images)
    ]


# --------------------------------------------------------------------------- errors


def _describe(error: BaseException) -> str:
    if isinstance(error, av.error.FFmpegError) and error.strerror:
        return str(error.strerror)
    return str(error) or type(error).__name__


def _map_error(error: BaseException, label: str, *, network: bool = False) -> DecodeError:
    """A typed clipguard error for an error raised by PyAV or by reading the input."""
    if isinstance(error, DecodeError):
        return error
    what = _describe(error)
    if isinstance(error, MemoryError):  # av.error.MemoryError is one too
        return LimitExceeded(f"{label}: out of memory while decoding ({what})")
    if isinstance(error, av.error.ExitError | av.error.TimeoutError | TimeoutError):
        return DecodeTimeout(f"{label}: timed out ({what})")
    if isinstance(error, av.error.DecoderNotFoundError | av.error.PatchWelcomeError):
        return UnsupportedMedia(f"{label}: no decoder for this input ({what})")
    if network and isinstance(error, av.error.HTTPError | av.error.HTTPClientError | OSError):
        return MediaUnavailable(f"{label}: cannot fetch ({what})")
    if isinstance(error, av.error.FFmpegError | OSError | EOFError):
        return InvalidMedia(f"{label}: not a valid input ({what})")
    return InvalidMedia(f"{label}: {type(error).__name__}: {what}")


# --------------------------------------------------------------------------- containers


def _seconds(ticks: int | None, time_base: Fraction | None) -> float | None:
    if ticks is None or time_base is None:
        return None
    return float(ticks * time_base)


def _decode_container(
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
    limits = opts.limits
    sink = _Sink(opts, label, deadline)
    # bytes and files come in through Python: no demuxer may open anything else by itself
    options = {"max_pixels": str(limits.max_pixels), "protocol_whitelist": "none"}
    options.update(open_options or {})
    timeout = (limits.network_timeout, limits.network_timeout) if network else None
    try:
        container = av.open(
            source,
            mode="r",
            format=demuxer,
            options=options,
            buffer_size=_FILE_BUFFER,
            timeout=timeout,
        )
    except Exception as e:  # PyAV raises FFmpegError subclasses, and OSError for I/O
        raise _map_error(e, label, network=network) from e
    with container:
        streams = list(container.streams)
        if not streams:
            raise InvalidMedia(f"{label}: no streams found: not a valid {demuxer} input")
        videos = [
            s for s in container.streams.video if not (s.disposition & Disposition.attached_pic)
        ]
        if not videos:
            kinds = sorted({s.type for s in streams})
            error = UnsupportedMedia if "audio" in kinds else InvalidMedia  # audio-only is valid
            raise error(f"{label}: no video stream (streams: {', '.join(kinds)})")
        video = videos[0]
        for s in streams:
            if s is not video:
                s.discard = Discard.all
        ctx = video.codec_context
        if ctx is None:  # a truncated or broken header names no codec FFmpeg knows
            raise InvalidMedia(f"{label}: the video stream has no known codec")
        time_base = video.time_base
        # header checks, before any frame is decoded
        if ctx.width and ctx.height:
            sink.check_pixels(ctx.width, ctx.height, "header says")
        if video.frames and video.frames > limits.max_frames:
            raise LimitExceeded(
                f"{label}: header says {video.frames} frames, over the limit of {limits.max_frames}"
            )
        header_duration = _seconds(video.duration, time_base)
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
        _configure_decoder(ctx, opts)
        # decoders that ignore skip_frame: in keyframes mode, only keyframe packets reach them
        skip_nonkey_packets = opts.sampling.keyframes_only and ctx.name in _NO_SKIP_FRAME
        sar = video.sample_aspect_ratio
        sink.fitter.sar = sar if sar else None
        codec = ctx.codec.canonical_name if ctx.codec else ctx.name

        packets_pts: list[int] = []
        pts_missing = False
        span_end: int | None = None
        picked: list[_Picked] = []
        errors = 0
        first_error: str | None = None
        stopped = False
        drained = False

        def take(frames: Sequence[av.VideoFrame]) -> None:
            for frame in frames:
                ticks = frame.pts if frame.pts is not None else frame.dts
                pts = _seconds(ticks, time_base)
                if pts is None:  # no timestamp at all: place it one frame after the last
                    pts = _synthetic_pts(sink, video.average_rate)
                item = sink.push(frame, ticks, pts)
                if item is not None:
                    picked.append(item)

        demuxed = container.demux(video)
        while not stopped:
            try:
                packet = next(demuxed)
            except StopIteration:
                break
            except Exception as e:  # a demuxer error ends the input where it is
                if isinstance(e, DecodeError):
                    raise
                mapped = _map_error(e, label, network=network)
                if isinstance(mapped, DecodeTimeout | MediaUnavailable):
                    raise mapped from e
                errors += 1
                first_error = first_error or _describe(e)
                break
            sink.check_time()
            drained = not packet.size  # PyAV ends with an empty packet that drains the decoder
            if packet.size:
                if network and packet.pos is not None and packet.pos > limits.max_input_bytes:
                    raise LimitExceeded(
                        f"{label}: read past {limits.max_input_bytes} bytes, the input limit"
                    )
                if packet.pts is None:
                    pts_missing = True
                else:
                    packets_pts.append(packet.pts)
                    end = packet.pts + (packet.duration or 0)
                    span_end = end if span_end is None else max(span_end, end)
                if skip_nonkey_packets and not packet.is_keyframe:
                    continue
            try:
                frames = ctx.decode(packet)
            except Exception as e:
                mapped = _map_error(e, label, network=network)
                if not isinstance(mapped, InvalidMedia | UnsupportedMedia):  # else: skip the packet
                    raise mapped from e
                if ctx.width * ctx.height > limits.max_pixels:
                    raise LimitExceeded(
                        f"{label}: the stream switched to {ctx.width}x{ctx.height}, over the "
                        f"limit of {limits.max_pixels} pixels"
                    ) from e
                sink.check_memory(e)
                errors += 1
                first_error = first_error or _describe(e)
                continue
            take(frames)
            stopped = sink.sampler.done
        if not stopped and not drained:
            try:
                take(ctx.decode(None))
            except DecodeError:
                raise
            except av.error.EOFError:
                pass
            except Exception as e:
                errors += 1
                first_error = first_error or _describe(e)
        if sink.decoded == 0:
            why = f" ({first_error})" if first_error else ""
            raise InvalidMedia(f"{label}: no frame could be decoded{why}")

        # timeline: t from the smallest packet pts; index = rank of the pts among all packets
        first_ticks: int | None = min(packets_pts) if packets_pts else None
        origin = _seconds(first_ticks, time_base)
        if origin is None or sink.origin is None or origin > sink.origin:
            origin = sink.origin if sink.origin is not None else 0.0
        ranks: npt.NDArray[np.int64] | None = None
        if packets_pts and not pts_missing:
            ranks = np.unique(np.asarray(packets_pts, dtype=np.int64))
        frames_out: list[Frame] = []
        for item in picked:
            if ranks is not None and item.pts_ticks is not None:
                index = int(np.searchsorted(ranks, item.pts_ticks, side="left"))
            else:
                index = item.order
            frames_out.extend(_frames(item, t=max(0.0, item.pts - origin), index=index))
        if stopped and header_duration is not None:
            duration = header_duration
        elif span_end is not None and first_ticks is not None and time_base is not None:
            duration = float((span_end - first_ticks) * time_base)
        else:
            duration = header_duration or 0.0
        display = sink.display or (ctx.width, ctx.height)
        rate = video.average_rate
        return DecodeResult(
            frames=tuple(frames_out),
            width=display[0],
            height=display[1],
            duration=duration,
            frames_decoded=sink.decoded,
            codec=codec,
            content_type=content_type,
            start_pts=origin,
            fps=float(rate) if rate else None,
            decode_errors=errors,
            first_error=first_error,
        )


def _synthetic_pts(sink: _Sink, rate: Fraction | None) -> float:
    step = 1.0 / float(rate) if rate else 1.0 / _DEFAULT_RAW_FPS
    return (sink.origin or 0.0) + sink.decoded * step


def _configure_decoder(ctx: av.VideoCodecContext, opts: ResolvedOptions) -> None:
    ctx.options = {"max_pixels": str(opts.limits.max_pixels)}
    ctx.thread_count = opts.threads
    if opts.sampling.keyframes_only:
        # skipped frames leave frame threads nothing to overlap: slice threads only
        ctx.thread_type = "SLICE"
        ctx.skip_frame = "NONKEY"
    else:
        ctx.thread_type = "AUTO" if opts.threads != 1 else "SLICE"


# --------------------------------------------------------------------------- still images


def _be16(data: bytes, at: int) -> int:
    return int.from_bytes(data[at : at + 2], "big")


def _image_size(data: bytes, decoder: str) -> tuple[int, int]:
    """Width and height read from an image header, without decoding it."""
    if decoder == "png":
        if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR" or len(data) < 24:
            raise InvalidMedia("not a PNG image (no PNG signature and IHDR header)")
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if decoder == "webp":
        if data[:4] != b"RIFF" or data[8:12] != b"WEBP" or len(data) < 30:
            raise InvalidMedia("not a WebP image (no RIFF/WEBP header)")
        chunk = data[12:16]
        if chunk == b"VP8X":
            w = int.from_bytes(data[24:27], "little") + 1
            h = int.from_bytes(data[27:30], "little") + 1
            return w, h
        if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
            return (
                int.from_bytes(data[26:28], "little") & 0x3FFF,
                int.from_bytes(data[28:30], "little") & 0x3FFF,
            )
        if chunk == b"VP8L" and data[20] == 0x2F:
            bits = int.from_bytes(data[21:25], "little")
            return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        raise InvalidMedia("not a WebP image (unknown first chunk)")
    # JPEG: walk the marker segments to the first start-of-frame
    if data[:2] != b"\xff\xd8":
        raise InvalidMedia("not a JPEG image (no SOI marker)")
    at = 2
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            raise InvalidMedia("not a JPEG image (bad marker before the frame header)")
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            at += 2
            continue
        length = _be16(data, at + 2)
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE):
            if at + 9 > len(data):
                break
            return _be16(data, at + 7), _be16(data, at + 5)
        if marker in (0xD9, 0xDA) or length < 2:  # end of image, start of scan, or broken
            break
        at += 2 + length
    raise InvalidMedia("not a JPEG image (no frame header)")


def _decode_image(
    data: bytes, decoder: str, opts: ResolvedOptions, *, label: str, ct: str
) -> DecodeResult:
    sink = _Sink(opts, label, time.monotonic() + opts.limits.timeout)
    try:
        width, height = _image_size(data, decoder)
    except InvalidMedia as e:
        raise InvalidMedia(f"{label}: {e}") from None
    if width == 0 or height == 0:
        raise InvalidMedia(f"{label}: the header says {width}x{height}")
    sink.check_pixels(width, height, "header says")
    try:
        ctx = cast(av.VideoCodecContext, av.CodecContext.create(decoder, "r"))
        ctx.options = {"max_pixels": str(opts.limits.max_pixels)}
        ctx.thread_count = 1
        frames = ctx.decode(av.Packet(data))
        frames += ctx.decode(None)
    except Exception as e:
        raise _map_error(e, label) from e
    if not frames:
        raise InvalidMedia(f"{label}: no picture could be decoded")
    frame = frames[0]
    sink.check_pixels(frame.width, frame.height, "picture")
    geo = sink.fitter.geometry(frame)
    item = _Picked(
        images=sink.fitter.fit(frame),
        pts_ticks=0,
        pts=0.0,
        keyframe=True,
        reason="image",
        order=0,
        display=geo.display,
    )
    return DecodeResult(
        frames=tuple(_frames(item, t=0.0, index=0)),
        width=geo.display[0],
        height=geo.display[1],
        duration=0.0,
        frames_decoded=1,
        codec=decoder,
        content_type=ct,
    )


# --------------------------------------------------------------------------- raw streams

_HEVC_IRAP: Final = range(16, 24)  # BLA, IDR, CRA (and reserved IRAP types)
_HEVC_LEADING: Final = range(6, 10)  # RADL_N, RADL_R, RASL_N, RASL_R
_H264_SPS: Final = 7
_HEVC_SPS: Final = 33
# H.264 profiles whose SPS carries chroma format, bit depths and scaling matrices
_H264_HIGH_PROFILES: Final = frozenset(
    {100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135}
)


class _BitReader:
    """Exp-Golomb reader over an RBSP (emulation prevention bytes already removed)."""

    def __init__(self, data: bytes) -> None:
        self._value = int.from_bytes(data, "big")
        self._left = len(data) * 8

    def u(self, n: int) -> int:
        if n > self._left:
            raise InvalidMedia("parameter set ends early")
        self._left -= n
        return (self._value >> self._left) & ((1 << n) - 1)

    def ue(self) -> int:
        zeros = 0
        while self.u(1) == 0:
            zeros += 1
            if zeros > 31:
                raise InvalidMedia("bad Exp-Golomb code in a parameter set")
        return (1 << zeros) - 1 + self.u(zeros)

    def se(self) -> int:
        k = self.ue()
        return (k + 1) // 2 if k % 2 else -(k // 2)


def _rbsp(payload: bytes) -> bytes:
    return payload.replace(b"\x00\x00\x03", b"\x00\x00")


def _nal_units(data: bytes, codec: RawCodec) -> Iterator[tuple[int, int]]:
    """(NAL unit type, offset of its header) for the NAL units of an Annex-B access unit, up to
    and including the first slice (parameter sets and SEI come before it)."""
    at = data.find(b"\x00\x00\x01")
    while 0 <= at < len(data) - 3:
        header = data[at + 3]
        nal_type = (header >> 1) & 0x3F if codec == "hevc" else header & 0x1F
        yield nal_type, at + 3
        if (codec == "hevc" and nal_type < 32) or (codec == "h264" and 1 <= nal_type <= 5):
            return
        at = data.find(b"\x00\x00\x01", at + 3)


@dataclass(frozen=True, slots=True)
class _H264Sps:
    width: int
    height: int
    log2_max_frame_num: int
    poc_type: int
    log2_max_poc_lsb: int  # 0 unless poc_type is 0
    frame_mbs_only: bool
    separate_colour_plane: bool


def _h264_sps(rbsp: bytes) -> tuple[int, _H264Sps]:
    """(sps id, what clipguard needs of it) from an H.264 SPS."""
    r = _BitReader(rbsp)
    profile = r.u(8)
    r.u(16)  # constraint flags, level
    sps_id = r.ue()
    chroma, separate = 1, False
    if profile in _H264_HIGH_PROFILES:
        chroma = r.ue()
        if chroma == 3:
            separate = bool(r.u(1))
        r.ue()
        r.ue()  # bit depths
        r.u(1)
        if r.u(1):  # scaling matrices
            for i in range(12 if chroma == 3 else 8):
                if r.u(1):
                    last = nxt = 8
                    for _ in range(16 if i < 6 else 64):
                        if nxt:
                            nxt = (last + r.se()) % 256
                        last = nxt or last
    log2_max_frame_num = r.ue() + 4
    poc_type = r.ue()
    log2_max_poc_lsb = 0
    if poc_type == 0:
        log2_max_poc_lsb = r.ue() + 4
    elif poc_type == 1:
        r.u(1)
        r.se()
        r.se()
        for _ in range(min(r.ue(), 256)):
            r.se()
    r.ue()  # max_num_ref_frames
    r.u(1)
    width_mbs = r.ue() + 1
    height_units = r.ue() + 1
    frame_mbs_only = r.u(1)
    width, height = 16 * width_mbs, 16 * height_units * (2 - frame_mbs_only)
    if not frame_mbs_only:
        r.u(1)
    r.u(1)  # direct_8x8_inference
    if r.u(1):  # frame cropping, in chroma sample units
        unit_x = 2 if chroma in (1, 2) else 1
        unit_y = (2 if chroma == 1 else 1) * (2 - frame_mbs_only)
        left, right, top, bottom = r.ue(), r.ue(), r.ue(), r.ue()
        width = max(1, width - unit_x * (left + right))
        height = max(1, height - unit_y * (top + bottom))
    sps = _H264Sps(
        width=width,
        height=height,
        log2_max_frame_num=min(log2_max_frame_num, 16),
        poc_type=poc_type,
        log2_max_poc_lsb=min(log2_max_poc_lsb, 16),
        frame_mbs_only=bool(frame_mbs_only),
        separate_colour_plane=separate,
    )
    return sps_id, sps


def _h264_pps_ids(rbsp: bytes) -> tuple[int, int]:
    """(pps id, sps id) from an H.264 PPS."""
    r = _BitReader(rbsp)
    return r.ue(), r.ue()


def _h264_slice_order(
    rbsp: bytes, idr: bool, pps: dict[int, int], sps: dict[int, _H264Sps]
) -> tuple[bool, int, int] | None:
    """(intra, pic_order_cnt_lsb, its modulus) from a slice header; None without POC type 0."""
    r = _BitReader(rbsp)
    r.ue()  # first_mb_in_slice
    slice_type = r.ue() % 5
    params = sps.get(pps.get(r.ue(), -1))
    if params is None or params.poc_type != 0:
        return None
    if params.separate_colour_plane:
        r.u(2)
    r.u(params.log2_max_frame_num)
    if not params.frame_mbs_only and r.u(1):  # field_pic_flag
        r.u(1)
    if idr:
        r.ue()
    return slice_type in (2, 4), r.u(params.log2_max_poc_lsb), 1 << params.log2_max_poc_lsb


def _hevc_sps_size(rbsp: bytes) -> tuple[int, int]:
    r = _BitReader(rbsp)
    r.u(4)  # vps id
    sub_layers = r.u(3)
    r.u(1)
    r.u(96)  # general profile, tier, level
    present = [(r.u(1), r.u(1)) for _ in range(sub_layers)]
    if sub_layers:
        r.u(2 * (8 - sub_layers))
    for profile_present, level_present in present:
        r.u(88 * profile_present + 8 * level_present)
    r.ue()  # sps id
    if r.ue() == 3:  # chroma_format_idc
        r.u(1)
    return r.ue(), r.ue()


def _nal_rbsp(unit: bytes, header_at: int, header_size: int, limit: int = 1 << 16) -> bytes:
    """The RBSP of the NAL unit at ``header_at``, at most ``limit`` bytes of it."""
    end = unit.find(b"\x00\x00\x01", header_at, header_at + limit)
    stop = end if end >= 0 else min(len(unit), header_at + limit)
    return _rbsp(unit[header_at + header_size : stop])


class RawStreamDecoder:
    """Decoder for one raw Annex-B H.264 or HEVC byte stream arriving in arbitrary chunks.

    ``feed`` takes the next chunk (any byte boundary: FFmpeg's parser keeps partial access
    units between calls) and returns the frames it completed; ``flush`` ends the stream and
    returns the frames still buffered in the parser and decoder. The decoder keeps its state
    between calls, so all chunks of one stream must go to one instance, in order.

    Timestamps: an Annex-B stream has none. Frames are numbered in presentation order from the
    first decodable frame (``index``), and ``pts = t = index / fps``, with ``fps`` the argument,
    else the frame rate in the stream's SPS VUI timing info when it has one, else 25. In
    ``keyframes`` mode skipped frames are still counted (from the parser's access units), so
    a keyframe's index is its decode-order number plus its leading pictures (those after it in
    decode order but before it on screen, as in open GOPs): for HEVC the RASL and RADL NAL unit
    types, for H.264 the pictures whose ``pic_order_cnt_lsb`` is below the keyframe's (POC type
    0, what encoders write with B frames; with POC types 1 and 2 none are counted).

    Limits: ``max_input_bytes``, ``max_frames`` and ``max_duration`` apply to each ``feed``
    call (a live stream has no end), ``max_pixels`` to every frame, ``timeout`` to each call.
    """

    def __init__(
        self, codec: RawCodec, options: DecodeOptions, *, fps: float | None = None
    ) -> None:
        if codec not in get_args(RawCodec):
            raise ConfigError(
                f"raw stream codec must be one of {get_args(RawCodec)}, not {codec!r}"
            )
        if fps is not None and not (
            isinstance(fps, int | float) and math.isfinite(fps) and 0 < fps <= 1000
        ):
            raise ConfigError(f"fps must be a number in (0, 1000], not {fps!r}")
        self._opts = DecodeOptions.check(options).resolve(limits=Limits(), threads=1)
        self.codec: RawCodec = codec
        self._label = f"raw {codec} stream"
        self._ctx: av.VideoCodecContext = av.CodecContext.create(codec, "r")
        _configure_decoder(self._ctx, self._opts)
        self._sink = _Sink(self._opts, self._label, math.inf, whole_input=False)
        self._fps: float | None = float(fps) if fps is not None else None
        self._decode_index = 0  # access units parsed so far
        self._first_key: int | None = None  # decode index of the first decoded frame
        self._output = 0  # frames decoded so far
        self._keyframes = self._opts.sampling.keyframes_only
        self._track_leading = self._keyframes
        self._leading: dict[int, int] = {}  # IRAP decode index -> leading pictures so far
        self._open_irap: int | None = None  # IRAP whose leading pictures may still follow
        self._open_lsb = 0  # H.264: that IRAP's pic_order_cnt_lsb
        self._h264_sps: dict[int, _H264Sps] = {}
        self._h264_pps: dict[int, int] = {}  # pps id -> sps id
        self._held: list[tuple[av.VideoFrame, int]] = []  # keyframes waiting for that count
        self._closed = False
        self.bytes_fed = 0
        self.errors = 0
        self.first_error: str | None = None

    @property
    def frames_decoded(self) -> int:
        return self._sink.decoded

    @property
    def fps(self) -> float | None:
        """The frame rate used for timestamps (known once the first frame is decoded)."""
        return self._fps

    def feed(self, chunk: bytes | bytearray | memoryview) -> list[Frame]:
        """Parse and decode the next chunk; returns the frames it completed (maybe none)."""
        if self._closed:
            raise ConfigError(f"{self._label}: feed() after flush()")
        data = bytes(chunk)
        limits = self._opts.limits
        if len(data) > limits.max_input_bytes:
            raise LimitExceeded(
                f"{self._label}: chunk of {len(data)} bytes, over the limit of "
                f"{limits.max_input_bytes}"
            )
        self.bytes_fed += len(data)
        if not data:
            return []
        return self._run(data)

    def flush(self) -> list[Frame]:
        """End of stream: drain the parser and the decoder. The decoder is done afterwards."""
        if self._closed:
            return []
        self._closed = True
        return self._run(None)

    def _run(self, data: bytes | None) -> list[Frame]:
        self._sink.deadline = time.monotonic() + self._opts.limits.timeout
        self._sink.sampler.restart_cap()
        start_decoded = self._sink.decoded
        out: list[Frame] = []
        try:
            packets = self._ctx.parse(data)
        except Exception as e:
            raise _map_error(e, self._label) from e
        for packet in packets:
            self._sink.check_time()
            index = self._decode_index
            self._decode_index += 1
            packet.pts = index
            self._inspect(bytes(packet), index)
            out.extend(self._decode(packet, start_decoded))
        if data is None:
            out.extend(self._decode(None, start_decoded))
            self._open_irap = None
        out.extend(self._release())
        return out

    def _inspect(self, unit: bytes, index: int) -> None:
        """Check any SPS against max_pixels before the decoder sees it; in keyframes mode, count
        each keyframe's leading pictures (after it in decode order, before it on screen)."""
        codec = self.codec
        for nal_type, header_at in _nal_units(unit, codec):
            try:
                if codec == "hevc":
                    self._inspect_hevc(unit, nal_type, header_at, index)
                else:
                    self._inspect_h264(unit, nal_type, header_at, index)
            except InvalidMedia:  # an unreadable header: the decoder will judge it
                continue

    def _open_window(self, index: int) -> None:
        self._leading[index] = 0
        if len(self._leading) > 64:  # intra frames the decoder skipped: forget them
            for stale in [k for k in self._leading if k < index - 256]:
                del self._leading[stale]

    def _inspect_hevc(self, unit: bytes, nal_type: int, header_at: int, index: int) -> None:
        if nal_type == _HEVC_SPS:
            width, height = _hevc_sps_size(_nal_rbsp(unit, header_at, 2))
            self._sink.check_pixels(width, height, "its SPS says")
        elif self._track_leading and nal_type < 32:
            if nal_type in _HEVC_IRAP:
                self._open_irap = index
                self._open_window(index)
            elif nal_type in _HEVC_LEADING and self._open_irap is not None:
                self._leading[self._open_irap] += 1
            else:
                self._open_irap = None

    def _inspect_h264(self, unit: bytes, nal_type: int, header_at: int, index: int) -> None:
        if nal_type == _H264_SPS:
            sps_id, params = _h264_sps(_nal_rbsp(unit, header_at, 1))
            self._sink.check_pixels(params.width, params.height, "its SPS says")
            self._h264_sps[sps_id] = params
        elif nal_type == 8:  # PPS
            pps_id, sps_id = _h264_pps_ids(_nal_rbsp(unit, header_at, 1))
            self._h264_pps[pps_id] = sps_id
        elif self._track_leading and nal_type in (1, 5):
            header = _nal_rbsp(unit, header_at, 1, limit=64)  # the fields needed are early
            order = _h264_slice_order(header, nal_type == 5, self._h264_pps, self._h264_sps)
            if order is None:  # no POC lsb (POC type 1 or 2): output order is decode order
                self._open_irap = None
                return
            intra, lsb, modulus = order
            if self._open_irap is not None and not intra:
                if (lsb - self._open_lsb) % modulus >= modulus // 2:  # shown before the I frame
                    self._leading[self._open_irap] += 1
                    return
                self._open_irap = None
            if intra:
                self._open_irap, self._open_lsb = index, lsb
                self._open_window(index)

    def _decode(self, packet: av.Packet[Any] | None, start_decoded: int) -> list[Frame]:
        try:
            frames = self._ctx.decode(packet)
        except Exception as e:
            mapped = _map_error(e, self._label)
            if not isinstance(mapped, InvalidMedia | UnsupportedMedia):  # else: skip the packet
                raise mapped from e
            if self._ctx.width * self._ctx.height > self._opts.limits.max_pixels:
                raise LimitExceeded(
                    f"{self._label}: the stream is {self._ctx.width}x{self._ctx.height}, over "
                    f"the limit of {self._opts.limits.max_pixels} pixels"
                ) from e
            self._sink.check_memory(e)
            self.errors += 1
            self.first_error = self.first_error or _describe(e)
            return []
        out: list[Frame] = []
        for frame in frames:
            decode_index = frame.pts if frame.pts is not None else self._decode_index - 1
            if self._track_leading and decode_index == self._open_irap:
                self._held.append((frame, decode_index))
                continue
            out.extend(self._emit(frame, decode_index, start_decoded))
        return out

    def _release(self) -> list[Frame]:
        out: list[Frame] = []
        while self._held and self._held[0][1] != self._open_irap:
            frame, decode_index = self._held.pop(0)
            out.extend(self._emit(frame, decode_index, self._sink.decoded))
        return out

    def _emit(self, frame: av.VideoFrame, decode_index: int, start_decoded: int) -> list[Frame]:
        limits = self._opts.limits
        if self._fps is None:
            rate = self._ctx.framerate
            self._fps = float(rate) if rate and 0 < rate <= 1000 else _DEFAULT_RAW_FPS
        if self._first_key is None:
            self._first_key = decode_index
        if self._keyframes:
            index = decode_index - self._first_key + self._leading.pop(decode_index, 0)
        else:
            index = self._output
        self._output += 1
        pts = index / self._fps
        in_call = self._sink.decoded - start_decoded
        if in_call >= limits.max_frames:
            raise LimitExceeded(f"{self._label}: more than {limits.max_frames} frames in one chunk")
        if in_call / self._fps > limits.max_duration:
            raise LimitExceeded(
                f"{self._label}: more than {limits.max_duration:g} s of frames in one chunk"
            )
        item = self._sink.push(frame, None, pts)
        if item is None:
            return []
        return _frames(item, t=item.pts - (self._sink.origin or 0.0), index=index)


def _decode_raw_whole(
    data: bytes, codec: RawCodec, opts: ResolvedOptions, *, ct: str
) -> DecodeResult:
    decoder = RawStreamDecoder(codec, opts.as_options())
    frames = decoder.feed(data) + decoder.flush()
    if decoder.frames_decoded == 0:
        why = f" ({decoder.first_error})" if decoder.first_error else ""
        raise InvalidMedia(f"raw {codec} stream of {len(data)} bytes: no frame decoded{why}")
    display = decoder._sink.display or (0, 0)
    fps = decoder.fps or _DEFAULT_RAW_FPS
    return DecodeResult(
        frames=tuple(frames),
        width=display[0],
        height=display[1],
        duration=decoder._decode_index / fps,
        frames_decoded=decoder.frames_decoded,
        codec=codec,
        content_type=ct,
        fps=fps,
        decode_errors=decoder.errors,
        first_error=decoder.first_error,
    )


# --------------------------------------------------------------------------- entry points


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
        return _decode_image(payload, name, opts, label=label, ct=ct)
    if kind == "raw":
        return _decode_raw_whole(payload, cast(RawCodec, name), opts, ct=ct)
    return _decode_container(
        io.BytesIO(payload), name, opts, label=label, content_type=ct, deadline=deadline
    )


def _redact(uri: str) -> str:
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
    raise UnsupportedMedia(f"{_redact(uri)!r}: URL scheme {scheme!r} is not supported")


def _read_file(path: Path, limit: int, label: str) -> tuple[IO[bytes], int]:
    try:
        handle = path.open("rb")
    except FileNotFoundError as e:
        raise MediaUnavailable(f"{label}: no such file") from e
    except OSError as e:
        raise MediaUnavailable(f"{label}: cannot open ({e.strerror or e})") from e
    try:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise UnsupportedMedia(f"{label}: not a regular file")
        if info.st_size > limit:
            raise LimitExceeded(f"{label}: {info.st_size} bytes, over the limit of {limit}")
    except BaseException:
        handle.close()
        raise
    return handle, info.st_size


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
        raise _map_error(e, label, network=True) from e
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
    where = str(path) if path is not None else _redact(str(uri))
    if content_type is None:
        content_type = content_type_for(path if path is not None else urlsplit(str(uri)).path)
    kind, name = media_kind(content_type)
    ct = normalize_content_type(content_type)
    label = f"{ct} {where!r}"
    deadline = time.monotonic() + opts.limits.timeout
    if path is None:
        url = str(uri)
        if kind != "container":
            data = _fetch(url, opts.limits, label, ca_file)
            return _decode_fetched(data, kind, name, opts, label=label, ct=ct)
        return _decode_container(
            url,
            name,
            opts,
            label=label,
            content_type=ct,
            deadline=deadline,
            open_options=_network_options(url, opts.limits, ca_file),
            network=True,
        )
    handle, length = _read_file(path, opts.limits.max_input_bytes, label)
    with handle:
        if length == 0:
            raise InvalidMedia(f"{label}: the file is empty (0 bytes)")
        if kind != "container":
            return _decode_fetched(handle.read(), kind, name, opts, label=label, ct=ct)
        return _decode_container(
            handle, name, opts, label=label, content_type=ct, deadline=deadline
        )


def _decode_fetched(
    data: bytes, kind: str, name: str, opts: ResolvedOptions, *, label: str, ct: str
) -> DecodeResult:
    if not data:
        raise InvalidMedia(f"{label}: empty (0 bytes)")
    if kind == "image":
        return _decode_image(data, name, opts, label=label, ct=ct)
    return _decode_raw_whole(data, cast(RawCodec, name), opts, ct=ct)
