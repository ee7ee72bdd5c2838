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

Playlists (HLS, DASH, ffconcat) and every other type raise :class:`UnsupportedMedia`.

Entry points, all taking one :class:`DecodeOptions` (model input size, ``fit``, sampling,
limits, interpolation, decoder threads; frozen, validated once; variants with
:meth:`DecodeOptions.with_`)::

    options = DecodeOptions(224, sampling=Sampling(mode="fps", fps=2.0))
    result = decode_bytes(segment, "video/mp2t", options)        # in this process
    result = decode_uri("https://host/clip.mp4", options)        # a file or an http(s) URL
    with DecodePool(2) as pool:                                  # sandboxed processes
        future = pool.submit_bytes(segment, "video/mp2t", options)

Output: :class:`DecodeResult` with :class:`Frame` objects holding a ``(size, size, 3)`` uint8
RGB picture and its timestamps (``pts``, ``t`` since the input's first frame, ``index``), and
with ``DecodeOptions(hashes="pdq")`` the PDQ hash of the decoded picture (``Frame.pdq``).

The stage, one module per idea (data flows top to bottom):

======================================  =====================================================
module                                  what it holds
======================================  =====================================================
:mod:`~pipeline.decode.media`           content types: tables, normalising, extension, kind
:mod:`~pipeline.decode.options`         :class:`DecodeOptions`, :class:`Limits`, ``Fit``
:mod:`~pipeline.decode.sources`         :func:`decode_bytes`, :func:`decode_uri`: bytes,
                                        local files, http(s) through FFmpeg; URL redaction
:mod:`~pipeline.decode.access`          :class:`InputAccess`: the files and URLs an
                                        untrusted reference may reach (roots, hosts,
                                        public addresses, redirects checked)
:mod:`~pipeline.decode.container`       MPEG-TS, MP4, WebM / Matroska: open, header checks,
                                        the packet loop, the timeline
:mod:`~pipeline.decode.raw`             :class:`RawStreamDecoder`: raw H.264 / HEVC chunks
:mod:`~pipeline.decode.bitstream`       H.264 / HEVC SPS, PPS and slice headers (bit reader)
:mod:`~pipeline.decode.image`           still images, their header sizes
:mod:`~pipeline.decode.frames`          :class:`Frame`, :class:`DecodeResult`, the sink that
                                        checks limits, samples and fits every frame
:mod:`~pipeline.decode.hashing`         PDQ hashes of sampled frames (``options.hashes``),
                                        from the decoded picture
:mod:`~pipeline.decode.sampling`        :class:`Sampling` rules and the :class:`Sampler`
:mod:`~pipeline.decode.fit`             pad / crop / tiles geometry, the swscale fitter
:mod:`~pipeline.decode.failures`        PyAV and OS errors as typed decode errors
:mod:`~pipeline.decode.ffmpeg_log`      FFmpeg's log as a failed-allocation counter
:mod:`~pipeline.decode.pool`            :class:`DecodePool`: sandboxed decode processes
:mod:`~pipeline.decode.pool_child`      the decode process's side of the pool
:mod:`~pipeline.decode.wire`            results across the process boundary
======================================  =====================================================

Safety: the :class:`Limits` are checked from the headers before anything is decoded where the
header tells (size in bytes, width and height, frame count, duration) and again on every decoded
frame; FFmpeg itself is given ``max_pixels`` so that no decoder allocates a larger picture. A
corrupt packet is skipped and counted (``DecodeResult.decode_errors``): a truncated or damaged
input yields the frames that could be decoded, and :class:`InvalidMedia` when there are none.
The in-process functions cannot survive an FFmpeg crash or interrupt a hung decoder call;
untrusted input belongs in :class:`DecodePool`, which runs them in sandboxed processes with a
hard wall-clock limit, CPU, memory and file limits, and a system-call filter
(:mod:`pipeline.decode.launch`, :mod:`pipeline.decode.sandbox`).
"""

from pipeline.decode.access import InputAccess
from pipeline.decode.frames import DecodeResult, Frame
from pipeline.decode.media import (
    CONTAINER_TYPES,
    IMAGE_TYPES,
    RAW_TYPES,
    RawCodec,
    content_type_for,
    normalize_content_type,
)
from pipeline.decode.options import DecodeOptions, Fit, Interpolation, Limits
from pipeline.decode.pool import DecodePool
from pipeline.decode.raw import RawStreamDecoder
from pipeline.decode.sampling import (
    DEFAULT_SCENE_THRESHOLD,
    Reason,
    Sampler,
    Sampling,
    SamplingMode,
    scene_difference,
)
from pipeline.decode.sources import decode_bytes, decode_uri

__all__ = [
    "CONTAINER_TYPES",
    "DEFAULT_SCENE_THRESHOLD",
    "IMAGE_TYPES",
    "RAW_TYPES",
    "DecodeOptions",
    "DecodePool",
    "DecodeResult",
    "Fit",
    "Frame",
    "InputAccess",
    "Interpolation",
    "Limits",
    "RawCodec",
    "RawStreamDecoder",
    "Reason",
    "Sampler",
    "Sampling",
    "SamplingMode",
    "content_type_for",
    "decode_bytes",
    "decode_uri",
    "normalize_content_type",
    "scene_difference",
]
