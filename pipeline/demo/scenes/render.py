"""Drawing a :class:`~pipeline.demo.scenes.specs.SceneSpec`: backgrounds (flat, gradient,
noise, clutter), supersampled anti-aliased object masks, occluders.
"""

from __future__ import annotations

import math
import random
from functools import lru_cache
from typing import Final

import cv2
import numpy as np

from pipeline.demo.scenes.geometry import (
    object_box,
    rotation_matrix,
    unit_polygon,
    word_mask,
    word_thickness,
)
from pipeline.demo.scenes.specs import RGB, BackgroundSpec, F32Image, ObjectSpec, SceneSpec, U8Image
from pipeline.errors import ConfigError

__all__ = [
    "canvas_bounds",
    "object_mask",
    "render",
]

_SS: Final = 4  # supersampling factor for object masks
_SUBPIX: Final = 4  # cv2 drawing `shift`: coordinates carry 4 fractional bits
_SUBPIX_SCALE: Final = float(1 << _SUBPIX)

_NOISE_BANK_SIDE: Final = 256


@lru_cache(maxsize=1)
def _noise_bank() -> F32Image:
    """Fixed Gaussian noise (luminance + 3 chroma planes) that noise backgrounds crop from."""
    bank = np.random.default_rng(0x5EED).standard_normal(
        (_NOISE_BANK_SIDE, _NOISE_BANK_SIDE, 4), dtype=np.float32
    )
    bank.setflags(write=False)
    return bank


def _background(bg: BackgroundSpec, side: int) -> F32Image:
    base = np.asarray(bg.colour, dtype=np.float32)
    if bg.kind == "gradient":
        coords = (np.arange(side, dtype=np.float32) + np.float32(0.5)) / np.float32(side)
        coords -= np.float32(0.5)
        a = math.radians(bg.angle)
        c, s = math.cos(a), math.sin(a)
        norm = abs(c) + abs(s)
        t = coords[None, :] * np.float32(c / norm) + coords[:, None] * np.float32(s / norm)
        t += np.float32(0.5)
        delta = np.asarray(bg.colour2, dtype=np.float32) - base
        img: F32Image = base + t[:, :, None] * delta
        return img
    img = np.empty((side, side, 3), dtype=np.float32)
    img[:] = base
    if bg.kind == "noise":
        trng = random.Random(bg.seed)  # noqa: S311 - texture, not security
        low_amp = trng.uniform(3.0, 9.0)
        pix_sigma = trng.uniform(2.0, 8.0)
        chroma_sigma = trng.uniform(1.0, 4.0)
        grid = trng.randint(3, 6)
        low = np.array([trng.gauss(0.0, 1.0) for _ in range(grid * grid)], dtype=np.float32)
        low_up = cv2.resize(low.reshape(grid, grid), (side, side), interpolation=cv2.INTER_CUBIC)
        if side <= _NOISE_BANK_SIDE:
            ox = trng.randrange(_NOISE_BANK_SIDE - side + 1)
            oy = trng.randrange(_NOISE_BANK_SIDE - side + 1)
            fine = _noise_bank()[oy : oy + side, ox : ox + side]
        else:
            fine = np.random.default_rng(bg.seed).standard_normal((side, side, 4), dtype=np.float32)
        lum = low_up * np.float32(low_amp) + fine[:, :, 0] * np.float32(pix_sigma)
        img += lum[:, :, None]
        img += fine[:, :, 1:] * np.float32(chroma_sigma)
    elif bg.kind == "clutter":
        img8 = np.full((side, side, 3), bg.colour, dtype=np.uint8)
        _draw_clutter(img8, bg, side)
        return img8.astype(np.float32)
    return img


def _clutter_colour(trng: random.Random, base: RGB) -> tuple[float, float, float]:
    lum = trng.choice((-1.0, 1.0)) * trng.uniform(15.0, 35.0)
    r, g, b = (min(255.0, max(0.0, v + lum + trng.uniform(-6.0, 6.0))) for v in base)
    return r, g, b


def _draw_clutter(img: U8Image, bg: BackgroundSpec, side: int) -> None:
    """Thin lines and small, irregular, low-contrast blobs: nothing shape- or colour-like."""
    trng = random.Random(bg.seed)  # noqa: S311 - texture, not security
    n_lines = trng.randint(3, 9)
    n_blobs = trng.randint(2, 6)
    s = _SUBPIX_SCALE * side
    for _ in range(n_lines):
        p = (round(trng.uniform(-0.1, 1.1) * s), round(trng.uniform(-0.1, 1.1) * s))
        q = (round(trng.uniform(-0.1, 1.1) * s), round(trng.uniform(-0.1, 1.1) * s))
        cv2.line(img, p, q, _clutter_colour(trng, bg.colour), 1, cv2.LINE_AA, _SUBPIX)
    for _ in range(n_blobs):
        cx, cy = trng.random(), trng.random()
        radius = trng.uniform(0.015, 0.045)
        k = trng.randint(5, 8)
        angles = sorted(trng.uniform(0.0, 2.0 * math.pi) for _ in range(k))
        pts = []
        for a in angles:
            r = radius * trng.uniform(0.35, 1.0)  # lumpy: neither a circle nor a polygon
            pts.append((round((cx + r * math.cos(a)) * s), round((cy + r * math.sin(a)) * s)))
        poly = np.array(pts, dtype=np.int32)
        cv2.fillPoly(img, [poly], _clutter_colour(trng, bg.colour), cv2.LINE_AA, _SUBPIX)


