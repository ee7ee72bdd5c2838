"""Captions: the one plain zero-shot prompt per concept, and varied English captions of whole
scenes from templates.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Final

import numpy as np

from pipeline.demo.scenes.specs import (
    COLOUR_RGB,
    COLOURS,
    CONCEPTS,
    EMPTY_CAPTION,
    SHAPES,
    WORDS,
    ObjectSpec,
    SceneSpec,
)
from pipeline.errors import ConfigError

__all__ = [
    "COUNT_WORDS",
    "canonical_caption",
    "caption",
    "concept_caption",
]

_BG_WORDS: Final[Mapping[str, tuple[str, ...]]] = MappingProxyType(
    {
        "flat": ("plain", "flat", "uniform"),
        "gradient": ("gradient", "smooth gradient", "shaded"),
        "noise": ("noisy", "grainy", "speckled"),
        "clutter": ("cluttered", "busy", "messy"),
    }
)
COUNT_WORDS: Final = ("one", "two", "three", "four", "five")
_TIMES_WORDS: Final = ("once", "twice", "three times", "four times", "five times")
_PLURALS: Final[Mapping[str, str]] = MappingProxyType(
    {s: s + "es" if s.endswith("ss") else s + "s" for s in SHAPES}
)


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
        return f"{COUNT_WORDS[count - 1]} {colour} {_PLURALS[concept]}"
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
            f"{COUNT_WORDS[count - 1]} copies of the word {w} in {colour} letters",
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
