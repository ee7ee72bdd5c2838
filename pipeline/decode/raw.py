"""Raw Annex-B H.264 and HEVC byte streams: chunks cut anywhere, and whole raw inputs.

:class:`RawStreamDecoder` keeps FFmpeg's parser and decoder state between chunks, so a live
stream (``video/h264``, ``video/h265`` segments of one stream id) is decoded as one stream; the
headers are checked first (:mod:`pipeline.decode.bitstream`). :func:`decode_raw_whole` decodes a
whole raw input held in memory with one decoder.
"""

from __future__ import annotations

import math
import time
from typing import Any, get_args

import av

from pipeline.decode.bitstream import (
    H264_PPS,
    H264_SPS,
    HEVC_IRAP,
    HEVC_LEADING,
    HEVC_SPS,
    H264Sps,
    h264_pps_ids,
    h264_slice_order,
    h264_sps,
    hevc_sps_size,
    nal_rbsp,
    nal_units,
)
from pipeline.decode.container import configure_decoder
from pipeline.decode.failures import describe_error, map_error
from pipeline.decode.frames import DEFAULT_FPS, DecodeResult, Frame, FrameSink, frames_from
from pipeline.decode.media import RawCodec
from pipeline.decode.options import DecodeOptions, Limits, ResolvedOptions
from pipeline.errors import ConfigError, InvalidMedia, LimitExceeded, UnsupportedMedia

__all__ = ["RawStreamDecoder", "decode_raw_whole"]


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
        configure_decoder(self._ctx, self._opts)
        self._sink = FrameSink(self._opts, self._label, math.inf, whole_input=False)
        self._fps: float | None = float(fps) if fps is not None else None
        self._decode_index = 0  # access units parsed so far
        self._first_key: int | None = None  # decode index of the first decoded frame
        self._output = 0  # frames decoded so far
        self._keyframes = self._opts.sampling.keyframes_only
        self._track_leading = self._keyframes
        self._leading: dict[int, int] = {}  # IRAP decode index -> leading pictures so far
        self._open_irap: int | None = None  # IRAP whose leading pictures may still follow
        self._open_lsb = 0  # H.264: that IRAP's pic_order_cnt_lsb
        self._h264_sps: dict[int, H264Sps] = {}
        self._h264_pps: dict[int, int] = {}  # pps id -> sps id
        self._held: list[tuple[av.VideoFrame, int]] = []  # keyframes waiting for that count
        self._closed = False
        self.bytes_fed = 0
        self.errors = 0
        self.first_error: str | None = None

    @property
    def frames_decoded(self) -> int:
        """Frames the decoder produced so far."""
        return self._sink.decoded

    @property
    def access_units(self) -> int:
        """Access units parsed so far (decodable or not, sampled or not)."""
        return self._decode_index

    @property
    def display(self) -> tuple[int, int] | None:
        """Width and height of the frames as displayed (None before the first frame)."""
        return self._sink.display

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
            raise map_error(e, self._label) from e
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
        for nal_type, header_at in nal_units(unit, codec):
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
        if nal_type == HEVC_SPS:
            width, height = hevc_sps_size(nal_rbsp(unit, header_at, 2))
            self._sink.check_pixels(width, height, "its SPS says")
        elif self._track_leading and nal_type < 32:
            if nal_type in HEVC_IRAP:
                self._open_irap = index
                self._open_window(index)
            elif nal_type in HEVC_LEADING and self._open_irap is not None:
                self._leading[self._open_irap] += 1
            else:
                self._open_irap = None

    def _inspect_h264(self, unit: bytes, nal_type: int, header_at: int, index: int) -> None:
        if nal_type == H264_SPS:
            sps_id, params = h264_sps(nal_rbsp(unit, header_at, 1))
            self._sink.check_pixels(params.width, params.height, "its SPS says")
            self._h264_sps[sps_id] = params
        elif nal_type == H264_PPS:
            pps_id, sps_id = h264_pps_ids(nal_rbsp(unit, header_at, 1))
            self._h264_pps[pps_id] = sps_id
        elif self._track_leading and nal_type in (1, 5):
            header = nal_rbsp(unit, header_at, 1, limit=64)  # the fields needed are early
            order = h264_slice_order(header, nal_type == 5, self._h264_pps, self._h264_sps)
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
            mapped = map_error(e, self._label)
            if not isinstance(mapped, InvalidMedia | UnsupportedMedia):  # else: skip the packet
                raise mapped from e
            if self._ctx.width * self._ctx.height > self._opts.limits.max_pixels:
                raise LimitExceeded(
                    f"{self._label}: the stream is {self._ctx.width}x{self._ctx.height}, over "
                    f"the limit of {self._opts.limits.max_pixels} pixels"
                ) from e
            self._sink.check_memory(e)
            self.errors += 1
            self.first_error = self.first_error or describe_error(e)
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
            self._fps = float(rate) if rate and 0 < rate <= 1000 else DEFAULT_FPS
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
        return frames_from(item, t=item.pts - (self._sink.origin or 0.0), index=index)


def decode_raw_whole(
    data: bytes, codec: RawCodec, opts: ResolvedOptions, *, ct: str
) -> DecodeResult:
    """Decode a whole raw byte stream held in memory (``t`` and ``pts``: ``index / fps``)."""
    decoder = RawStreamDecoder(codec, opts.as_options())
    frames = decoder.feed(data) + decoder.flush()
    if decoder.frames_decoded == 0:
        why = f" ({decoder.first_error})" if decoder.first_error else ""
        raise InvalidMedia(f"raw {codec} stream of {len(data)} bytes: no frame decoded{why}")
    display = decoder.display or (0, 0)
    fps = decoder.fps or DEFAULT_FPS
    return DecodeResult(
        frames=tuple(frames),
        width=display[0],
        height=display[1],
        duration=decoder.access_units / fps,
        frames_decoded=decoder.frames_decoded,
        codec=codec,
        content_type=ct,
        fps=fps,
        decode_errors=decoder.errors,
        first_error=decoder.first_error,
    )
