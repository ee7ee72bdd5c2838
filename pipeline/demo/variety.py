"""A wider rendering of training scenes, so the demo model learns shapes rather than one
renderer's pixels.

:func:`render_varied` draws a :class:`~pipeline.demo.scenes.SceneSpec` (same objects, same
caption) with what :func:`pipeline.demo.scenes.render` keeps fixed left to chance: shape
proportions (triangle apex, star points and depth, cross arm width, square aspect and
rounded corners, ellipse aspect), outlined instead of filled shapes, colour jitter within the
colour name, multi-scale textured or photographic backgrounds, slight perspective, blur,
grain, JPEG artefacts and different downsampling filters. :func:`photo_negative` gives a crop
of a natural photograph with nothing the model knows on it, captioned as an empty background,
so that real video lands near "an empty background" instead of near a printed word.

The photographs are scikit-image's bundled sample images under CC0 or in the public domain
(:data:`PHOTOS`; installed with the ``train`` extra). Nothing here is used for evaluation:
:mod:`pipeline.demo.pilscenes` is the separate renderer the model is measured on.
"""

from __future__ import annotations

import math
from dataclasses import replace
from functools import lru_cache
from typing import Final, Literal

import cv2
import numpy as np

from pipeline.demo import scenes
from pipeline.demo.scenes.geometry import object_box
from pipeline.demo.scenes.render import canvas_bounds, object_mask
from pipeline.errors import ConfigError

__all__ = [
    "PHOTOS",
    "empty_spec",
    "photo_canvas",
    "photo_negative",
    "photos",
    "render_varied",
    "texture_canvas",
    "texture_negative",
]

#: scikit-image sample images used as backgrounds and negatives, all CC0 or public domain
#: per their docstrings in ``skimage.data`` (the text, page, coins, horse and logo images are
#: left out: they show words or shapes the model should name).
PHOTOS: Final = (
    "astronaut",  # NASA, public domain
    "brick",  # CC0 Textures, CC0
    "camera",  # Lav Varshney, CC0
    "cell",  # CC0
    "chelsea",  # Stefan van der Walt, CC0
    "clock",  # Stefan van der Walt, public domain
    "coffee",  # Rachel Michetti, CC0
    "grass",  # CC0 Textures, CC0
    "gravel",  # CC0 Textures, CC0
    "hubble_deep_field",  # NASA, public domain
    "retina",  # CC0
    "rocket",  # SpaceX, public domain
)
_SS: Final = 4  # shapes are drawn at this multiple of the output side


@lru_cache(maxsize=1)
def photos() -> tuple[np.ndarray, ...]:
    """The sample photographs as RGB uint8 arrays (greyscale ones replicated)."""
    try:
        import skimage.data
    except ImportError:
        raise ConfigError(
            "photo backgrounds need scikit-image: pip install 'clipguard[train]'"
        ) from None
    out = []
    for name in PHOTOS:
        img = np.asarray(getattr(skimage.data, name)())
        if img.ndim == 2:
            img = np.repeat(img[:, :, None], 3, axis=2)
        out.append(np.ascontiguousarray(img[:, :, :3].astype(np.uint8)))
    return tuple(out)


def _photo_crop(rng: np.random.Generator, side: int) -> np.ndarray:
    img = photos()[int(rng.integers(len(PHOTOS)))]
    h, w = img.shape[:2]
    crop = int(rng.uniform(0.2, 1.0) * min(h, w))
    y, x = int(rng.integers(h - crop + 1)), int(rng.integers(w - crop + 1))
    out = cv2.resize(img[y : y + crop, x : x + crop], (side, side), interpolation=cv2.INTER_AREA)
    if rng.random() < 0.5:
        out = out[:, ::-1]
    return np.asarray(out, dtype=np.float32)


def _texture(rng: np.random.Generator, side: int, base: tuple[int, int, int]) -> np.ndarray:
    """Multi-scale noise around ``base``: one to three octaves, grey or coloured."""
    img = np.empty((side, side, 3), dtype=np.float32)
    img[:] = base
    for _ in range(int(rng.integers(1, 4))):
        grid = int(rng.choice([4, 8, 16, 32, side]))
        amp = float(rng.uniform(4.0, 26.0))
        chans = 3 if rng.random() < 0.5 else 1
        noise = rng.standard_normal((grid, grid, chans)).astype(np.float32) * amp
        up = cv2.resize(noise, (side, side), interpolation=cv2.INTER_CUBIC)
        img += up.reshape(side, side, -1)
    return img


