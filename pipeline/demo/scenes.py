"""Seeded synthetic scenes for training and evaluating a tiny in-repo CLIP.

A scene is a background (flat, gradient, noise or clutter) with up to three objects on it:
coloured shapes (circle, square, triangle, star, cross, ring) and coloured words (STOP, SPAM,
FREE, HELLO). Every scene is described by a frozen :class:`SceneSpec`, so a scene can be
re-rendered exactly from its spec; :func:`render` draws one, :func:`caption` writes a varied
English caption for it, and :func:`canonical_caption` gives the one plain caption per object
used as a zero-shot prompt ("a red triangle", "the word spam", "an empty background").

Train / held-out split: for every (concept, colour) pair exactly one of the four background
kinds is held out (:data:`HELDOUT_COMBOS`, a quarter of all triples, fixed by a hash). Train
scenes never contain a held-out triple; held-out scenes always have one as their primary
object, so every concept and colour is seen in training, only never in that combination.

Coordinates in specs are fractions of the image side, with (0, 0) the top-left corner and
(1, 1) the bottom-right one; rotations are degrees, counter-clockwise as seen on screen.
"""

from __future__ import annotations

import colorsys
import hashlib
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from types import MappingProxyType
from typing import Final, Literal

import cv2
import numpy as np
import numpy.typing as npt

from pipeline.errors import ConfigError

__all__ = [
    "BACKGROUNDS",
    "COLOURS",
    "COLOUR_RGB",
    "CONCEPTS",
    "EMPTY_CAPTION",
    "HELDOUT_COMBOS",
    "SHAPES",
    "SIZE_RANGE",
    "WORDS",
    "WORD_SIZE_RANGE",
    "BackgroundKind",
    "BackgroundSpec",
    "ObjectKind",
    "ObjectSpec",
    "OccluderSpec",
    "SceneSpec",
    "Split",
    "canonical_caption",
    "caption",
    "concept_caption",
    "generate_batch",
    "heldout_background",
    "is_heldout",
    "render",
    "sample_single_object_spec",
    "sample_spec",
]

Split = Literal["train", "heldout"]
BackgroundKind = Literal["flat", "gradient", "noise", "clutter"]
ObjectKind = Literal["shape", "word"]
_RGB = tuple[int, int, int]
_U8Image = npt.NDArray[np.uint8]
_F32Image = npt.NDArray[np.float32]

SHAPES: Final[tuple[str, ...]] = ("circle", "square", "triangle", "star", "cross", "ring")
COLOURS: Final[tuple[str, ...]] = (
    "red",
    "green",
    "blue",
    "yellow",
    "white",
    "black",
    "orange",
    "purple",
)
COLOUR_RGB: Final[Mapping[str, _RGB]] = MappingProxyType(
    {
        "red": (215, 25, 35),
        "green": (40, 170, 60),
        "blue": (40, 80, 230),
        "yellow": (245, 225, 40),
        "white": (245, 245, 245),
        "black": (20, 20, 20),
        "orange": (245, 130, 20),
        "purple": (140, 50, 200),
    }
)
WORDS: Final[tuple[str, ...]] = ("STOP", "SPAM", "FREE", "HELLO")
BACKGROUNDS: Final[tuple[BackgroundKind, ...]] = ("flat", "gradient", "noise", "clutter")
CONCEPTS: Final[tuple[str, ...]] = SHAPES + WORDS
#: Shape size range: side of the unrotated bounding box, as a fraction of the image side.
SIZE_RANGE: Final[tuple[float, float]] = (0.08, 0.45)
#: Word size range: width of the unrotated inked text, as a fraction of the image side.
WORD_SIZE_RANGE: Final[tuple[float, float]] = (0.45, 0.92)
EMPTY_CAPTION: Final = "an empty background"

