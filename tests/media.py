"""Test media generated with PyAV's own encoders (nothing is committed): the tests' one place
that writes video. :func:`write_frames` encodes any RGB frames to a file or bytes (the scan
clips, the policy tools' clip); :func:`encode` encodes numbered frames, below. The demo videos
with known scenes come from the product's ``pipeline.demo.video.write_video``.

Every generated video frame carries its frame number as a barcode: eight cells across the top
sixth of the picture, white for a 1 bit, black for a 0 (least significant bit on the left). A
test reads the number back from a decoded model-input frame with :func:`read_number`, which
proves that timestamps, indices and sampling point at the right pictures, B frames and all.
Below the barcode a small square moves across a background whose colour is the frame's scene
(:data:`SCENE_COLOURS`), so scene-change tests have motion without cuts, and cuts where asked.
"""

from __future__ import annotations

import functools
import io
import itertools
import os
import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from fractions import Fraction
from pathlib import Path
from typing import IO

import av
import numpy as np

os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its banner to stderr otherwise

WIDTH, HEIGHT = 320, 240
# alternately dark and light, so that every cut changes the thumbnails' brightness a lot
SCENE_COLOURS = [(30, 60, 120), (230, 200, 60), (20, 110, 40), (240, 160, 220), (60, 40, 40)]
_BAND = 6  # the barcode fills the top 1/_BAND of the picture


