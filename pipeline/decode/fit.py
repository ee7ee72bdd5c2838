"""Fitting: a decoded frame to the square model input, inside FFmpeg's swscale.

``fit`` (a :class:`~pipeline.decode.options.DecodeOptions` field) chooses how a frame of any
shape becomes ``(size, size, 3)`` uint8 RGB:

``pad`` (default)
    the whole frame scaled to fit, centred, black bars: nothing is cut off.
``crop``
    short side scaled to ``size``, centre square kept (CLIP's own preprocessing).
``tiles``
    short side scaled to ``size``, then two or three overlapping squares along the long side
    that together cover the whole frame (aspect above 3: three side-by-side squares, padded).
    Every tile is a :class:`~pipeline.decode.Frame` of its own with ``tile`` 0, 1, 2 from left
    (or top).

Scaling and colour conversion run in FFmpeg's swscale (one reusable converter per input, one
swscale thread); only the small result becomes a numpy array. The display matrix (a rotated
phone video, JPEG EXIF orientation) is honoured in multiples of 90 degrees; mirroring is not.
Non-square pixels (the sample aspect ratio) are honoured too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Final, cast

import av
import numpy as np
import numpy.typing as npt
from av.video.reformatter import Interpolation as _SwsInterpolation
from av.video.reformatter import VideoReformatter

from pipeline.decode.options import Fit, Interpolation

__all__ = ["THUMB_SIDE", "Fitter", "Geometry", "RGBImage", "fit_geometry"]

RGBImage = npt.NDArray[np.uint8]
THUMB_SIDE: Final = 32  # scene-change thumbnails are 32 x 32 grey
_SWS_FLAGS: Final[dict[str, _SwsInterpolation]] = {
    "fast_bilinear": _SwsInterpolation.FAST_BILINEAR,
    "bilinear": _SwsInterpolation.BILINEAR,
    "area": _SwsInterpolation.AREA,
    "bicubic": _SwsInterpolation.BICUBIC,
    "lanczos": _SwsInterpolation.LANCZOS,
}


@dataclass(frozen=True, slots=True)
class Geometry:
    """Where the squares of one frame shape come from: computed once per shape."""

    scaled: tuple[int, int]  # swscale output (width, height), in the coded orientation
    turns: int  # np.rot90 turns (counter-clockwise) from coded to displayed orientation
    display: tuple[int, int]  # source (width, height) as displayed, pixels
    # per output square: (y, x, h, w) window of the scaled, displayed picture, and where that
    # window lands in the square (y, x); windows smaller than the square are padded
    windows: tuple[tuple[int, int, int, int, int, int], ...]


def fit_geometry(
    width: int, height: int, rotation: int, sar: Fraction | None, size: int, fit: Fit
) -> Geometry:
    """The swscale size and the square windows for a ``width`` x ``height`` coded frame shown
    turned by ``rotation`` degrees with sample aspect ratio ``sar``."""
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
    return Geometry(scaled=scaled, turns=turns, display=(disp_w, disp_h), windows=tuple(windows))


class Fitter:
    """Frame -> model-input squares, with one reusable swscale converter per target.

    ``sar`` is the input's sample aspect ratio (None: square pixels), set before the first frame.
    """

    def __init__(self, size: int, fit: Fit, interpolation: Interpolation) -> None:
        self._size = size
        self._fit = fit
        self._flags = _SWS_FLAGS[interpolation]
        self._rgb = VideoReformatter()
        self._grey = VideoReformatter()
        self._cache: dict[tuple[int, int, int, Fraction | None], Geometry] = {}
        self.sar: Fraction | None = None

    def geometry(self, frame: av.VideoFrame) -> Geometry:
        """The frame's geometry (cached per shape, rotation and ``sar``)."""
        key = (frame.width, frame.height, frame.rotation, self.sar)
        geo = self._cache.get(key)
        if geo is None:
            geo = fit_geometry(
                frame.width, frame.height, frame.rotation, self.sar, self._size, self._fit
            )
            self._cache[key] = geo
        return geo

    def fit(self, frame: av.VideoFrame) -> list[RGBImage]:
        """The frame as model-input squares: one, or one per tile."""
        geo = self.geometry(frame)
        sw, sh = geo.scaled
        scaled = self._rgb.reformat(
            frame, sw, sh, "rgb24", interpolation=self._flags, dst_color_range="JPEG", threads=1
        )
        rgb = cast(RGBImage, scaled.to_ndarray())
        if geo.turns:
            rgb = np.rot90(rgb, geo.turns)
        size = self._size
        out: list[RGBImage] = []
        for y, x, h, w, py, px in geo.windows:
            window = rgb[y : y + h, x : x + w]
            if h == size and w == size:
                out.append(np.ascontiguousarray(window))
            else:
                square = np.zeros((size, size, 3), dtype=np.uint8)
                square[py : py + h, px : px + w] = window
                out.append(square)
        return out

    def thumbnail(self, frame: av.VideoFrame) -> RGBImage:
        """A 32 x 32 grey thumbnail for scene-change tests. Area averaging: a point-sampling
        scaler turns camera motion over fine texture into noise as large as a cut."""
        small = self._grey.reformat(
            frame, THUMB_SIDE, THUMB_SIDE, "gray", interpolation="AREA", threads=1
        )
        return np.ascontiguousarray(small.to_ndarray(), dtype=np.uint8)