_SS: Final = 4  # supersampling factor for object masks
_SUBPIX: Final = 4  # cv2 drawing `shift`: coordinates carry 4 fractional bits
_SUBPIX_SCALE: Final = float(1 << _SUBPIX)
_JITTER: Final = 12  # per-channel colour jitter of objects, +-
_MIN_BG_DISTANCE: Final = 125.0  # RGB distance between background and object colours
_MIN_EMPTY_BG_DISTANCE: Final = 100.0  # empty scenes: distance to every concept colour
_MAX_OVERLAP: Final = 0.15  # objects' boxes may share at most this much of the smaller box
_MAX_OCCLUSION: Final = 0.25  # an occluder hides at most this much of a shape's ink and box
_MIN_OCCLUDED_SIZE: Final = 0.15  # smaller shapes are never the target of an occluder
_MAX_WORD_OCCLUSION: Final = 0.03  # ... and of a word's ink: hiding a letter changes the word
_WORD_CAP_PX: Final = 48  # cap height of the cached, full-resolution word masks
_FONTS: Final[tuple[int, ...]] = (
    cv2.FONT_HERSHEY_SIMPLEX,
    cv2.FONT_HERSHEY_DUPLEX,
    cv2.FONT_HERSHEY_COMPLEX,
    cv2.FONT_HERSHEY_TRIPLEX,
    cv2.FONT_HERSHEY_SIMPLEX | cv2.FONT_ITALIC,
    cv2.FONT_HERSHEY_DUPLEX | cv2.FONT_ITALIC,
)
_STROKE_RANGE: Final[Mapping[str, tuple[float, float]]] = MappingProxyType(
    {
        "cross": (0.26, 0.38),  # bar width / size
        "ring": (0.14, 0.22),  # ring width / size
        "word": (0.09, 0.17),  # stroke width / cap height
    }
)
_BG_WORDS: Final[Mapping[str, tuple[str, ...]]] = MappingProxyType(
    {
        "flat": ("plain", "flat", "uniform"),
        "gradient": ("gradient", "smooth gradient", "shaded"),
        "noise": ("noisy", "grainy", "speckled"),
        "clutter": ("cluttered", "busy", "messy"),
    }
)
_COUNT_WORDS: Final = ("one", "two", "three", "four", "five")
_TIMES_WORDS: Final = ("once", "twice", "three times", "four times", "five times")
_PLURALS: Final[Mapping[str, str]] = MappingProxyType(
    {s: s + "es" if s.endswith("ss") else s + "s" for s in SHAPES}
)


# --------------------------------------------------------------------------------------------
# Specs


@dataclass(frozen=True)
class BackgroundSpec:
    """A background: its kind, colours and, for noise and clutter, the texture seed.

    ``colour`` is the base colour; ``colour2`` is the far end of a gradient (equal to
    ``colour`` for other kinds); ``angle`` is the gradient direction in degrees.
    """

    kind: BackgroundKind
    colour: _RGB
    colour2: _RGB
    angle: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in BACKGROUNDS:
            raise ConfigError(f"unknown background kind {self.kind!r}; expected {BACKGROUNDS}")
        for c in (self.colour, self.colour2):
            if len(c) != 3 or any(not 0 <= v <= 255 for v in c):
                raise ConfigError(f"background colour {c!r} is not an RGB triple in 0..255")


@dataclass(frozen=True)
class ObjectSpec:
    """One object: a coloured shape or a coloured word.

    ``concept`` is the shape name (``SHAPES``) or the word (``WORDS``, upper case).
    ``centre`` is (x, y) in fractions of the image side. ``size`` is the side of the unrotated
    bounding box for shapes and the width of the unrotated inked text for words, both as a
    fraction of the image side. ``rgb`` is the colour actually drawn (the named colour with a
    little jitter; ``None`` draws the nominal colour). ``stroke`` is the bar width of a cross,
    the band width of a ring (both relative to ``size``) or the pen width of a word (relative
    to its cap height); other shapes ignore it. ``font`` indexes the Hershey fonts used for
    words.
    """

    kind: ObjectKind
    concept: str
    colour: str
    centre: tuple[float, float]
    size: float
    rotation: float = 0.0
    rgb: _RGB | None = None
    stroke: float = 0.2
    font: int = 0

    def __post_init__(self) -> None:
        if self.kind == "shape":
            if self.concept not in SHAPES:
                raise ConfigError(f"unknown shape {self.concept!r}; expected one of {SHAPES}")
        elif self.kind == "word":
            if self.concept not in WORDS:
                raise ConfigError(f"unknown word {self.concept!r}; expected one of {WORDS}")
        else:
            raise ConfigError(f"object kind must be 'shape' or 'word', not {self.kind!r}")
        if self.colour not in COLOUR_RGB:
            raise ConfigError(f"unknown colour {self.colour!r}; expected one of {COLOURS}")
        if not 0.0 < self.size <= 1.0:
            raise ConfigError(f"object size must be in (0, 1], not {self.size}")
        if not 0.0 < self.stroke < 0.5:
            raise ConfigError(f"object stroke must be in (0, 0.5), not {self.stroke}")
        if not 0 <= self.font < len(_FONTS):
            raise ConfigError(f"font index must be in 0..{len(_FONTS) - 1}, not {self.font}")

    @property
    def drawn_rgb(self) -> _RGB:
        """The colour drawn: ``rgb`` if set, else the nominal colour of ``colour``."""
        return self.rgb if self.rgb is not None else COLOUR_RGB[self.colour]


@dataclass(frozen=True)
class OccluderSpec:
    """An axis-aligned patch drawn over the objects; box (x0, y0, x1, y1) in fractions."""

    box: tuple[float, float, float, float]
    rgb: _RGB


@dataclass(frozen=True)
class SceneSpec:
    """A whole scene; :func:`render` reproduces it exactly. ``objects[0]`` is the primary."""

    background: BackgroundSpec
    objects: tuple[ObjectSpec, ...] = ()
    occluders: tuple[OccluderSpec, ...] = ()

    @property
    def primary(self) -> ObjectSpec | None:
        """The scene's primary object, or ``None`` for an empty scene."""
        return self.objects[0] if self.objects else None