def frame_image(
    number: int, *, width: int = WIDTH, height: int = HEIGHT, scene: int = 0
) -> np.ndarray:
    """The RGB picture of frame ``number``: barcode on top, moving square below."""
    img = np.empty((height, width, 3), dtype=np.uint8)
    img[:] = SCENE_COLOURS[scene % len(SCENE_COLOURS)]
    band = height // _BAND
    cell = width // 8
    for bit in range(8):
        value = 235 if (number >> bit) & 1 else 16
        img[:band, bit * cell : (bit + 1) * cell] = value
    side = max(8, height // 8)
    x = (number * 6) % max(1, width - side)
    y = band + (height - band - side) // 2
    img[y : y + side, x : x + side] = (250, 250, 250)
    return img


def read_number(image: np.ndarray, *, aspect: float = WIDTH / HEIGHT) -> int:
    """The frame number in a ``fit="pad"`` model-input square made from a frame of ``aspect``."""
    size = image.shape[0]
    if aspect >= 1:
        content_w, content_h = size, size / aspect
    else:
        content_w, content_h = size * aspect, size
    top = (size - content_h) / 2
    left = (size - content_w) / 2
    y = int(top + content_h / _BAND / 2)
    number = 0
    for bit in range(8):
        x = int(left + (bit + 0.5) * content_w / 8)
        patch = image[y - 2 : y + 3, x - 2 : x + 3].astype(float)
        if patch.mean() > 128:
            number |= 1 << bit
    return number


def _codec_options(codec: str, gop: int | None, bframes: int | None, open_gop: bool) -> dict:
    if codec == "libx264":
        params = ["log-level=none"]
        if gop:
            params.append("scenecut=0")
        if gop:
            params += [f"keyint={gop}", f"min-keyint={gop}"]
        if bframes is not None:  # fixed B frames: x264 would drop them on this simple content
            params += [f"bframes={bframes}", "b-adapt=0"]
        if open_gop:
            params.append("open-gop=1")
        return {"preset": "fast", "x264-params": ":".join(params)}
    if codec == "libx265":
        params = ["log-level=none"]
        if gop:
            params += [f"keyint={gop}", f"min-keyint={gop}", "scenecut=0"]
        if bframes is not None:
            params.append(f"bframes={bframes}")
        params.append("open-gop=1" if open_gop else "open-gop=0")
        return {"preset": "fast", "x265-params": ":".join(params)}
    if codec == "libvpx-vp9":
        opts = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
        if gop:
            opts["g"] = str(gop)
        return opts
    if codec == "libsvtav1":
        opts = {"preset": "10"}  # presets 11+ wrote streams dav1d rejected in parts
        if gop:
            opts["g"] = str(gop)
        return opts
    return {}


def write_frames(
    target: str | Path | IO[bytes],
    frames: Iterable[np.ndarray],
    *,
    fps: int = 25,
    fmt: str | None = None,
    codec: str = "libx264",
    gop: int | None = None,
    bframes: int | None = None,
    open_gop: bool = False,
    pts_ms: Sequence[int] | None = None,
    rotation: int | None = None,
    muxer_options: Mapping[str, str] | None = None,
    pix_fmt: str = "yuv420p",
    audio: bool = False,
) -> None:
    """Encode RGB ``frames`` (uint8 [H, W, 3], all of one size) at ``fps`` into ``target``: a
    path (its folder is created; the container from ``fmt``, else the suffix) or a binary file
    object (``fmt`` needed). ``gop``: a keyframe every ``gop`` frames, no scene-cut keyframes;
    ``bframes``: a fixed number of B frames; ``pts_ms``: variable frame rate timestamps in
    milliseconds; ``audio``: an AAC track too (muxed before the video, as cameras do)."""
    it: Iterator[np.ndarray] = iter(frames)
    first = next(it, None)
    if first is None:
        raise ValueError("no frames to write")
    if isinstance(target, str | Path):
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        target = str(target)
    with av.open(target, "w", format=fmt, options=dict(muxer_options or {})) as out:
        sound = out.add_stream("aac", rate=48000) if audio else None
        stream = out.add_stream(codec, rate=fps)
        stream.height, stream.width = first.shape[:2]
        stream.pix_fmt = pix_fmt
        if pts_ms is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
            stream.time_base = Fraction(1, 1000)
        stream.options = _codec_options(codec, gop, bframes, open_gop)
        if gop:
            stream.codec_context.gop_size = gop
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for i, rgb in enumerate(itertools.chain([first], it)):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts = pts_ms[i] if pts_ms is not None else i
            frame.time_base = Fraction(1, 1000) if pts_ms is not None else Fraction(1, fps)
            for packet in stream.encode(frame):
                out.mux(packet)
            if sound is not None:
                _add_audio(out, sound, i, fps)
        for packet in stream.encode(None):
            out.mux(packet)
        if sound is not None:
            for packet in sound.encode(None):
                out.mux(packet)


@functools.lru_cache(maxsize=64)
def encode(
    frames: int = 50,
    *,
    fmt: str = "mpegts",
    codec: str = "libx264",
    width: int = WIDTH,
    height: int = HEIGHT,
    fps: int = 25,
    gop: int | None = None,
    bframes: int | None = None,
    open_gop: bool = False,
    pts_ms: tuple[int, ...] | None = None,
    rotation: int | None = None,
    scenes: tuple[int, ...] = (),
    muxer_options: tuple[tuple[str, str], ...] = (),
    pix_fmt: str = "yuv420p",
    audio: bool = False,
) -> bytes:
    """Encode ``frames`` numbered frames (:func:`frame_image`) as :func:`write_frames` does;
    ``scenes`` gives the frame numbers where a new scene (background colour) starts."""
    buf = io.BytesIO()
    write_frames(
        buf,
        _numbered(frames, width, height, scenes),
        fps=fps,
        fmt=fmt,
        codec=codec,
        gop=gop,
        bframes=bframes,
        open_gop=open_gop,
        pts_ms=pts_ms,
        rotation=rotation,
        muxer_options=dict(muxer_options),
        pix_fmt=pix_fmt,
        audio=audio,
    )
    return buf.getvalue()


def _numbered(frames: int, width: int, height: int, cuts: tuple[int, ...]) -> Iterator[np.ndarray]:
    scene = 0
    for i in range(frames):
        if i in cuts:
            scene += 1
        yield frame_image(i, width=width, height=height, scene=scene)


def _add_audio(out: av.container.OutputContainer, sound: av.AudioStream, i: int, fps: int) -> None:
    """The audio samples for video frame ``i``: a quiet tone."""
    rate = 48000
    start, stop = i * rate // fps, (i + 1) * rate // fps
    t = np.arange(start, stop) / rate
    tone = (0.1 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None, :]
    frame = av.AudioFrame.from_ndarray(tone, format="fltp", layout="mono")
    frame.sample_rate = rate
    frame.pts = start
    for packet in sound.encode(frame):
        out.mux(packet)


@functools.lru_cache(maxsize=8)
def audio_only(fmt: str = "mp4", seconds: float = 1.0) -> bytes:
    """An AAC (MP4, MPEG-TS) or Opus (WebM) file with no video stream."""
    codec = "libopus" if fmt == "webm" else "aac"
    rate = 48000
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=rate)
        stream.layout = "mono"
        samples = 960 if codec == "libopus" else 1024
        t = np.arange(samples) / rate
        for i in range(int(seconds * rate / samples)):
            tone = (0.2 * np.sin(2 * np.pi * 440 * (t + i * samples / rate))).astype(np.float32)
            fmt_name = "flt" if codec == "libopus" else "fltp"
            frame = av.AudioFrame.from_ndarray(tone[None, :], format=fmt_name, layout="mono")
            frame.sample_rate = rate
            frame.pts = i * samples
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


