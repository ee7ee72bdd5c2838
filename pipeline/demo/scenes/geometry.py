"""Object geometry in fractions of the image side: shape outlines, word masks, the rotated
bounding box of an object, box areas and overlaps.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Final

import cv2
import numpy as np
import numpy.typing as npt

from pipeline.demo.scenes.specs import FONTS, ObjectSpec, U8Image

__all__ = [
    "box_area",
    "half_extents",
    "intersection",
    "object_box",
    "rotation_matrix",
    "unit_polygon",
    "word_mask",
    "word_thickness",
]

_WORD_CAP_PX: Final = 48  # cap height of the cached, full-resolution word masks

_TRIANGLE_H: Final = math.sqrt(3.0) / 2.0
_STAR: Final[tuple[tuple[float, float], ...]] = tuple(
    (
        (0.5 if i % 2 == 0 else 0.5 * 0.42) * math.cos(-math.pi / 2.0 + i * math.pi / 5.0),
        (0.5 if i % 2 == 0 else 0.5 * 0.42) * math.sin(-math.pi / 2.0 + i * math.pi / 5.0),
    )
    for i in range(10)
)


def unit_polygon(shape: str, stroke: float) -> list[tuple[float, float]]:
    """Vertices of a polygonal shape whose unrotated bounding box side is 1 (y down)."""
    if shape == "square":
        return [(-0.5, -0.5), (0.5, -0.5), (0.5, 0.5), (-0.5, 0.5)]
    if shape == "triangle":
        h = _TRIANGLE_H / 2.0
        return [(0.0, -h), (0.5, h), (-0.5, h)]
    if shape == "star":
        return list(_STAR)
    if shape == "cross":
        w = stroke / 2.0
        return [
            (-w, -0.5), (w, -0.5), (w, -w), (0.5, -w), (0.5, w), (w, w),
            (w, 0.5), (-w, 0.5), (-w, w), (-0.5, w), (-0.5, -w), (-w, -w),
        ]  # fmt: skip
    # circle and ring are drawn as circles; their bounding square stands in for them
    return [(-0.5, -0.5), (0.5, -0.5), (0.5, 0.5), (-0.5, 0.5)]


def rotation_matrix(deg: float) -> npt.NDArray[np.float64]:
    """Matrix rotating (x, y-down) column vectors counter-clockwise on screen by ``deg``."""
    a = math.radians(deg)
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, s], [-s, c]], dtype=np.float64)


@lru_cache(maxsize=512)
def word_mask(word: str, font: int, thickness: int) -> U8Image:
    """The word in white on black, tightly cropped, cap height about ``_WORD_CAP_PX``."""
    face = FONTS[font]
    (_, h1), _ = cv2.getTextSize(word, face, 1.0, 1)
    scale = _WORD_CAP_PX / float(h1)
    (w, h), _ = cv2.getTextSize(word, face, scale, thickness)
    pad = 4 * thickness + 8
    canvas = np.zeros((h + 2 * pad, w + 2 * pad), dtype=np.uint8)
    cv2.putText(canvas, word, (pad, pad + h), face, scale, 255, thickness, cv2.LINE_AA)
    ys, xs = np.nonzero(canvas)
    crop = np.ascontiguousarray(canvas[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1])
    crop.setflags(write=False)
    return crop


def word_thickness(stroke: float) -> int:
    return max(2, round(stroke * _WORD_CAP_PX))


def _word_aspect(obj: ObjectSpec) -> float:
    mask = word_mask(obj.concept, obj.font, word_thickness(obj.stroke))
    return float(mask.shape[0]) / float(mask.shape[1])


def half_extents(obj: ObjectSpec) -> tuple[float, float]:
    """Half width and half height of the rotated object's bounding box, in fractions."""
    if obj.kind == "shape" and obj.concept in ("circle", "ring"):
        return obj.size / 2.0, obj.size / 2.0
    if obj.kind == "word":
        hh = 0.5 * _word_aspect(obj)
        corners = [(-0.5, -hh), (0.5, -hh), (0.5, hh), (-0.5, hh)]
    else:
        corners = unit_polygon(obj.concept, obj.stroke)
    a = math.radians(obj.rotation)
    c, s = math.cos(a), math.sin(a)
    hx = max(abs(c * x + s * y) for x, y in corners)
    hy = max(abs(c * y - s * x) for x, y in corners)
    return hx * obj.size, hy * obj.size


def object_box(obj: ObjectSpec) -> tuple[float, float, float, float]:
    hx, hy = half_extents(obj)
    cx, cy = obj.centre
    return cx - hx, cy - hy, cx + hx, cy + hy


def box_area(b: tuple[float, float, float, float]) -> float:
    return max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])


def intersection(
    a: tuple[float, float, float, float], b: tuple[float, float, float, float]
) -> float:
    return box_area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))