# --------------------------------------------------------------------------------------------
# Held-out combinations


@lru_cache(maxsize=1)
def _heldout_table() -> Mapping[tuple[str, str], BackgroundKind]:
    # For each concept, order the colours by a fixed hash and hold out background i % 4 for
    # the i-th: every concept loses each background for exactly two colours, and every
    # (concept, colour) pair keeps three training backgrounds.
    table: dict[tuple[str, str], BackgroundKind] = {}
    for concept in CONCEPTS:
        order = sorted(
            COLOURS,
            key=lambda c: hashlib.sha256(f"clipguard-heldout|{concept}|{c}".encode()).digest(),
        )
        for i, colour in enumerate(order):
            table[concept, colour] = BACKGROUNDS[i % len(BACKGROUNDS)]
    return MappingProxyType(table)


#: (concept, colour, background kind) triples that only the held-out split shows.
HELDOUT_COMBOS: Final[frozenset[tuple[str, str, str]]] = frozenset(
    (concept, colour, bg) for (concept, colour), bg in _heldout_table().items()
)
_HELDOUT_LIST: Final[tuple[tuple[str, str, BackgroundKind], ...]] = tuple(
    sorted((concept, colour, bg) for (concept, colour), bg in _heldout_table().items())
)


def heldout_background(concept: str, colour: str) -> BackgroundKind:
    """The one background kind on which ``concept`` in ``colour`` is held out."""
    try:
        return _heldout_table()[concept, colour]
    except KeyError:
        raise ConfigError(f"unknown concept/colour pair {(concept, colour)!r}") from None


def is_heldout(concept: str, colour: str, background: str) -> bool:
    """Whether the triple (concept, colour, background kind) belongs to the held-out split."""
    return (concept, colour, background) in HELDOUT_COMBOS


# --------------------------------------------------------------------------------------------
# Geometry


_TRIANGLE_H: Final = math.sqrt(3.0) / 2.0
_STAR: Final[tuple[tuple[float, float], ...]] = tuple(
    (
        (0.5 if i % 2 == 0 else 0.5 * 0.42) * math.cos(-math.pi / 2.0 + i * math.pi / 5.0),
        (0.5 if i % 2 == 0 else 0.5 * 0.42) * math.sin(-math.pi / 2.0 + i * math.pi / 5.0),
    )
    for i in range(10)
)


def _unit_polygon(shape: str, stroke: float) -> list[tuple[float, float]]:
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


def _rotation(deg: float) -> npt.NDArray[np.float64]:
    """Matrix rotating (x, y-down) column vectors counter-clockwise on screen by ``deg``."""
    a = math.radians(deg)
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, s], [-s, c]], dtype=np.float64)


@lru_cache(maxsize=512)
def _word_mask(word: str, font: int, thickness: int) -> _U8Image:
    """The word in white on black, tightly cropped, cap height about ``_WORD_CAP_PX``."""
    face = _FONTS[font]
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


def _word_thickness(stroke: float) -> int:
    return max(2, round(stroke * _WORD_CAP_PX))


def _word_aspect(obj: ObjectSpec) -> float:
    mask = _word_mask(obj.concept, obj.font, _word_thickness(obj.stroke))
    return float(mask.shape[0]) / float(mask.shape[1])


def _half_extents(obj: ObjectSpec) -> tuple[float, float]:
    """Half width and half height of the rotated object's bounding box, in fractions."""
    if obj.kind == "shape" and obj.concept in ("circle", "ring"):
        return obj.size / 2.0, obj.size / 2.0
    if obj.kind == "word":
        hh = 0.5 * _word_aspect(obj)
        corners = [(-0.5, -hh), (0.5, -hh), (0.5, hh), (-0.5, hh)]
    else:
        corners = _unit_polygon(obj.concept, obj.stroke)
    a = math.radians(obj.rotation)
    c, s = math.cos(a), math.sin(a)
    hx = max(abs(c * x + s * y) for x, y in corners)
    hy = max(abs(c * y - s * x) for x, y in corners)
    return hx * obj.size, hy * obj.size


def _object_box(obj: ObjectSpec) -> tuple[float, float, float, float]:
    hx, hy = _half_extents(obj)
    cx, cy = obj.centre
    return cx - hx, cy - hy, cx + hx, cy + hy


def _box_area(b: tuple[float, float, float, float]) -> float:
    return max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])


def _intersection(
    a: tuple[float, float, float, float], b: tuple[float, float, float, float]
) -> float:
    return _box_area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))


# --------------------------------------------------------------------------------------------
# Rendering


_NOISE_BANK_SIDE: Final = 256


