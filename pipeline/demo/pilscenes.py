"""Single-shape scenes drawn by a second renderer, for evaluation only.

:mod:`pipeline.demo.scenes` draws the scenes ``clipguard-demo`` is trained on (OpenCV masks,
its own shape proportions and palette). A model that only knows that one renderer can look
excellent on it and still fail on a red triangle drawn in a paint program. This module draws
the same vocabulary (six shapes, eight colour names) with Pillow's ``ImageDraw``, sharing no
code, geometry or palette with the training generator, so its accuracy measures how well the
model knows *shapes and colours* rather than *that generator*. Nothing in training imports it.

Its own choices: colours drawn from hue/saturation/value ranges per colour name (never the
generator's RGB table); triangles isosceles with a random apex height, stars with five or six
points and a random inner radius, crosses with random arm widths, rings with a random band;
flat, two-colour gradient or blurred-noise backgrounds; rotation within +-25 degrees; the
shape's extent 18-32% of the frame side; drawn at 4x and downsampled by Pillow.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFilter

from pipeline.errors import ConfigError

__all__ = [
    "COLOUR_HSV",
    "SHAPE_NAMES",
    "DrawnScene",
    "draw_scene",
    "draw_scenes",
]

SHAPE_NAMES: Final = ("circle", "square", "triangle", "star", "cross", "ring")
#: colour name -> (hue range, saturation range, value range), hue in turns (0..1)
_Range = tuple[float, float]
COLOUR_HSV: Final[dict[str, tuple[_Range, _Range, _Range]]] = {
    "red": ((-0.02, 0.015), (0.75, 1.0), (0.72, 0.95)),
    "green": ((0.28, 0.40), (0.6, 0.95), (0.5, 0.8)),
    "blue": ((0.58, 0.66), (0.7, 1.0), (0.7, 1.0)),
    "yellow": ((0.14, 0.17), (0.75, 1.0), (0.9, 1.0)),
    "white": ((0.0, 1.0), (0.0, 0.05), (0.93, 1.0)),
    "black": ((0.0, 1.0), (0.0, 0.3), (0.0, 0.12)),
    "orange": ((0.065, 0.095), (0.85, 1.0), (0.9, 1.0)),
    "purple": ((0.74, 0.81), (0.55, 0.85), (0.55, 0.85)),
}
_SS: Final = 4  # drawn at this multiple of the output side, then downsampled


@dataclass(frozen=True)
class DrawnScene:
    image: npt.NDArray[np.uint8]  # (side, side, 3) RGB
    shape: str
    colour: str
    background: str  # flat, gradient or noise


def _hsv(rng: np.random.Generator, name: str) -> tuple[int, int, int]:
    (h0, h1), (s0, s1), (v0, v1) = COLOUR_HSV[name]
    r, g, b = colorsys.hsv_to_rgb(
        float(rng.uniform(h0, h1)) % 1.0, float(rng.uniform(s0, s1)), float(rng.uniform(v0, v1))
    )
    return round(r * 255), round(g * 255), round(b * 255)


def _dull(rng: np.random.Generator) -> tuple[int, int, int]:
    """A background colour: low saturation, any lightness."""
    r, g, b = colorsys.hsv_to_rgb(
        float(rng.random()), float(rng.uniform(0.0, 0.3)), float(rng.uniform(0.15, 0.9))
    )
    return round(r * 255), round(g * 255), round(b * 255)


def _far_enough(a: tuple[int, int, int], b: tuple[int, int, int]) -> bool:
    """Visible against each other: RGB distance and, for greys, lightness."""
    luma = abs(0.3 * (a[0] - b[0]) + 0.59 * (a[1] - b[1]) + 0.11 * (a[2] - b[2]))
    return math.dist(a, b) >= 110 and luma >= 35


def _background(
    rng: np.random.Generator, kind: str, side: int, ink: tuple[int, int, int]
) -> Image.Image:
    c1 = _dull(rng)
    while not _far_enough(c1, ink):
        c1 = _dull(rng)
    if kind == "flat":
        return Image.new("RGB", (side, side), c1)
    if kind == "gradient":
        c2 = _dull(rng)
        while not _far_enough(c2, ink):
            c2 = _dull(rng)
        a = float(rng.uniform(0, 2 * math.pi))
        yy, xx = np.mgrid[0:side, 0:side] / (side - 1) - 0.5
        t = np.clip(0.5 + xx * math.cos(a) + yy * math.sin(a), 0, 1)[..., None]
        img = np.asarray(c1, np.float32) * (1 - t) + np.asarray(c2, np.float32) * t
        return Image.fromarray(img.astype(np.uint8))
    noise = rng.normal(0, float(rng.uniform(10, 28)), (side // 8, side // 8, 3))
    base = Image.fromarray(np.clip(np.asarray(c1) + noise, 0, 255).astype(np.uint8))
    base = base.resize((side, side), Image.Resampling.BICUBIC)
    grain = rng.normal(0, float(rng.uniform(3, 9)), (side, side, 1))
    img = np.clip(np.asarray(base, np.float32) + grain, 0, 255).astype(np.uint8)
    return Image.fromarray(img).filter(ImageFilter.GaussianBlur(0.6))


def _outline(rng: np.random.Generator, shape: str) -> list[tuple[float, float]]:
    """Polygon vertices in a unit frame (extent about 1 across, centred on 0, y down)."""
    if shape == "square":
        return [(-0.5, -0.5), (0.5, -0.5), (0.5, 0.5), (-0.5, 0.5)]
    if shape == "triangle":
        apex = float(rng.uniform(0.8, 1.05))  # height / base
        shift = float(rng.uniform(-0.08, 0.08))
        return [(shift, -apex / 2), (0.5, apex / 2), (-0.5, apex / 2)]
    if shape == "star":
        points = 5 if rng.random() < 0.8 else 6
        inner = float(rng.uniform(0.36, 0.52))
        out = []
        for i in range(2 * points):
            r = 0.5 if i % 2 == 0 else 0.5 * inner
            a = -math.pi / 2 + i * math.pi / points
            out.append((r * math.cos(a), r * math.sin(a)))
        return out
    if shape == "cross":
        w = float(rng.uniform(0.11, 0.19))  # half the arm width
        return [
            (-w, -0.5), (w, -0.5), (w, -w), (0.5, -w), (0.5, w), (w, w),
            (w, 0.5), (-w, 0.5), (-w, w), (-0.5, w), (-0.5, -w), (-w, -w),
        ]  # fmt: skip
    raise ConfigError(f"no polygon for shape {shape!r}")


def draw_scene(
    rng: np.random.Generator, shape: str, colour: str, background: str, side: int = 64
) -> DrawnScene:
    """One filled ``colour`` ``shape`` on a ``background`` (flat, gradient or noise)."""
    if shape not in SHAPE_NAMES or colour not in COLOUR_HSV:
        raise ConfigError(f"unknown shape or colour: {shape!r}, {colour!r}")
    if background not in ("flat", "gradient", "noise"):
        raise ConfigError(f"unknown background {background!r}")
    big = side * _SS
    ink = _hsv(rng, colour)
    canvas = _background(rng, background, big, ink)
    draw = ImageDraw.Draw(canvas)
    extent = float(rng.uniform(0.18, 0.32)) * big
    margin = extent * 0.75
    cx, cy = (float(v) for v in rng.uniform(margin, big - margin, size=2))
    if shape in ("circle", "ring"):
        r = extent / 2
        box = (cx - r, cy - r, cx + r, cy + r)
        if shape == "circle":
            draw.ellipse(box, fill=ink)
        else:
            draw.ellipse(box, outline=ink, width=max(2, round(extent * rng.uniform(0.13, 0.22))))
    else:
        a = math.radians(float(rng.uniform(-25, 25)))
        c, s = math.cos(a), math.sin(a)
        pts = [
            (cx + extent * (x * c - y * s), cy + extent * (x * s + y * c))
            for x, y in _outline(rng, shape)
        ]
        draw.polygon(pts, fill=ink)
    small = canvas.resize((side, side), Image.Resampling.LANCZOS)
    image = np.ascontiguousarray(np.asarray(small, dtype=np.uint8))
    return DrawnScene(image=image, shape=shape, colour=colour, background=background)


def draw_scenes(per_pair: int, *, seed: int = 19, side: int = 64) -> list[DrawnScene]:
    """``per_pair`` scenes of every (shape, colour) pair, backgrounds in turn; seeded."""
    if not 1 <= per_pair <= 1000:
        raise ConfigError(f"per_pair must be in 1..1000, not {per_pair}")
    rng = np.random.default_rng(seed)
    kinds = ("flat", "gradient", "noise")
    out = []
    for shape in SHAPE_NAMES:
        for colour in COLOUR_HSV:
            for i in range(per_pair):
                out.append(draw_scene(rng, shape, colour, kinds[i % 3], side))
    return out
