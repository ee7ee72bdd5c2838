"""Frames out of the decode stage, and the sink every decoded frame goes through.

A :class:`Frame` holds one ``(size, size, 3)`` uint8 RGB picture fitted to the model input
(:mod:`pipeline.decode.fit`), with its timestamps; a :class:`DecodeResult` the frames picked from
one input with what was learnt about the source.

Timestamps: ``pts`` is the frame's presentation time in seconds (pts * time base, as in the
input, so an MPEG-TS segment does not start at 0); ``t`` is seconds since the input's first frame
(the smallest video packet pts of the input, even when that frame could not be decoded), which a
stream worker adds to the segment's start time. ``index`` is the frame's presentation index within
the input, counted over every frame, sampled or not. Raw byte streams carry no timestamps: see
:class:`~pipeline.decode.RawStreamDecoder`.

:class:`FrameSink` takes the decoded frames of one input (containers, images and raw streams
alike) in output order: it checks the limits on every frame, asks the
:class:`~pipeline.decode.sampling.Sampler` whether the frame is picked, fits the picked ones
and, when the options ask (``hashes``), takes their PDQ hash from the decoded picture
(:mod:`pipeline.decode.hashing`): ``Frame.pdq``, the same on every tile of a frame.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import av

from pipeline.decode.ffmpeg_log import allocation_failures, oversized_pictures
from pipeline.decode.fit import Fitter, RGBImage
from pipeline.decode.hashing import FrameHasher
from pipeline.decode.options import ResolvedOptions
from pipeline.decode.sampling import Reason, Sampler
from pipeline.errors import DecodeTimeout, LimitExceeded

if TYPE_CHECKING:
    from pipeline.hashes.pdq import DihedralHashes, PdqHash

__all__ = ["DEFAULT_FPS", "DecodeResult", "Frame", "FrameSink", "Picked", "frames_from"]

#: Frame rate assumed where an input does not tell (raw streams without timing info, frames
#: without timestamps).
DEFAULT_FPS: Final = 25.0


@dataclass(frozen=True, slots=True, eq=False)
class Frame:
    """One model-ready frame (or one tile of a frame)."""

    image: RGBImage  # (size, size, 3) uint8 RGB, C-contiguous
    pts: float  # presentation time, seconds, on the input's own timeline
    t: float  # seconds since the input's first frame: pts - first pts
    index: int  # presentation index within the input, over all frames (sampled or not)
    keyframe: bool  # decoded from a keyframe (IDR / IRAP / intra)
    source_width: int  # the source frame as displayed (after rotation), pixels
    source_height: int
    reason: Reason  # why it was picked: "all", "fps", "keyframe", "scene", "image"
    tile: int = 0  # tile number for fit="tiles" (0 otherwise)
    pdq: PdqHash | DihedralHashes | None = None  # of the decoded picture, when options.hashes


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


@dataclass(slots=True)
class Picked:
    """A frame the sampler picked, fitted; its timeline (``t``, ``index``) comes later."""

    images: list[RGBImage]
    pts_ticks: int | None
    pts: float
    keyframe: bool
    reason: Reason
    order: int  # output order among decoded frames
    display: tuple[int, int]
    pdq: PdqHash | DihedralHashes | None = None


class FrameSink:
    """Takes decoded frames in output order: limit checks, sampling, fitting."""

    def __init__(
        self, opts: ResolvedOptions, label: str, deadline: float, *, whole_input: bool = True
    ) -> None:
        self.opts = opts
        self.whole_input = whole_input  # frame and duration limits count the whole input
        self.label = label
        self.deadline = deadline
        self.fitter = Fitter(opts.size, opts.fit, opts.interpolation)
        self.hasher = FrameHasher(opts.hashes, opts.hash_side) if opts.hashes != "none" else None
        self.sampler = Sampler(opts.sampling)
        self.decoded = 0
        self.origin: float | None = None  # pts of the first decoded frame: the sampling grid's 0
        self.display: tuple[int, int] | None = None
        self.allocations_failed = allocation_failures()
        self.oversized = oversized_pictures()
        self.output_bytes = 0  # pictures picked so far

    def check_memory(self, error: BaseException) -> None:
        """After a decode error: LimitExceeded if FFmpeg's log says it failed to allocate a
        picture, or refused one over max_pixels (known in decode processes, which watch it)."""
        if allocation_failures() > self.allocations_failed:
            self.allocations_failed = allocation_failures()
            raise LimitExceeded(
                f"{self.label}: out of memory: FFmpeg could not allocate a picture"
            ) from error
        if oversized_pictures() > self.oversized:
            self.oversized = oversized_pictures()
            raise LimitExceeded(
                f"{self.label}: a picture over the limit of {self.opts.limits.max_pixels} pixels"
            ) from error

    def check_time(self) -> None:
        """DecodeTimeout once the wall-clock deadline has passed."""
        if time.monotonic() > self.deadline:
            raise DecodeTimeout(
                f"{self.label}: decoding took longer than {self.opts.limits.timeout:g} s"
            )

    def check_pixels(self, width: int, height: int, where: str) -> None:
        """LimitExceeded if ``width`` x ``height`` is over ``max_pixels``."""
        limit = self.opts.limits.max_pixels
        if width * height > limit:
            raise LimitExceeded(
                f"{self.label}: {where} {width}x{height} is {width * height} pixels, "
                f"over the limit of {limit}"
            )

    def hash(self, frame: av.VideoFrame) -> PdqHash | DihedralHashes | None:
        """The frame's PDQ hash when the options ask for one (else None)."""
        return self.hasher(frame) if self.hasher is not None else None

    def push(self, frame: av.VideoFrame, pts_ticks: int | None, pts: float) -> Picked | None:
        """The next decoded frame: checked, then fitted if the sampler picks it (else None)."""
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
        return Picked(
            images=images,
            pts_ticks=pts_ticks,
            pts=pts,
            keyframe=keyframe,
            reason=reason,
            order=self.decoded - 1,
            display=display,
            pdq=self.hash(frame),
        )


def frames_from(picked: Picked, *, t: float, index: int) -> list[Frame]:
    """The :class:`Frame` objects of a picked frame (one per tile)."""
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
            pdq=picked.pdq,
        )
        for tile, image in enumerate(picked.images)
    ]