@lru_cache(maxsize=1)
def _noise_bank() -> _F32Image:
    """Fixed Gaussian noise (luminance + 3 chroma planes) that noise backgrounds crop from."""
    bank = np.random.default_rng(0x5EED).standard_normal(
        (_NOISE_BANK_SIDE, _NOISE_BANK_SIDE, 4), dtype=np.float32
    )
    bank.setflags(write=False)
    return bank


def _background(bg: BackgroundSpec, side: int) -> _F32Image:
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
        img: _F32Image = base + t[:, :, None] * delta
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


def _clutter_colour(trng: random.Random, base: _RGB) -> tuple[float, float, float]:
    lum = trng.choice((-1.0, 1.0)) * trng.uniform(15.0, 35.0)
    r, g, b = (min(255.0, max(0.0, v + lum + trng.uniform(-6.0, 6.0))) for v in base)
    return r, g, b


def _draw_clutter(img: _U8Image, bg: BackgroundSpec, side: int) -> None:
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


def _canvas_bounds(
    box: tuple[float, float, float, float], side: int
) -> tuple[int, int, int, int] | None:
    x0 = max(0, math.floor(box[0] * side) - 1)
    y0 = max(0, math.floor(box[1] * side) - 1)
    x1 = min(side, math.ceil(box[2] * side) + 1)
    y1 = min(side, math.ceil(box[3] * side) + 1)
    if x1 <= x0 or y1 <= y0:
        return None
    return x0, y0, x1, y1


def _object_mask(obj: ObjectSpec, side: int, x0: int, y0: int, w: int, h: int) -> _U8Image:
    """Coverage of ``obj`` over output pixels [x0, x0+w) x [y0, y0+h), drawn supersampled."""
    hi = np.zeros((h * _SS, w * _SS), dtype=np.uint8)
    # continuous output coordinate u maps to supersampled pixel-centre coordinate u*SS - 0.5
    cx = (obj.centre[0] * side - x0) * _SS - 0.5
    cy = (obj.centre[1] * side - y0) * _SS - 0.5
    size_hi = obj.size * side * _SS
    if obj.kind == "word":
        word = _word_mask(obj.concept, obj.font, _word_thickness(obj.stroke))
        k = size_hi / word.shape[1]
        m = _rotation(obj.rotation) * k
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
        unit = np.asarray(_unit_polygon(obj.concept, obj.stroke), dtype=np.float64)
        pts = unit @ _rotation(obj.rotation).T * size_hi
        pts += (cx, cy)
        cv2.fillPoly(
            hi, [np.round(pts * _SUBPIX_SCALE).astype(np.int32)], 255, cv2.LINE_AA, _SUBPIX
        )
    return np.asarray(cv2.resize(hi, (w, h), interpolation=cv2.INTER_AREA), dtype=np.uint8)


def _blend(img: _F32Image, x0: int, y0: int, mask: _U8Image, rgb: _RGB) -> None:
    h, w = mask.shape
    region = img[y0 : y0 + h, x0 : x0 + w]
    alpha = mask.astype(np.float32)[:, :, None] * np.float32(1.0 / 255.0)
    region += (np.asarray(rgb, dtype=np.float32) - region) * alpha


def render(spec: SceneSpec, size: int = 64) -> _U8Image:
    """Draw ``spec`` as a ``size`` x ``size`` x 3 uint8 RGB image (C-contiguous)."""
    if not isinstance(size, int) or size < 8:
        raise ConfigError(f"render size must be an int >= 8, not {size!r}")
    img = _background(spec.background, size)
    for obj in spec.objects:
        bounds = _canvas_bounds(_object_box(obj), size)
        if bounds is None:
            continue
        x0, y0, x1, y1 = bounds
        _blend(img, x0, y0, _object_mask(obj, size, x0, y0, x1 - x0, y1 - y0), obj.drawn_rgb)
    for occ in spec.occluders:
        bounds = _canvas_bounds(occ.box, size)
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
    out: _U8Image = np.clip(img + np.float32(0.5), 0.0, 255.0).astype(np.uint8)
    return np.ascontiguousarray(out)


# --------------------------------------------------------------------------------------------
# Sampling


def _check_split(split: str) -> None:
    if split not in ("train", "heldout"):
        raise ConfigError(f"split must be 'train' or 'heldout', not {split!r}")


def _check_range(name: str, r: tuple[float, float]) -> None:
    if not 0.0 < r[0] <= r[1] <= 1.0:
        raise ConfigError(f"{name} must satisfy 0 < low <= high <= 1, not {r!r}")


def _distance(a: Sequence[float], b: Sequence[float]) -> float:
    return math.dist(a, b)


def _luma(c: Sequence[float]) -> float:
    return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]


def _contrast(c: Sequence[float], other: Sequence[float]) -> float:
    """RGB distance, but for a grey-ish ``other`` (white, black) also 1.4 x the luma gap:
    a white object needs a darker background, not just a bluer one."""
    d = _distance(c, other)
    if max(other) - min(other) < 40:
        d = min(d, 1.4 * abs(_luma(c) - _luma(other)))
    return d