def still(kind: str, image: np.ndarray) -> bytes:
    """Encode an RGB array as "png", "jpeg" or "webp" bytes."""
    height, width = image.shape[:2]
    codec, pix_fmt = {
        "png": ("png", "rgb24"),
        "jpeg": ("mjpeg", "yuvj444p"),
        "webp": ("libwebp", "yuv420p"),
    }[kind]
    ctx = av.CodecContext.create(codec, "w")
    ctx.width, ctx.height = width, height
    ctx.pix_fmt = pix_fmt
    ctx.time_base = Fraction(1, 25)
    if kind == "jpeg":
        ctx.color_range = 2  # full range, as JPEG is
        ctx.options = {"qscale": "2"}
        ctx.flags |= av.codec.context.Flags.qscale
        ctx.global_quality = 2 * 118
    if kind == "webp":
        ctx.options = {"lossless": "1"}
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
    frame = frame.reformat(format=pix_fmt, dst_color_range="JPEG" if kind == "jpeg" else None)
    frame.pts = 0
    return b"".join(bytes(p) for p in [*ctx.encode(frame), *ctx.encode(None)])


def with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    """The JPEG with an APP1 EXIF segment holding only the orientation tag (1..8)."""
    tiff = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 1)
    tiff += struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack("<I", 0)
    app1 = b"Exif\x00\x00" + tiff
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + jpeg[2:]