def _polygon(rng: np.random.Generator, concept: str, stroke: float) -> np.ndarray:
    """Unit-extent outline of a shape with varied proportions (x right, y down)."""
    if concept == "square":
        a = float(rng.uniform(0.85, 1.15))
        hx, hy = 0.5 * min(1.0, a), 0.5 * min(1.0, 1.0 / a)
        r = float(rng.uniform(0.05, 0.2)) if rng.random() < 0.35 else 0.0
        pts = []
        for cx, cy, a0 in ((hx - r, hy - r, 0), (-hx + r, hy - r, 90), (-hx + r, -hy + r, 180),
                           (hx - r, -hy + r, 270)):  # fmt: skip
            for k in range(5 if r else 1):
                t = math.radians(a0 + 22.5 * k)
                pts.append((cx + r * math.cos(t), cy + r * math.sin(t)))
        return np.array(pts)
    if concept == "triangle":
        h = float(rng.uniform(0.75, 1.1)) * 0.5
        apex = float(rng.uniform(-0.2, 0.2))
        return np.array([(apex, -h), (0.5, h), (-0.5, h)])
    if concept == "star":
        n = 5 if rng.random() < 0.85 else 6
        inner = float(rng.uniform(0.3, 0.56))
        return np.array(
            [
                ((0.5 if i % 2 == 0 else 0.5 * inner) * math.cos(-math.pi / 2 + i * math.pi / n),
                 (0.5 if i % 2 == 0 else 0.5 * inner) * math.sin(-math.pi / 2 + i * math.pi / n))
                for i in range(2 * n)
            ]
        )  # fmt: skip
    if concept == "cross":
        # thin to stubby arms: a cross stays a cross at any arm width
        w = float(rng.uniform(0.45, 1.35)) * stroke / 2.0
        w = min(max(w, 0.06), 0.25)
        return np.array(
            [(-w, -0.5), (w, -0.5), (w, -w), (0.5, -w), (0.5, w), (w, w),
             (w, 0.5), (-w, 0.5), (-w, w), (-0.5, w), (-0.5, -w), (-w, -w)]
        )  # fmt: skip
    raise ConfigError(f"no polygon for {concept!r}")


def _ink(rng: np.random.Generator, rgb: tuple[int, int, int]) -> tuple[float, float, float]:
    """The object's colour, a little brighter or darker and a little off in each channel."""
    gain = float(rng.uniform(0.85, 1.08))
    r, g, b = (min(255.0, max(0.0, v * gain + float(rng.uniform(-14, 14)))) for v in rgb)
    return r, g, b


def _draw_shape(rng: np.random.Generator, obj: scenes.ObjectSpec, side: int) -> np.ndarray:
    """Coverage mask (side x side, float 0..1) of one shape with varied geometry."""
    big = side * _SS
    hi = np.zeros((big, big), dtype=np.uint8)
    cx, cy = obj.centre[0] * big, obj.centre[1] * big
    size = obj.size * big
    sh = 4  # cv2 fractional bits
    if obj.concept in ("circle", "ring"):
        aspect = float(rng.uniform(0.9, 1.0))
        axes = (round(size / 2 * 16), round(size / 2 * aspect * 16))
        centre = (round(cx * 16), round(cy * 16))
        ang = float(rng.uniform(0, 180))
        cv2.ellipse(hi, centre, axes, ang, 0, 360, 255, -1, cv2.LINE_AA, sh)
        if obj.concept == "ring":
            band = obj.stroke * float(rng.uniform(0.7, 1.4))
            inner = (round(axes[0] * (1 - 2 * band)), round(axes[1] * (1 - 2 * band)))
            cv2.ellipse(hi, centre, inner, ang, 0, 360, 0, -1, cv2.LINE_AA, sh)
    else:
        a = math.radians(obj.rotation)
        rot = np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])
        pts = _polygon(rng, obj.concept, obj.stroke) @ rot.T * size + (cx, cy)
        poly = [np.round(pts * 16).astype(np.int32)]
        if rng.random() < 0.15:  # outlined
            width = max(2, round(size * float(rng.uniform(0.07, 0.15))))
            cv2.polylines(hi, poly, True, 255, width, cv2.LINE_AA, sh)
        else:
            cv2.fillPoly(hi, poly, 255, cv2.LINE_AA, sh)
    interp = (cv2.INTER_AREA, cv2.INTER_LINEAR, cv2.INTER_CUBIC)[int(rng.integers(3))]
    mask = np.asarray(cv2.resize(hi, (side, side), interpolation=interp), dtype=np.float32)
    out: np.ndarray = np.clip(mask * np.float32(1 / 255), 0.0, 1.0)
    return out