def _min_distance(c: Sequence[float], others: Sequence[Sequence[float]]) -> float:
    """The least :func:`_contrast` of colour ``c`` against any of ``others``."""
    return min((_contrast(c, o) for o in others), default=math.inf)


def _muted_colour(rng: np.random.Generator) -> _RGB:
    """A low-saturation colour, never one a caption would name."""
    hue, sat, val = rng.random(3).tolist()
    r, g, b = colorsys.hsv_to_rgb(hue, 0.25 * sat, 0.2 + 0.68 * val)
    return round(r * 255), round(g * 255), round(b * 255)


def _pick_muted(
    rng: np.random.Generator, avoid: Sequence[_RGB], min_dist: float, *, tries: int = 32
) -> _RGB:
    best, best_d = (128, 128, 128), -math.inf
    for _ in range(tries):
        c = _muted_colour(rng)
        d = _min_distance(c, avoid)
        if d >= min_dist:
            return c
        if d > best_d:
            best, best_d = c, d
    return best


def _sample_background(
    rng: np.random.Generator, kind: BackgroundKind, avoid: Sequence[_RGB], min_dist: float
) -> BackgroundSpec:
    colour = _pick_muted(rng, avoid, min_dist)
    colour2 = colour
    if kind == "gradient":
        # the far end: a random muted colour or a lighter / darker shade of the near end,
        # as different from it as possible while keeping the contrast (end and middle)
        best_sep = 0.0
        for _ in range(48):
            if rng.random() < 0.5:
                c2 = _muted_colour(rng)
            else:
                shift = float(rng.uniform(40.0, 90.0)) * (1.0 if rng.random() < 0.5 else -1.0)
                r, g, b = (min(255, max(0, round(v + shift))) for v in colour)
                c2 = (r, g, b)
            sep = _distance(colour, c2)
            if sep <= best_sep:
                continue
            mid = [(a + b) / 2.0 for a, b in zip(colour, c2, strict=True)]
            if _min_distance(c2, avoid) >= min_dist and _min_distance(mid, avoid) >= min_dist:
                colour2, best_sep = c2, sep
                if sep >= 45.0:
                    break
    angle = float(rng.uniform(0.0, 360.0))
    seed = int(rng.integers(0, 2**31 - 1))
    return BackgroundSpec(kind=kind, colour=colour, colour2=colour2, angle=angle, seed=seed)


def _jittered(rng: np.random.Generator, colour: str) -> _RGB:
    base = COLOUR_RGB[colour]
    d = rng.integers(-_JITTER, _JITTER + 1, size=3)
    r, g, b = (min(255, max(0, int(v) + int(e))) for v, e in zip(base, d, strict=True))
    return r, g, b


def _kind_of(concept: str) -> ObjectKind:
    return "word" if concept in WORDS else "shape"


def _sample_concept(rng: np.random.Generator, p_word: float) -> str:
    pool = WORDS if rng.random() < p_word else SHAPES
    return pool[int(rng.integers(len(pool)))]


def _colours_for(concept: str, background: str, split: Split) -> list[str]:
    return [c for c in COLOURS if is_heldout(concept, c, background) == (split == "heldout")]


def _make_object(
    rng: np.random.Generator,
    concept: str,
    colour: str,
    size_range: tuple[float, float],
    word_size_range: tuple[float, float],
) -> ObjectSpec:
    kind = _kind_of(concept)
    if kind == "word":
        size = float(rng.uniform(*word_size_range))
        rotation = float(rng.uniform(-15.0, 15.0)) if rng.random() < 0.5 else 0.0
        lo, hi = _STROKE_RANGE["word"]
        font = int(rng.integers(len(_FONTS)))
    else:
        size = float(math.exp(rng.uniform(math.log(size_range[0]), math.log(size_range[1]))))
        rotation = 0.0 if concept == "circle" else float(rng.uniform(0.0, 360.0))
        lo, hi = _STROKE_RANGE.get(concept, (0.2, 0.2))
        font = 0
    stroke = float(rng.uniform(lo, hi))
    return ObjectSpec(
        kind=kind,
        concept=concept,
        colour=colour,
        centre=(0.5, 0.5),
        size=size,
        rotation=rotation,
        rgb=_jittered(rng, colour),
        stroke=stroke,
        font=font,
    )


def _with(obj: ObjectSpec, *, centre: tuple[float, float], size: float) -> ObjectSpec:
    return ObjectSpec(
        kind=obj.kind,
        concept=obj.concept,
        colour=obj.colour,
        centre=centre,
        size=size,
        rotation=obj.rotation,
        rgb=obj.rgb,
        stroke=obj.stroke,
        font=obj.font,
    )


def _overlap_allowed(a: ObjectSpec, b: ObjectSpec) -> float:
    """How much of the smaller box two objects may share: a little for two shapes of
    different colours, nothing if either is a word (letters would vanish) or both have the
    same colour (they would merge into one blob and spoil the count)."""
    if a.kind == "word" or b.kind == "word" or a.colour == b.colour:
        return 0.0
    return _MAX_OVERLAP


