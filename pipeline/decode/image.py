"""Still images (JPEG, PNG, WebP): one input, one frame.

The picture size is read from the image header (:func:`image_size`: PNG's IHDR, WebP's VP8, VP8L
or VP8X chunk, JPEG's first start-of-frame segment) and checked against ``Limits.max_pixels``
before FFmpeg's decoder sees the bytes; the decoder is given ``max_pixels`` too. The picture
becomes one :class:`~pipeline.decode.Frame` with ``reason`` "image", ``index`` 0 and ``t`` 0; JPEG
EXIF orientation is honoured (see :mod:`pipeline.decode.fit`).
"""

from __future__ import annotations

import time
from typing import cast

import av

from pipeline.decode.failures import map_error
from pipeline.decode.frames import DecodeResult, FrameSink, Picked, frames_from
from pipeline.decode.options import ResolvedOptions
from pipeline.errors import InvalidMedia

__all__ = ["decode_image", "image_size"]


def _be16(data: bytes, at: int) -> int:
    return int.from_bytes(data[at : at + 2], "big")


def image_size(data: bytes, decoder: str) -> tuple[int, int]:
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


def decode_image(
    data: bytes, decoder: str, opts: ResolvedOptions, *, label: str, ct: str
) -> DecodeResult:
    """Decode one still image with FFmpeg's ``decoder`` (``mjpeg``, ``png``, ``webp``)."""
    sink = FrameSink(opts, label, time.monotonic() + opts.limits.timeout)
    try:
        width, height = image_size(data, decoder)
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
        raise map_error(e, label) from e
    if not frames:
        raise InvalidMedia(f"{label}: no picture could be decoded")
    frame = frames[0]
    sink.check_pixels(frame.width, frame.height, "picture")
    geo = sink.fitter.geometry(frame)
    item = Picked(
        images=sink.fitter.fit(frame),
        pts_ticks=0,
        pts=0.0,
        keyframe=True,
        reason="image",
        order=0,
        display=geo.display,
        pdq=sink.hash(frame),
    )
    return DecodeResult(
        frames=tuple(frames_from(item, t=0.0, index=0)),
        width=geo.display[0],
        height=geo.display[1],
        duration=0.0,
        frames_decoded=1,
        codec=decoder,
        content_type=ct,
    )
