"""Training frames that went through the real video path: H.264 encode, PyAV decode, fitting.

A model that has only seen rendered arrays meets something else in production: frames coded
by an H.264 encoder at some bitrate (blocking, ringing, chroma subsampling, smeared edges),
of any aspect ratio, decoded and fitted to the model input by :mod:`pipeline.decode`
(swscale, ``fit=pad`` letterboxing by default). :func:`decoded_pool` makes a pool of such
frames once per training run: scenes (some drawn by :mod:`pipeline.demo.variety`, some by the
generator, some bare photographs or textures with nothing on them) are placed on canvases of
several shapes, each held for a few frames with a slow drift so that the encoder codes motion,
encoded with libx264 at a random constant quality into MP4 in memory, and decoded with
:func:`pipeline.decode.decode_bytes`, exactly as a scan decodes a file. Training then draws a
share of every batch from the pool (:class:`pipeline.demo.training.TrainConfig.decoded`).
"""

from __future__ import annotations

import contextlib
import ctypes
import io
from collections.abc import Iterator
from fractions import Fraction
from typing import Any, Final

import av
import cv2
import numpy as np

from pipeline.decode import DecodeOptions, decode_bytes
from pipeline.demo import scenes, variety
from pipeline.errors import ConfigError

__all__ = ["CANVASES", "decoded_pool"]

#: (width, height) of the encoded videos: 16:9, 4:3, square, portrait, CIF, like real footage
CANVASES: Final = ((192, 108), (160, 120), (128, 128), (120, 160), (176, 144), (192, 144))
_HOLD: Final = 3  # frames each scene stays on screen; the last one (a P-frame) is kept
_PER_VIDEO: Final = 48  # scenes per encoded video (one canvas and one quality per video)
_FPS: Final = 25
_M_PERTURB: Final = -6  # glibc's mallopt option
_FILL: Final = 0xA5  # the byte it fills allocated memory with (inverted)


def _canvas_scene(
    rng: np.random.Generator, width: int, height: int
) -> tuple[np.ndarray, scenes.SceneSpec]:
    """One canvas-sized RGB picture and the spec that captions it."""
    u = rng.random()
    if u < 0.12:  # a photograph filling the frame, nothing on it
        return variety.photo_canvas(rng, width, height), variety.empty_spec("clutter")
    if u < 0.18:  # a procedural texture filling the frame
        return variety.texture_canvas(rng, width, height), variety.empty_spec("noise")
    side = min(width, height)
    spec = scenes.sample_spec(rng, split="train")
    if u < 0.75:
        img, spec = variety.render_varied(rng, spec, side)
    else:
        img = scenes.render(spec, side)
    canvas = np.empty((height, width, 3), np.uint8)
    canvas[:] = img.reshape(-1, 3).mean(axis=0).astype(np.uint8)
    y0, x0 = (height - side) // 2, (width - side) // 2
    canvas[y0 : y0 + side, x0 : x0 + side] = img
    return canvas, spec


def _encode(frames: list[np.ndarray], crf: int, width: int, height: int) -> bytes:
    """H.264 (libx264, one thread) in MP4, in memory; the same frames give the same stream
    (see :func:`_heap_filled`)."""
    buf = io.BytesIO()
    with _heap_filled(), av.open(buf, "w", format="mp4") as out:
        stream: Any = out.add_stream("libx264", rate=_FPS)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "veryfast", "crf": str(crf), "threads": "1"}
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, _FPS)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


@contextlib.contextmanager
def _heap_filled() -> Iterator[None]:
    """While encoding, glibc fills the memory it hands out with one fixed byte (``mallopt``'s
    ``M_PERTURB``, process-wide, put back after).

    The encoder reads heap memory it has not written: the same frames were coded into
    different streams (decoded frames a level or two apart) depending on what the process had
    freed before, 1 to 2 extra streams in 24 encodes of a 192 x 108 clip, none with the memory
    filled (measured here with glibc's ``MALLOC_PERTURB_``). Elsewhere (another C library)
    nothing is changed and the pool may vary a little from run to run."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        yield
        return
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    filled = mallopt(_M_PERTURB, _FILL) == 1
    try:
        yield
    finally:
        if filled:
            mallopt(_M_PERTURB, 0)


def _video(
    rng: np.random.Generator, n: int, side: int
) -> tuple[list[np.ndarray], list[scenes.SceneSpec]]:
    width, height = CANVASES[int(rng.integers(len(CANVASES)))]
    crf = int(rng.integers(20, 42))
    frames: list[np.ndarray] = []
    specs: list[scenes.SceneSpec] = []
    for _ in range(n):
        canvas, spec = _canvas_scene(rng, width, height)
        dx = int(rng.integers(-3, 4))
        for k in range(_HOLD):  # a slow pan: the encoder codes motion, as in real footage
            m = np.array([[1.0, 0.0, dx * k / _HOLD], [0.0, 1.0, 0.0]], dtype=np.float32)
            frames.append(
                np.asarray(
                    cv2.warpAffine(canvas, m, (width, height), borderMode=cv2.BORDER_REPLICATE),
                    dtype=np.uint8,
                )
            )
        specs.append(spec)
    decoded = decode_bytes(_encode(frames, crf, width, height), "video/mp4", DecodeOptions(side))
    if len(decoded.frames) != len(frames):
        raise ConfigError(f"decoded {len(decoded.frames)} frames of {len(frames)}")
    images = [decoded.frames[i * _HOLD + _HOLD - 1].image for i in range(n)]
    return images, specs


def decoded_pool(
    rng: np.random.Generator, n: int, side: int
) -> tuple[np.ndarray, list[scenes.SceneSpec]]:
    """``n`` frames (``(n, side, side, 3)`` uint8) taken through H.264 encode, PyAV decode
    and the decode stage's default fit, with the scene specs that caption them."""
    if not 0 < n <= 100_000:
        raise ConfigError(f"a decoded pool holds 1 to 100000 frames, not {n!r}")
    images: list[np.ndarray] = []
    specs: list[scenes.SceneSpec] = []
    while len(images) < n:
        imgs, sps = _video(rng, min(_PER_VIDEO, n - len(images)), side)
        images += imgs
        specs += sps
    return np.stack(images), specs