def _degrade(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Slight perspective, blur, grain and JPEG, each by chance."""
    side = img.shape[0]
    if rng.random() < 0.3:
        src = np.array([[0, 0], [side, 0], [side, side], [0, side]], dtype=np.float32)
        dst = src + rng.uniform(-0.06, 0.06, size=(4, 2)).astype(np.float32) * side
        m = cv2.getPerspectiveTransform(src, dst)
        img = cv2.warpPerspective(img, m, (side, side), borderMode=cv2.BORDER_REFLECT)
    if rng.random() < 0.3:
        img = cv2.GaussianBlur(img, (0, 0), float(rng.uniform(0.3, 1.0)))
    if rng.random() < 0.3:
        img = img + rng.normal(0, float(rng.uniform(2, 8)), img.shape).astype(np.float32)
    out = np.clip(img + 0.5, 0, 255).astype(np.uint8)
    if rng.random() < 0.4:
        q = int(rng.integers(20, 85))
        ok, buf = cv2.imencode(".jpg", out[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, q])
        if ok:
            decoded = np.asarray(cv2.imdecode(buf, cv2.IMREAD_COLOR), dtype=np.uint8)
            out = decoded[:, :, ::-1]
    return np.ascontiguousarray(out)


def render_varied(
    rng: np.random.Generator, spec: scenes.SceneSpec, side: int
) -> tuple[np.ndarray, scenes.SceneSpec]:
    """``spec`` drawn with varied geometry, background and artefacts; also the spec to caption
    it by (its background kind changed where the background was replaced)."""
    u = rng.random()
    bg = spec.background
    if u < 0.35:  # the generator's own background
        img = scenes.render(scenes.SceneSpec(background=bg), side).astype(np.float32)
    elif u < 0.7:
        img = _texture(rng, side, bg.colour)
        spec = replace(spec, background=replace(bg, kind="noise"))
    else:  # a photograph, faded towards the background colour so the objects stay visible
        keep = float(rng.uniform(0.25, 0.6)) if spec.objects else 1.0
        img = _photo_crop(rng, side) * keep + np.asarray(bg.colour, np.float32) * (1 - keep)
        spec = replace(spec, background=replace(bg, kind="clutter"))
    for obj in spec.objects:
        rgb = np.asarray(_ink(rng, obj.drawn_rgb), dtype=np.float32)
        if obj.kind == "word":
            bounds = canvas_bounds(object_box(obj), side)
            if bounds is None:
                continue
            x0, y0, x1, y1 = bounds
            m = object_mask(obj, side, x0, y0, x1 - x0, y1 - y0).astype(np.float32) / 255
            region = img[y0:y1, x0:x1]
            region += (rgb - region) * m[:, :, None]
        else:
            m = _draw_shape(rng, obj, side)
            img += (rgb - img) * m[:, :, None]
    return _degrade(rng, img), spec


def empty_spec(kind: Literal["flat", "gradient", "noise", "clutter"]) -> scenes.SceneSpec:
    """A spec with no objects and a ``kind`` background, to caption a negative by."""
    bg = scenes.BackgroundSpec(kind=kind, colour=(128, 128, 128), colour2=(128, 128, 128))
    return scenes.SceneSpec(background=bg)


def photo_negative(rng: np.random.Generator, side: int) -> tuple[np.ndarray, scenes.SceneSpec]:
    """A natural photograph crop with nothing on it, and an empty spec to caption it by."""
    return _degrade(rng, _photo_crop(rng, side)), empty_spec("clutter")


def photo_canvas(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A ``width`` x ``height`` crop of a photograph (uint8 RGB), any aspect ratio."""
    img = photos()[int(rng.integers(len(PHOTOS)))]
    h, w = img.shape[:2]
    scale = min(w / width, h / height) * float(rng.uniform(0.25, 1.0))
    cw, ch = max(8, round(width * scale)), max(8, round(height * scale))
    y, x = int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1))
    out = cv2.resize(img[y : y + ch, x : x + cw], (width, height), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(out if rng.random() < 0.5 else out[:, ::-1], dtype=np.uint8)


def texture_canvas(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A natural-looking procedural texture (uint8 RGB): fractal noise, sometimes bent into
    veins like wood or marble, mapped through a random palette of two or three colours."""
    side = max(width, height)
    field = np.zeros((side, side), np.float32)
    slope = float(rng.uniform(0.5, 1.5))  # how fast fine octaves fade: rough to smooth
    for grid in (2, 4, 8, 16, 32, 64):
        if grid > side:
            break
        noise = rng.standard_normal((grid, grid)).astype(np.float32) * grid ** (-slope)
        field += cv2.resize(noise, (side, side), interpolation=cv2.INTER_CUBIC)
    field = (field - field.mean()) / (field.std() + 1e-6)
    if rng.random() < 0.35:  # veins
        freq = float(rng.uniform(1.0, 5.0))
        axis = np.linspace(0, 2 * np.pi * freq, side, dtype=np.float32)[None, :]
        field = np.sin(axis + field * float(rng.uniform(1.5, 4.0)))
    t = np.clip((field - field.min()) / (np.ptp(field) + 1e-6), 0.0, 1.0)
    stops = rng.uniform(0, 255, size=(int(rng.integers(2, 4)), 3)).astype(np.float32)
    pos = np.linspace(0.0, 1.0, len(stops), dtype=np.float32)
    img = np.stack([np.interp(t, pos, stops[:, c]) for c in range(3)], axis=-1)
    img = img[:height, :width]
    return np.ascontiguousarray(np.clip(img + 0.5, 0, 255).astype(np.uint8))


def texture_negative(rng: np.random.Generator, side: int) -> tuple[np.ndarray, scenes.SceneSpec]:
    """A procedural texture with nothing on it, and an empty spec to caption it by."""
    img = texture_canvas(rng, side, side).astype(np.float32)
    return _degrade(rng, img), empty_spec("noise")