def _place(
    rng: np.random.Generator,
    protos: Sequence[ObjectSpec],
    size_range: tuple[float, float],
    word_size_range: tuple[float, float],
) -> list[ObjectSpec]:
    """Give each object a position inside the frame, overlapping others only a little.

    An object that does not fit after a few tries is shrunk (not below its size range) and,
    failing that, dropped; the first object always fits on an empty frame.
    """
    placed: list[ObjectSpec] = []
    boxes: list[tuple[float, float, float, float]] = []
    for proto in protos:
        floor = word_size_range[0] if proto.kind == "word" else size_range[0]
        size = proto.size
        for attempt in range(40):
            if attempt and attempt % 8 == 0:
                size = max(floor, size * 0.85)
            hx, hy = _half_extents(_with(proto, centre=(0.5, 0.5), size=size))
            cx = float(rng.uniform(hx, 1.0 - hx)) if hx < 0.5 else 0.5
            cy = float(rng.uniform(hy, 1.0 - hy)) if hy < 0.5 else 0.5
            box = (cx - hx, cy - hy, cx + hx, cy + hy)
            area = _box_area(box)
            if all(
                _intersection(box, b) <= _overlap_allowed(proto, o) * min(area, _box_area(b))
                for o, b in zip(placed, boxes, strict=True)
            ):
                placed.append(_with(proto, centre=(cx, cy), size=size))
                boxes.append(box)
                break
    return placed


def _coverage(obj: ObjectSpec, box: tuple[float, float, float, float]) -> float:
    """The fraction of the object's own (anti-aliased) ink that ``box`` covers."""
    side = 64
    bounds = _canvas_bounds(_object_box(obj), side)
    if bounds is None:
        return 0.0
    x0, y0, x1, y1 = bounds
    ink = _object_mask(obj, side, x0, y0, x1 - x0, y1 - y0).astype(np.float64)
    total = float(ink.sum())
    if total == 0.0:
        return 0.0
    xs = np.arange(x0, x1, dtype=np.float64)
    ys = np.arange(y0, y1, dtype=np.float64)
    wx = np.clip(np.minimum(xs + 1.0, box[2] * side) - np.maximum(xs, box[0] * side), 0.0, 1.0)
    wy = np.clip(np.minimum(ys + 1.0, box[3] * side) - np.maximum(ys, box[1] * side), 0.0, 1.0)
    return float((ink * wy[:, None] * wx[None, :]).sum()) / total


def _sample_occluder(
    rng: np.random.Generator, objects: Sequence[ObjectSpec], background: BackgroundSpec
) -> OccluderSpec | None:
    """A bar over one side, or a patch over one corner, of one shape's box.

    It hides at most 25% of any shape's ink (and at most a quarter of its box). Only shapes
    of size >= 0.15 are targets; words are never occluded beyond a sliver (3% of the ink),
    so their captions stay true. ``None`` if three proposals all break these limits.
    """
    shapes = [o for o in objects if o.kind == "shape" and o.size >= _MIN_OCCLUDED_SIZE]
    if not shapes:
        return None
    target = shapes[int(rng.integers(len(shapes)))]
    x0, y0, x1, y1 = _object_box(target)
    bw, bh = x1 - x0, y1 - y0
    for _ in range(3):
        out = float(rng.uniform(0.02, 0.08))  # how far the occluder reaches past the box
        if rng.random() < 0.5:
            f = float(rng.uniform(0.12, _MAX_OCCLUSION))
            side = int(rng.integers(4))
            if side == 0:
                box = (x0 - out, y0 - 0.1 * bh, x0 + f * bw, y1 + 0.1 * bh)
            elif side == 1:
                box = (x1 - f * bw, y0 - 0.1 * bh, x1 + out, y1 + 0.1 * bh)
            elif side == 2:
                box = (x0 - 0.1 * bw, y0 - out, x1 + 0.1 * bw, y0 + f * bh)
            else:
                box = (x0 - 0.1 * bw, y1 - f * bh, x1 + 0.1 * bw, y1 + out)
        else:
            fx, fy = (float(v) for v in rng.uniform(0.3, 0.5, size=2))
            left, top = bool(rng.random() < 0.5), bool(rng.random() < 0.5)
            bx0, bx1 = (x0 - out, x0 + fx * bw) if left else (x1 - fx * bw, x1 + out)
            by0, by1 = (y0 - out, y0 + fy * bh) if top else (y1 - fy * bh, y1 + out)
            box = (bx0, by0, bx1, by1)
        box = (max(0.0, box[0]), max(0.0, box[1]), min(1.0, box[2]), min(1.0, box[3]))
        if all(_occlusion_ok(obj, box) for obj in objects):
            avoid = [COLOUR_RGB[o.colour] for o in objects]
            rgb = _pick_muted(rng, avoid, _MIN_BG_DISTANCE)
            if _distance(rgb, background.colour) < 30.0:  # keep the patch visible
                rgb = _pick_muted(rng, [*avoid, background.colour], _MIN_BG_DISTANCE)
            return OccluderSpec(box=box, rgb=rgb)
    return None