def marked_image(width: int, height: int) -> np.ndarray:
    """Mid-grey picture with a red left edge, a blue right edge, a green top edge, a yellow
    bottom edge (each 1/16 of the side) and a white dot in the centre: for fitting tests."""
    img = np.full((height, width, 3), 128, dtype=np.uint8)
    ew, eh = max(2, width // 16), max(2, height // 16)
    img[:, :ew] = (255, 0, 0)
    img[:, width - ew :] = (0, 0, 255)
    img[:eh, ew : width - ew] = (0, 255, 0)
    img[height - eh :, ew : width - ew] = (255, 255, 0)
    cy, cx = height // 2, width // 2
    r = max(2, min(width, height) // 16)
    img[cy - r : cy + r, cx - r : cx + r] = (255, 255, 255)
    return img


# ----------------------------------------------------------------------------- hostile inputs


class _Bits:
    def __init__(self) -> None:
        self.bits: list[int] = []

    def u(self, n: int, value: int) -> None:
        self.bits += [(value >> (n - 1 - i)) & 1 for i in range(n)]

    def ue(self, value: int) -> None:
        code = value + 1
        self.u(2 * code.bit_length() - 1, code)

    def se(self, value: int) -> None:
        self.ue(2 * value - 1 if value > 0 else -2 * value)

    def rbsp(self) -> bytes:
        bits = [*self.bits, 1]
        bits += [0] * (-len(bits) % 8)
        return bytes(int("".join(map(str, bits[i : i + 8])), 2) for i in range(0, len(bits), 8))


def _nal(nal_type: int, rbsp: bytes, ref_idc: int = 3) -> bytes:
    out = bytearray()
    zeros = 0
    for byte in rbsp:  # emulation prevention
        if zeros >= 2 and byte <= 3:
            out.append(3)
            zeros = 0
        out.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    return b"\x00\x00\x00\x01" + bytes([(ref_idc << 5) | nal_type]) + bytes(out)


def h264_promising(width_mbs: int, height_mbs: int, frames: int = 3) -> bytes:
    """A raw H.264 stream whose SPS promises ``16 * width_mbs`` x ``16 * height_mbs`` pixels,
    followed by IDR slices of junk: the decoder must refuse before allocating the picture."""
    sps = _Bits()
    sps.u(8, 66)  # baseline
    sps.u(8, 0)
    sps.u(8, 62)  # level 6.2
    sps.ue(0)  # sps id
    sps.ue(0)  # log2_max_frame_num - 4
    sps.ue(2)  # pic_order_cnt_type
    sps.ue(1)  # max_num_ref_frames
    sps.u(1, 0)
    sps.ue(width_mbs - 1)
    sps.ue(height_mbs - 1)
    sps.u(1, 1)  # frame_mbs_only
    sps.u(1, 1)  # direct_8x8_inference
    sps.u(1, 0)  # no cropping
    sps.u(1, 0)  # no VUI
    pps = _Bits()
    pps.ue(0)
    pps.ue(0)
    pps.u(1, 0)  # CAVLC
    pps.u(1, 0)
    pps.ue(0)
    pps.ue(0)
    pps.ue(0)
    pps.u(1, 0)
    pps.u(2, 0)
    pps.se(0)
    pps.se(0)
    pps.se(0)
    pps.u(1, 1)
    pps.u(1, 0)
    pps.u(1, 0)
    out = _nal(7, sps.rbsp()) + _nal(8, pps.rbsp())
    rng = np.random.default_rng(7)
    for i in range(frames):
        sl = _Bits()
        sl.ue(0)  # first_mb_in_slice
        sl.ue(7)  # I slice
        sl.ue(0)  # pps id
        sl.u(4, 0)  # frame_num
        sl.ue(i)  # idr_pic_id
        sl.u(1, 0)
        sl.u(1, 0)  # dec_ref_pic_marking
        sl.se(0)  # slice_qp_delta
        sl.ue(1)  # no deblocking
        for byte in rng.integers(1, 255, 64):  # macroblocks: junk
            sl.u(8, int(byte))
        out += _nal(5, sl.rbsp())
    return out


def remux(raw: bytes, *, demuxer: str = "h264", fmt: str = "mpegts") -> bytes:
    """Raw Annex-B packets copied (not re-encoded) into a container."""
    buf = io.BytesIO()
    with av.open(io.BytesIO(raw), format=demuxer, options={"max_pixels": "1"}) as src:
        stream_in = src.streams.video[0]
        with av.open(buf, "w", format=fmt) as out:
            stream_out = out.add_stream_from_template(stream_in)
            for i, packet in enumerate(src.demux(stream_in)):
                if not packet.size:
                    continue
                packet.stream = stream_out
                packet.pts = packet.dts = i * 3600
                packet.time_base = Fraction(1, 90000)
                out.mux(packet)
    return buf.getvalue()


def hls_playlist(target: str) -> bytes:
    """An HLS media playlist with one segment at ``target`` (a path or URL)."""
    return (
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:0\n"
        f"#EXTINF:2.0,\n{target}\n#EXT-X-ENDLIST\n"
    ).encode()


def cuts(data: bytes, count: int) -> Sequence[int]:
    """``count`` cut points spread over ``data`` (more near the start, where headers are)."""
    n = len(data)
    points = {1, 2, 4, 8, 16, 64, 188, 400, 1000}
    points |= {int(n * (i + 1) / (count + 1)) for i in range(count)}
    return sorted(p for p in points if 0 < p < n)[: count + 9]