def canvas_bounds(
    box: tuple[float, float, float, float], side: int
) -> tuple[int, int, int, int] | None:
    x0 = max(0, math.floor(box[0] * side) - 1)
    y0 = max(0, math.floor(box[1] * side) - 1)
    x1 = min(side, math.ceil(box[2] * side) + 1)
    y1 = min(side, math.ceil(box[3] * side) + 1)
    if x1 <= x0 or y1 <= y0:
        return None
    return x0, y0, x1, y1


def object_mask(obj: ObjectSpec, side: int, x0: int, y0: int, w: int, h: int) -> U8Image:
    """Coverage of ``obj`` over output pixels [x0, x0+w) x [y0, y0+h), drawn supersampled."""
    hi = np.zeros((h * _SS, w * _SS), dtype=np.uint8)
    # continuous output coordinate u maps to supersampled pixel-centre coordinate u*SS - 0.5
    cx = (obj.centre[0] * side - x0) * _SS - 0.5
    cy = (obj.centre[1] * side - y0) * _SS - 0.5
    size_hi = obj.size * side * _SS
    if obj.kind == "word":
        word = word_mask(obj.concept, obj.font, word_thickness(obj.stroke))
        k = size_hi / word.shape[1]
        m = rotation_matrix(obj.rotation) * k
        src_c = np.array([(word.shape[1] - 1) / 2.0, (word.shape[0] - 1) / 2.0])
        shift = np.array([cx, cy]) - m @ src_c
        affine = np.hstack([m, shift[:, None]])
        cv2.warpAffine(
            word,
            affine,
            (w * _SS, h * _SS),
            dst=hi,
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=0,
        )
    elif obj.concept in ("circle", "ring"):
        centre = (round(cx * _SUBPIX_SCALE), round(cy * _SUBPIX_SCALE))
        r_out = round(size_hi / 2.0 * _SUBPIX_SCALE)
        cv2.circle(hi, centre, r_out, 255, -1, cv2.LINE_AA, _SUBPIX)
        if obj.concept == "ring":
            r_in = round(size_hi * (0.5 - obj.stroke) * _SUBPIX_SCALE)
            cv2.circle(hi, centre, r_in, 0, -1, cv2.LINE_AA, _SUBPIX)
    else:
        unit = np.asarray(unit_polygon(obj.concept, obj.stroke), dtype=np.float64)
        pts = unit @ rotation_matrix(obj.rotation).T * size_hi
        pts += (cx, cy)
        cv2.fillPoly(
            hi, [np.round(pts * _SUBPIX_SCALE).astype(np.int32)], 255, cv2.LINE_AA, _SUBPIX
        )
    return np.asarray(cv2.resize(hi, (w, h), interpolation=cv2.INTER_AREA), dtype=np.uint8)


def _blend(img: F32Image, x0: int, y0: int, mask: U8Image, rgb: RGB) -> None:
    h, w = mask.shape
    region = img[y0 : y0 + h, x0 : x0 + w]
    alpha = mask.astype(np.float32)[:, :, None] * np.float32(1.0 / 255.0)
    region += (np.asarray(rgb, dtype=np.float32) - region) * alpha


def render(spec: SceneSpec, size: int = 64) -> U8Image:
    """Draw ``spec`` as a ``size`` x ``size`` x 3 uint8 RGB image (C-contiguous)."""
    if not isinstance(size, int) or size < 8:
        raise ConfigError(f"render size must be an int >= 8, not {size!r}")
    img = _background(spec.background, size)
    for obj in spec.objects:
        bounds = canvas_bounds(object_box(obj), size)
        if bounds is None:
            continue
        x0, y0, x1, y1 = bounds
        _blend(img, x0, y0, object_mask(obj, size, x0, y0, x1 - x0, y1 - y0), obj.drawn_rgb)
    for occ in spec.occluders:
        bounds = canvas_bounds(occ.box, size)
        if bounds is None:
            continue
        x0, y0, x1, y1 = bounds
        w, h = x1 - x0, y1 - y0
        hi = np.zeros((h * _SS, w * _SS), dtype=np.uint8)
        bx0, bx1 = ((v * size - x0) * _SS - 0.5 for v in (occ.box[0], occ.box[2]))
        by0, by1 = ((v * size - y0) * _SS - 0.5 for v in (occ.box[1], occ.box[3]))
        pts = np.array([(bx0, by0), (bx1, by0), (bx1, by1), (bx0, by1)]) * _SUBPIX_SCALE
        cv2.fillPoly(hi, [np.round(pts).astype(np.int32)], 255, cv2.LINE_AA, _SUBPIX)
        mask = np.asarray(cv2.resize(hi, (w, h), interpolation=cv2.INTER_AREA), dtype=np.uint8)
        _blend(img, x0, y0, mask, occ.rgb)
    out: U8Image = np.clip(img + np.float32(0.5), 0.0, 255.0).astype(np.uint8)
    return np.ascontiguousarray(out)