def _occlusion_ok(obj: ObjectSpec, box: tuple[float, float, float, float]) -> bool:
    ob = _object_box(obj)
    if _intersection(box, ob) == 0.0:
        return True
    if obj.kind == "word":
        return _coverage(obj, box) <= _MAX_WORD_OCCLUSION
    if _intersection(box, ob) > _MAX_OCCLUSION * _box_area(ob) + 1e-9:
        return False
    return _coverage(obj, box) <= _MAX_OCCLUSION


def sample_spec(
    rng: np.random.Generator,
    *,
    split: Split,
    p_empty: float = 0.08,
    max_objects: int = 3,
    p_word: float = 0.3,
    p_repeat: float = 0.25,
    p_occlusion: float = 0.2,
    size_range: tuple[float, float] = SIZE_RANGE,
    word_size_range: tuple[float, float] = WORD_SIZE_RANGE,
) -> SceneSpec:
    """Sample a random scene of the given split.

    A train scene is empty with probability ``p_empty``; otherwise it has 1 to
    ``max_objects`` objects, none forming a held-out (concept, colour, background) triple. A
    held-out scene is never empty and its primary object (``objects[0]``) always forms a
    held-out triple; its other objects are unconstrained. Each extra object repeats the
    primary's concept and colour with probability ``p_repeat``; the first object is a word
    with probability ``p_word``; one occluding patch is added with probability
    ``p_occlusion``.
    """
    _check_split(split)
    _check_range("size_range", size_range)
    _check_range("word_size_range", word_size_range)
    if not 1 <= max_objects <= len(_COUNT_WORDS):
        raise ConfigError(f"max_objects must be in 1..{len(_COUNT_WORDS)}, not {max_objects}")

    if split == "train" and rng.random() < p_empty:
        kind = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
        bg = _sample_background(rng, kind, list(COLOUR_RGB.values()), _MIN_EMPTY_BG_DISTANCE)
        return SceneSpec(background=bg)

    concept = _sample_concept(rng, p_word)
    if split == "heldout":
        colour = COLOURS[int(rng.integers(len(COLOURS)))]
        kind = heldout_background(concept, colour)
    else:
        kind = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
        allowed = _colours_for(concept, kind, "train")
        colour = allowed[int(rng.integers(len(allowed)))]

    weights = [0.5, 0.3, 0.2, 0.1, 0.1][:max_objects]
    u = rng.random() * sum(weights)
    n = 1
    while n < max_objects and u >= weights[n - 1]:
        u -= weights[n - 1]
        n += 1
    pairs = [(concept, colour)]
    for _ in range(n - 1):
        if rng.random() < p_repeat:
            pairs.append((concept, colour))
            continue
        other = _sample_concept(rng, p_word)
        choices = _colours_for(other, kind, "train") if split == "train" else list(COLOURS)
        pairs.append((other, choices[int(rng.integers(len(choices)))]))
    protos = [_make_object(rng, c, col, size_range, word_size_range) for c, col in pairs]
    objects = _place(rng, protos, size_range, word_size_range)
    bg = _sample_background(rng, kind, [COLOUR_RGB[o.colour] for o in objects], _MIN_BG_DISTANCE)
    occluders: tuple[OccluderSpec, ...] = ()
    if rng.random() < p_occlusion:
        occ = _sample_occluder(rng, objects, bg)
        if occ is not None:
            occluders = (occ,)
    return SceneSpec(background=bg, objects=tuple(objects), occluders=occluders)


def sample_single_object_spec(
    rng: np.random.Generator,
    *,
    split: Split,
    concept: str | None = None,
    colour: str | None = None,
    background: BackgroundKind | None = None,
    size_range: tuple[float, float] | None = None,
) -> SceneSpec:
    """A zero-shot evaluation scene: exactly one object, no distractors, no occluder.

    The (concept, colour, background) triple is drawn uniformly from those of ``split`` that
    match the given constraints; :class:`~pipeline.errors.ConfigError` if none do (a pair has
    exactly one held-out background). ``size_range`` defaults to large objects: (0.25, 0.45)
    for shapes and (0.6, 0.92) for words.
    """
    _check_split(split)
    if concept is not None and concept not in CONCEPTS:
        raise ConfigError(f"unknown concept {concept!r}; expected one of {CONCEPTS}")
    if colour is not None and colour not in COLOURS:
        raise ConfigError(f"unknown colour {colour!r}; expected one of {COLOURS}")
    if background is not None and background not in BACKGROUNDS:
        raise ConfigError(f"unknown background {background!r}; expected one of {BACKGROUNDS}")
    candidates = [
        (c, col, bg)
        for c in ((concept,) if concept is not None else CONCEPTS)
        for col in ((colour,) if colour is not None else COLOURS)
        for bg in ((background,) if background is not None else BACKGROUNDS)
        if is_heldout(c, col, bg) == (split == "heldout")
    ]
    if not candidates:
        raise ConfigError(
            f"no {split} scene has concept={concept!r}, colour={colour!r}, "
            f"background={background!r}"
        )
    c, col, kind = candidates[int(rng.integers(len(candidates)))]
    if size_range is not None:
        _check_range("size_range", size_range)
    shape_range = size_range if size_range is not None else (0.25, 0.45)
    word_range = size_range if size_range is not None else (0.6, 0.92)
    proto = _make_object(rng, c, col, shape_range, word_range)
    objects = _place(rng, [proto], shape_range, word_range)
    bg = _sample_background(rng, kind, [COLOUR_RGB[col]], _MIN_BG_DISTANCE)
    return SceneSpec(background=bg, objects=tuple(objects))


