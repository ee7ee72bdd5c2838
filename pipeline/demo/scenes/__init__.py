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

The package, a module per idea: :mod:`~pipeline.demo.scenes.specs` (vocabulary and specs),
:mod:`~pipeline.demo.scenes.split` (the split), :mod:`~pipeline.demo.scenes.geometry`,
:mod:`~pipeline.demo.scenes.render`, :mod:`~pipeline.demo.scenes.sampling`,
:mod:`~pipeline.demo.scenes.captions` and :mod:`~pipeline.demo.scenes.batches`; the names
below are its public API.
"""

from __future__ import annotations

from pipeline.demo.scenes.batches import generate_batch
from pipeline.demo.scenes.captions import canonical_caption, caption, concept_caption
from pipeline.demo.scenes.render import render
from pipeline.demo.scenes.sampling import sample_single_object_spec, sample_spec
from pipeline.demo.scenes.specs import (
    BACKGROUNDS,
    COLOUR_RGB,
    COLOURS,
    CONCEPTS,
    EMPTY_CAPTION,
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
)
from pipeline.demo.scenes.split import HELDOUT_COMBOS, heldout_background, is_heldout

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
