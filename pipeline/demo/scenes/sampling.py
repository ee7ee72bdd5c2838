"""Random scenes of a split: background and object colours kept apart, objects placed with
little overlap, occluders that never hide what a caption names.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Final

import numpy as np

from pipeline.demo.scenes.captions import COUNT_WORDS
from pipeline.demo.scenes.geometry import box_area, half_extents, intersection, object_box
from pipeline.demo.scenes.render import canvas_bounds, object_mask
from pipeline.demo.scenes.specs import (
    BACKGROUNDS,
    COLOUR_RGB,
    COLOURS,
    CONCEPTS,
    FONTS,
    RGB,
    SHAPES,
    SIZE_RANGE,
    WORD_SIZE_RANGE,
    WORDS,
    BackgroundKind,
    BackgroundSpec,
    ObjectKind,
    ObjectSpec,
    OccluderSpec,
    SceneSpec,
    Split,
    check_split,
)
from pipeline.demo.scenes.split import heldout_background, is_heldout
from pipeline.errors import ConfigError

__all__ = [
    "sample_single_object_spec",
    "sample_spec",
]

_JITTER: Final = 12  # per-channel colour jitter of objects, +-
_MIN_BG_DISTANCE: Final = 125.0  # RGB distance between background and object colours
_MIN_EMPTY_BG_DISTANCE: Final = 100.0  # empty scenes: distance to every concept colour
_MAX_OVERLAP: Final = 0.15  # objects' boxes may share at most this much of the smaller box
_MAX_OCCLUSION: Final = 0.25  # an occluder hides at most this much of a shape's ink and box
_MIN_OCCLUDED_SIZE: Final = 0.15  # smaller shapes are never the target of an occluder
_MAX_WORD_OCCLUSION: Final = 0.03  # ... and of a word's ink: hiding a letter changes the word
_STROKE_RANGE: Final[Mapping[str, tuple[float, float]]] = MappingProxyType(
    {
        "cross": (0.26, 0.38),  # bar width / size
        "ring": (0.14, 0.22),  # ring width / size
        "word": (0.09, 0.17),  # stroke width / cap height
    }
)


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


def _muted_colour(rng: np.random.Generator) -> RGB:
    """A low-saturation colour, never one a caption would name."""
    hue, sat, val = rng.random(3).tolist()
    r, g, b = colorsys.hsv_to_rgb(hue, 0.25 * sat, 0.2 + 0.68 * val)
    return round(r * 255), round(g * 255), round(b * 255)


def _pick_muted(
    rng: np.random.Generator, avoid: Sequence[RGB], min_dist: float, *, tries: int = 32
) -> RGB:
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
    rng: np.random.Generator, kind: BackgroundKind, avoid: Sequence[RGB], min_dist: float
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


def _jittered(rng: np.random.Generator, colour: str) -> RGB:
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
        font = int(rng.integers(len(FONTS)))
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
            hx, hy = half_extents(_with(proto, centre=(0.5, 0.5), size=size))
            cx = float(rng.uniform(hx, 1.0 - hx)) if hx < 0.5 else 0.5
            cy = float(rng.uniform(hy, 1.0 - hy)) if hy < 0.5 else 0.5
            box = (cx - hx, cy - hy, cx + hx, cy + hy)
            area = box_area(box)
            if all(
                intersection(box, b) <= _overlap_allowed(proto, o) * min(area, box_area(b))
                for o, b in zip(placed, boxes, strict=True)
            ):
                placed.append(_with(proto, centre=(cx, cy), size=size))
                boxes.append(box)
                break
    return placed


def _coverage(obj: ObjectSpec, box: tuple[float, float, float, float]) -> float:
    """The fraction of the object's own (anti-aliased) ink that ``box`` covers."""
    side = 64
    bounds = canvas_bounds(object_box(obj), side)
    if bounds is None:
        return 0.0
    x0, y0, x1, y1 = bounds
    ink = object_mask(obj, side, x0, y0, x1 - x0, y1 - y0).astype(np.float64)
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
    x0, y0, x1, y1 = object_box(target)
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
    ob = object_box(obj)
    if intersection(box, ob) == 0.0:
        return True
    if obj.kind == "word":
        return _coverage(obj, box) <= _MAX_WORD_OCCLUSION
    if intersection(box, ob) > _MAX_OCCLUSION * box_area(ob) + 1e-9:
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
    check_split(split)
    _check_range("size_range", size_range)
    _check_range("word_size_range", word_size_range)
    if not 1 <= max_objects <= len(COUNT_WORDS):
        raise ConfigError(f"max_objects must be in 1..{len(COUNT_WORDS)}, not {max_objects}")

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
    check_split(split)
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
