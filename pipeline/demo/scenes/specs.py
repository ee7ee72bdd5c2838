"""What a scene is: the vocabulary (shapes, colours, words, backgrounds) and the frozen specs
(:class:`SceneSpec` and its parts) that :func:`~pipeline.demo.scenes.render.render` draws
exactly.

Coordinates in specs are fractions of the image side, with (0, 0) the top-left corner and
(1, 1) the bottom-right one; rotations are degrees, counter-clockwise as seen on screen.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
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
    "FONTS",
    "RGB",
    "SHAPES",
    "SIZE_RANGE",
    "WORDS",
    "WORD_SIZE_RANGE",
    "BackgroundKind",
    "BackgroundSpec",
    "F32Image",
    "ObjectKind",
    "ObjectSpec",
    "OccluderSpec",
    "SceneSpec",
    "Split",
    "U8Image",
    "check_split",
]

Split = Literal["train", "heldout"]
BackgroundKind = Literal["flat", "gradient", "noise", "clutter"]
ObjectKind = Literal["shape", "word"]
RGB = tuple[int, int, int]
U8Image = npt.NDArray[np.uint8]
F32Image = npt.NDArray[np.float32]

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
COLOUR_RGB: Final[Mapping[str, RGB]] = MappingProxyType(
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
FONTS: Final[tuple[int, ...]] = (
    cv2.FONT_HERSHEY_SIMPLEX,
    cv2.FONT_HERSHEY_DUPLEX,
    cv2.FONT_HERSHEY_COMPLEX,
    cv2.FONT_HERSHEY_TRIPLEX,
    cv2.FONT_HERSHEY_SIMPLEX | cv2.FONT_ITALIC,
    cv2.FONT_HERSHEY_DUPLEX | cv2.FONT_ITALIC,
)


@dataclass(frozen=True)
class BackgroundSpec:
    """A background: its kind, colours and, for noise and clutter, the texture seed.

    ``colour`` is the base colour; ``colour2`` is the far end of a gradient (equal to
    ``colour`` for other kinds); ``angle`` is the gradient direction in degrees.
    """

    kind: BackgroundKind
    colour: RGB
    colour2: RGB
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
    rgb: RGB | None = None
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
        if not 0 <= self.font < len(FONTS):
            raise ConfigError(f"font index must be in 0..{len(FONTS) - 1}, not {self.font}")

    @property
    def drawn_rgb(self) -> RGB:
        """The colour drawn: ``rgb`` if set, else the nominal colour of ``colour``."""
        return self.rgb if self.rgb is not None else COLOUR_RGB[self.colour]


@dataclass(frozen=True)
class OccluderSpec:
    """An axis-aligned patch drawn over the objects; box (x0, y0, x1, y1) in fractions."""

    box: tuple[float, float, float, float]
    rgb: RGB


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


def check_split(split: str) -> None:
    if split not in ("train", "heldout"):
        raise ConfigError(f"split must be 'train' or 'heldout', not {split!r}")