# --------------------------------------------------------------------------------------------
# Captions


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def concept_caption(concept: str | None, colour: str | None = None) -> str:
    """The plain zero-shot prompt for a concept: "a red triangle", "the word spam"."""
    if concept is None:
        return EMPTY_CAPTION
    if concept in WORDS:
        return f"the word {concept.lower()}"
    if concept not in SHAPES:
        raise ConfigError(f"unknown concept {concept!r}; expected one of {CONCEPTS}")
    if colour is None or colour not in COLOUR_RGB:
        raise ConfigError(f"a shape prompt needs a colour from {COLOURS}, not {colour!r}")
    return f"{_article(colour)} {colour} {concept}"


def canonical_caption(obj: ObjectSpec | None) -> str:
    """The one plain caption of an object (or of nothing) used for zero-shot evaluation."""
    if obj is None:
        return EMPTY_CAPTION
    return concept_caption(obj.concept, obj.colour)


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _group_phrase(rng: np.random.Generator, concept: str, colour: str, count: int) -> str:
    if concept in SHAPES:
        if count == 1:
            return f"{_article(colour)} {colour} {concept}"
        return f"{_COUNT_WORDS[count - 1]} {colour} {_PLURALS[concept]}"
    w = concept.lower()
    if count == 1:
        return _pick(
            rng,
            (
                f"the word {w}",
                f"the word {w}",
                f"the word {w} in {colour} letters",
                f"the {colour} word {w}",
                f"{colour} text saying {w}",
            ),
        )
    times = _TIMES_WORDS[count - 1]
    return _pick(
        rng,
        (
            f"the word {w} {times}",
            f"the word {w} written {times} in {colour}",
            f"{_COUNT_WORDS[count - 1]} copies of the word {w} in {colour} letters",
        ),
    )


def caption(spec: SceneSpec, rng: np.random.Generator) -> str:
    """A varied lower-case English caption of ``spec``, from templates.

    Every object is named (shapes by colour and shape, words by the word, often with the
    colour); identical objects (same concept and colour) are counted in words; the primary
    object comes first. Occluders and clutter are never mentioned.
    """
    bg = _pick(rng, _BG_WORDS[spec.background.kind])
    if not spec.objects:
        return _pick(
            rng,
            (
                EMPTY_CAPTION,
                EMPTY_CAPTION,
                f"an empty {bg} background",
                f"a {bg} background with nothing on it",
                f"a photo of {EMPTY_CAPTION}",
            ),
        )
    counts: dict[tuple[str, str], int] = {}
    for obj in spec.objects:
        counts[obj.concept, obj.colour] = counts.get((obj.concept, obj.colour), 0) + 1
    phrases = [_group_phrase(rng, c, col, n) for (c, col), n in counts.items()]
    body = phrases[-1] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    template = _pick(
        rng,
        (
            "{}",
            "{}",
            "a photo of {}",
            "an image of {}",
            "a picture of {}",
            "{} on a {} background",
            "a photo of {} on a {} background",
            "an image of {} on a {} background",
        ),
    )
    return template.format(body, bg)


# --------------------------------------------------------------------------------------------
# Batches


def generate_batch(
    seed: int, n: int, *, size: int = 64, split: Split = "train"
) -> tuple[_U8Image, list[str], list[SceneSpec]]:
    """``n`` scenes of ``split`` from ``seed``: images (n, size, size, 3) uint8 RGB, captions
    and specs. The same arguments always give byte-identical output."""
    _check_split(split)
    if n < 0:
        raise ConfigError(f"n must be >= 0, not {n}")
    rng = np.random.default_rng(seed)
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    captions: list[str] = []
    specs: list[SceneSpec] = []
    for i in range(n):
        spec = sample_spec(rng, split=split)
        images[i] = render(spec, size)
        captions.append(caption(spec, rng))
        specs.append(spec)
    return images, captions, specs
