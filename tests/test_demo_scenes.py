"""Tests for pipeline.demo.scenes: the seeded synthetic scenes the tiny CLIP trains on."""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections import defaultdict

import numpy as np
import pytest

from pipeline.demo import scenes as syn
from pipeline.demo.scenes import (
    BACKGROUNDS,
    COLOUR_RGB,
    COLOURS,
    CONCEPTS,
    EMPTY_CAPTION,
    HELDOUT_COMBOS,
    SHAPES,
    SIZE_RANGE,
    WORD_SIZE_RANGE,
    WORDS,
    BackgroundSpec,
    ObjectSpec,
    OccluderSpec,
    SceneSpec,
    canonical_caption,
    caption,
    concept_caption,
    generate_batch,
    geometry,
    heldout_background,
    is_heldout,
    render,
    sample_single_object_spec,
    sample_spec,
)
from pipeline.errors import ConfigError

GREYS = [(128, 128, 128), (95, 95, 110), (175, 170, 160), (70, 75, 70)]
SATURATED = [c for c in COLOURS if c not in ("white", "black")]


def _flat(rgb: tuple[int, int, int]) -> BackgroundSpec:
    return BackgroundSpec(kind="flat", colour=rgb, colour2=rgb)


def _contrasting_grey(colour: str) -> tuple[int, int, int]:
    """The grey from GREYS farthest from the named colour."""
    target = np.array(COLOUR_RGB[colour], dtype=float)
    return max(GREYS, key=lambda g: float(np.linalg.norm(np.array(g, dtype=float) - target)))


def _near(img: np.ndarray, rgb: tuple[int, int, int], tol: float) -> np.ndarray:
    """Boolean mask of pixels within Euclidean RGB distance ``tol`` of ``rgb``."""
    diff = img.astype(np.float64) - np.asarray(rgb, dtype=np.float64)
    return np.asarray(np.sqrt((diff**2).sum(axis=-1)) <= tol, dtype=bool)


def _obj(concept: str, colour: str, **kw: object) -> ObjectSpec:
    kind = "word" if concept in WORDS else "shape"
    fields: dict[str, object] = {"centre": (0.5, 0.5), "size": 0.4 if kind == "shape" else 0.8}
    fields.update(kw)
    return ObjectSpec(kind=kind, concept=concept, colour=colour, **fields)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def train_specs() -> list[SceneSpec]:
    rng = np.random.default_rng(1234)
    return [sample_spec(rng, split="train") for _ in range(4000)]


@pytest.fixture(scope="module")
def heldout_specs() -> list[SceneSpec]:
    rng = np.random.default_rng(4321)
    return [sample_spec(rng, split="heldout") for _ in range(3000)]


# --------------------------------------------------------------------------------------------
# Vocabulary


def test_vocabulary_is_fixed_and_public() -> None:
    assert SHAPES == ("circle", "square", "triangle", "star", "cross", "ring")
    assert COLOURS == ("red", "green", "blue", "yellow", "white", "black", "orange", "purple")
    assert WORDS == ("STOP", "SPAM", "FREE", "HELLO")
    assert BACKGROUNDS == ("flat", "gradient", "noise", "clutter")
    assert CONCEPTS == SHAPES + WORDS
    assert set(COLOUR_RGB) == set(COLOURS)
    for name in syn.__all__:
        assert hasattr(syn, name), name


def test_colours_are_clearly_distinct() -> None:
    rgbs = np.array([COLOUR_RGB[c] for c in COLOURS], dtype=float)
    dists = np.linalg.norm(rgbs[:, None] - rgbs[None], axis=-1)
    np.fill_diagonal(dists, np.inf)
    assert dists.min() > 90.0


# --------------------------------------------------------------------------------------------
# Determinism, shapes and dtypes


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_generate_batch_is_deterministic(split: str) -> None:
    a_img, a_cap, a_spec = generate_batch(7, 64, size=64, split=split)  # type: ignore[arg-type]
    b_img, b_cap, b_spec = generate_batch(7, 64, size=64, split=split)  # type: ignore[arg-type]
    assert a_img.tobytes() == b_img.tobytes()
    assert a_cap == b_cap
    assert a_spec == b_spec
    c_img, c_cap, _ = generate_batch(8, 64, size=64, split=split)  # type: ignore[arg-type]
    assert c_img.tobytes() != a_img.tobytes()
    assert c_cap != a_cap


@pytest.mark.parametrize(("split", "size"), [("train", 64), ("heldout", 96), ("train", 32)])
def test_generate_batch_shapes_and_dtype(split: str, size: int) -> None:
    images, captions, specs = generate_batch(3, 20, size=size, split=split)  # type: ignore[arg-type]
    assert images.shape == (20, size, size, 3)
    assert images.dtype == np.uint8
    assert images.flags.c_contiguous
    assert len(captions) == len(specs) == 20
    assert all(isinstance(c, str) and c == c.lower() and c.strip() for c in captions)
    assert images.std() > 10.0  # not blank
    # each image is exactly the rendering of its spec
    for img, spec in zip(images, specs, strict=True):
        assert np.array_equal(img, render(spec, size))


def test_render_output_contract_and_reproducibility() -> None:
    spec = sample_spec(np.random.default_rng(0), split="train", p_empty=0.0)
    a = render(spec)
    b = render(spec, 64)
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8 and a.flags.c_contiguous
    assert a.tobytes() == b.tobytes()
    # a spec rebuilt field by field renders the same image
    rebuilt = SceneSpec(
        background=dataclasses.replace(spec.background),
        objects=tuple(dataclasses.replace(o) for o in spec.objects),
        occluders=spec.occluders,
    )
    assert render(rebuilt).tobytes() == a.tobytes()


def test_render_is_rgb_not_bgr() -> None:
    for colour, channel in (("red", 0), ("green", 1), ("blue", 2)):
        spec = SceneSpec(background=_flat((128, 128, 128)), objects=(_obj("square", colour),))
        centre = render(spec)[32, 32].astype(int)
        assert centre.argmax() == channel, (colour, centre)


def test_specs_are_frozen_and_hashable() -> None:
    spec = sample_spec(np.random.default_rng(1), split="train", p_empty=0.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.objects = ()  # type: ignore[misc]
    assert hash(spec) == hash(dataclasses.replace(spec))
    assert spec.primary is spec.objects[0]
    assert SceneSpec(background=spec.background).primary is None


# --------------------------------------------------------------------------------------------
# Every concept is visible


@pytest.mark.parametrize("concept", CONCEPTS)
def test_every_concept_renders_visibly_in_every_colour(concept: str) -> None:
    for colour in COLOURS:
        obj = _obj(concept, colour)
        spec = SceneSpec(background=_flat(_contrasting_grey(colour)), objects=(obj,))
        img = render(spec, 64)
        hits = _near(img, COLOUR_RGB[colour], 30.0)
        assert hits.sum() >= 80, (concept, colour, int(hits.sum()))
        # the coloured pixels sit inside the object's box (pixel i spans [i, i+1))
        ys, xs = np.nonzero(hits)
        x0, y0, x1, y1 = (v * 64 for v in geometry.object_box(obj))
        assert xs.min() >= x0 - 0.5 and xs.max() + 1 <= x1 + 0.5, (concept, colour)
        assert ys.min() >= y0 - 0.5 and ys.max() + 1 <= y1 + 0.5, (concept, colour)
        # ... and fill most of its box
        assert xs.max() + 1 - xs.min() >= 0.8 * (x1 - x0) - 1.5, (concept, colour)
        assert ys.max() + 1 - ys.min() >= 0.8 * (y1 - y0) - 1.5, (concept, colour)


def test_shapes_have_distinct_silhouettes() -> None:
    masks = {}
    for shape in SHAPES:
        spec = SceneSpec(background=_flat((0, 0, 0)), objects=(_obj(shape, "white", size=0.8),))
        masks[shape] = render(spec, 64).mean(axis=-1) > 127
    for a, b in itertools.combinations(SHAPES, 2):
        inter = (masks[a] & masks[b]).sum()
        union = (masks[a] | masks[b]).sum()
        assert inter / union < 0.85, (a, b, inter / union)


def test_words_have_distinct_renderings() -> None:
    imgs = {}
    for word in WORDS:
        spec = SceneSpec(background=_flat((0, 0, 0)), objects=(_obj(word, "white", size=0.9),))
        imgs[word] = render(spec, 64).astype(float).mean(axis=-1)
    for a, b in itertools.combinations(WORDS, 2):
        assert np.abs(imgs[a] - imgs[b]).mean() > 10.0, (a, b)


def test_rotation_changes_the_rendering() -> None:
    bg = _flat((128, 128, 128))
    upright = render(SceneSpec(background=bg, objects=(_obj("triangle", "red"),)))
    flipped = render(SceneSpec(background=bg, objects=(_obj("triangle", "red", rotation=180),)))
    assert not np.array_equal(upright, flipped)
    # the apex points up when unrotated: more red in the bottom half than in the top half
    red = _near(upright, COLOUR_RGB["red"], 30.0)
    assert red[32:].sum() > 1.5 * red[:32].sum()


# --------------------------------------------------------------------------------------------
# Backgrounds and empty scenes


def _empty_specs(n: int, seed: int = 5) -> list[SceneSpec]:
    rng = np.random.default_rng(seed)
    out: list[SceneSpec] = []
    while len(out) < n:
        spec = sample_spec(rng, split="train", p_empty=0.5)
        if not spec.objects:
            out.append(spec)
    return out


def test_empty_scenes_have_no_concept_coloured_pixels() -> None:
    specs = _empty_specs(80)
    assert {s.background.kind for s in specs} == set(BACKGROUNDS)
    for spec in specs:
        img = render(spec, 64)
        for colour in COLOURS:
            assert _near(img, COLOUR_RGB[colour], 45.0).sum() == 0, (spec.background, colour)
        chroma = img.max(axis=-1).astype(int) - img.min(axis=-1).astype(int)
        assert chroma.max() <= 100, spec.background  # concept colours have chroma >= 150
        text = caption(spec, np.random.default_rng(0))
        assert "background" in text and ("empty" in text or "nothing" in text), text


def test_background_kinds_look_different() -> None:
    by_kind: dict[str, list[np.ndarray]] = defaultdict(list)
    for spec in _empty_specs(120, seed=9):
        by_kind[spec.background.kind].append(render(spec, 64).astype(float))
    assert set(by_kind) == set(BACKGROUNDS)
    assert np.median([img.std(axis=(0, 1)).max() for img in by_kind["gradient"]]) > 5.0
    for kind, imgs in by_kind.items():
        for img in imgs:
            spread = img.std(axis=(0, 1)).max()
            curvature = np.abs(np.diff(img, n=2, axis=1)).mean()  # zero for linear ramps
            if kind == "flat":
                assert spread == 0.0
            elif kind == "gradient":
                assert spread > 3.0 or spread == 0.0  # a ramp (ends may rarely coincide)
                assert np.abs(np.diff(img, n=2, axis=1)).max() <= 2.0  # smooth, no grain
            elif kind == "noise":
                assert curvature > 2.0
            else:  # clutter: mostly the base colour, with some low-contrast marks
                base = np.asarray(_mode_colour(img))
                off = np.abs(img - base).max(axis=-1)
                assert (off > 5).mean() > 0.005
                assert off.max() <= 60.0
                assert (off > 5).mean() < 0.5


def _mode_colour(img: np.ndarray) -> np.ndarray:
    """The most common colour of an image (the base colour of a clutter background)."""
    flat = img.reshape(-1, 3)
    values, counts = np.unique(flat, axis=0, return_counts=True)
    return np.asarray(values[counts.argmax()])


def test_objects_contrast_with_the_background(train_specs: list[SceneSpec]) -> None:
    for spec in train_specs[:1500]:
        for obj in spec.objects:
            bg = np.array(spec.background.colour, dtype=float)
            rgb = np.array(COLOUR_RGB[obj.colour], dtype=float)
            assert np.linalg.norm(bg - rgb) >= 100.0, (obj.colour, spec.background.colour)
            if obj.colour in ("white", "black"):
                luma = np.array([0.299, 0.587, 0.114])
                assert abs((bg - rgb) @ luma) >= 60.0, (obj.colour, spec.background.colour)


# --------------------------------------------------------------------------------------------
# Held-out split


def test_heldout_combos_structure() -> None:
    triples = len(CONCEPTS) * len(COLOURS) * len(BACKGROUNDS)
    assert len(HELDOUT_COMBOS) == triples // 4
    for concept, colour in itertools.product(CONCEPTS, COLOURS):
        held = [bg for bg in BACKGROUNDS if is_heldout(concept, colour, bg)]
        assert held == [heldout_background(concept, colour)]
        assert len(BACKGROUNDS) - len(held) >= 2  # still trained on >= 2 other backgrounds
    # balanced: every concept loses each background for exactly two colours
    for concept in CONCEPTS:
        per_bg = [sum(is_heldout(concept, c, bg) for c in COLOURS) for bg in BACKGROUNDS]
        assert per_bg == [2, 2, 2, 2], concept
    assert not is_heldout("circle", "red", "nonsense")
    with pytest.raises(ConfigError):
        heldout_background("hexagon", "red")


def _triples(spec: SceneSpec) -> list[tuple[str, str, str]]:
    return [(o.concept, o.colour, spec.background.kind) for o in spec.objects]


def test_train_never_shows_a_heldout_triple(train_specs: list[SceneSpec]) -> None:
    seen = {t for spec in train_specs for t in _triples(spec)}
    assert seen
    assert seen.isdisjoint(HELDOUT_COMBOS)


def test_heldout_scenes_lead_with_a_heldout_triple(heldout_specs: list[SceneSpec]) -> None:
    primaries = set()
    for spec in heldout_specs:
        assert spec.objects, "held-out scenes are never empty"
        primaries.add(_triples(spec)[0])
        assert _triples(spec)[0] in HELDOUT_COMBOS
    assert len(primaries) >= 0.9 * len(HELDOUT_COMBOS)  # nearly all are exercised


def test_train_covers_every_pair_on_several_backgrounds(train_specs: list[SceneSpec]) -> None:
    backgrounds: dict[tuple[str, str], set[str]] = defaultdict(set)
    for spec in train_specs:
        for concept, colour, bg in _triples(spec):
            backgrounds[concept, colour].add(bg)
    for concept, colour in itertools.product(CONCEPTS, COLOURS):
        assert len(backgrounds[concept, colour]) >= 2, (concept, colour)
    assert sum(not s.objects for s in train_specs) > 100  # empty scenes are part of training


# --------------------------------------------------------------------------------------------
# Single-object evaluation scenes


def test_single_object_specs_respect_constraints() -> None:
    rng = np.random.default_rng(11)
    for concept, colour in itertools.product(CONCEPTS, COLOURS):
        held = sample_single_object_spec(rng, split="heldout", concept=concept, colour=colour)
        assert len(held.objects) == 1 and not held.occluders
        obj = held.objects[0]
        assert (obj.concept, obj.colour) == (concept, colour)
        assert held.background.kind == heldout_background(concept, colour)
        train = sample_single_object_spec(rng, split="train", concept=concept, colour=colour)
        assert len(train.objects) == 1 and not train.occluders
        assert not is_heldout(concept, colour, train.background.kind)
        assert canonical_caption(train.primary) == concept_caption(concept, colour)
    only_flat = sample_single_object_spec(rng, split="train", background="flat")
    assert only_flat.background.kind == "flat"
    free = sample_single_object_spec(rng, split="heldout")
    assert _triples(free)[0] in HELDOUT_COMBOS


def test_single_object_spec_rejects_impossible_requests() -> None:
    rng = np.random.default_rng(0)
    bg = heldout_background("star", "red")
    other = next(b for b in BACKGROUNDS if b != bg)
    with pytest.raises(ConfigError):
        sample_single_object_spec(rng, split="train", concept="star", colour="red", background=bg)
    with pytest.raises(ConfigError):
        sample_single_object_spec(
            rng,
            split="heldout",
            concept="star",
            colour="red",
            background=other,
        )
    with pytest.raises(ConfigError):
        sample_single_object_spec(rng, split="train", concept="hexagon")
    with pytest.raises(ConfigError):
        sample_single_object_spec(rng, split="test")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Sizes, placement, occlusion


def test_sampled_sizes_span_the_range(train_specs: list[SceneSpec]) -> None:
    shape_sizes = [o.size for s in train_specs for o in s.objects if o.kind == "shape"]
    word_sizes = [o.size for s in train_specs for o in s.objects if o.kind == "word"]
    lo, hi = SIZE_RANGE
    assert lo == pytest.approx(0.08) and hi == pytest.approx(0.45)
    assert all(lo - 1e-9 <= v <= hi + 1e-9 for v in shape_sizes)
    assert min(shape_sizes) < 0.085  # the smallest really are ~8% of the side
    assert max(shape_sizes) > 0.42
    wlo, whi = WORD_SIZE_RANGE
    assert all(wlo - 1e-9 <= v <= whi + 1e-9 for v in word_sizes)
    counts = {len(s.objects) for s in train_specs}
    assert counts == {0, 1, 2, 3}


@pytest.mark.parametrize(("size", "expected_px"), [(0.08, 5.12), (0.2, 12.8), (0.45, 28.8)])
def test_rendered_size_matches_spec(size: float, expected_px: float) -> None:
    spec = SceneSpec(background=_flat((128, 128, 128)), objects=(_obj("square", "red", size=size),))
    img = render(spec, 64)
    # coverage-weighted width: sum of each row's red fraction through the centre row
    diff = np.abs(img.astype(float) - 128.0).sum(axis=-1)
    full = np.abs(np.array(COLOUR_RGB["red"], dtype=float) - 128.0).sum()
    width = (diff[32] / full).sum()
    assert width == pytest.approx(expected_px, abs=0.6)


def test_objects_stay_in_frame_and_barely_overlap(train_specs: list[SceneSpec]) -> None:
    for spec in train_specs:
        boxes = [geometry.object_box(o) for o in spec.objects]
        for b in boxes:
            assert b[0] >= -1e-9 and b[1] >= -1e-9 and b[2] <= 1 + 1e-9 and b[3] <= 1 + 1e-9
        for (oa, ba), (ob, bb) in itertools.combinations(zip(spec.objects, boxes), 2):
            inter = geometry.intersection(ba, bb)
            smaller = min(geometry.box_area(ba), geometry.box_area(bb))
            if "word" in (oa.kind, ob.kind) or oa.colour == ob.colour:
                assert inter == 0.0
            else:
                assert inter <= 0.15 * smaller + 1e-12


def test_occluders_cover_at_most_a_quarter(train_specs: list[SceneSpec]) -> None:
    occluded = [s for s in train_specs if s.occluders]
    assert len(occluded) > 200
    for spec in occluded:
        for occ in spec.occluders:
            assert any(
                geometry.intersection(occ.box, geometry.object_box(o)) > 0
                for o in spec.objects
                if o.kind == "shape"
            )  # it does occlude a shape
            for obj in spec.objects:
                box = geometry.object_box(obj)
                frac = geometry.intersection(occ.box, box) / geometry.box_area(box)
                assert frac <= 0.25 + 1e-9
    # in pixels, at twice the resolution the sampler checked at: the occluder hides at most
    # about a quarter of any shape's ink, and next to nothing of a word's
    black = _flat((0, 0, 0))
    hidden_fracs = []
    for spec in occluded[:200]:
        occ = spec.occluders[0]
        for obj in spec.objects:
            alone = render(SceneSpec(background=black, objects=(obj,)), 128).max(axis=-1) > 0
            covered = render(SceneSpec(background=black, objects=(obj,), occluders=(occ,)), 128)
            hidden = (_near(covered, occ.rgb, 3.0) & alone).sum() / alone.sum()
            assert hidden <= (0.05 if obj.kind == "word" else 0.28), (obj, occ)
            hidden_fracs.append(hidden)
    assert max(hidden_fracs) > 0.1  # occluders really hide something


def test_occluders_spare_words() -> None:
    rng = np.random.default_rng(77)
    black = _flat((0, 0, 0))
    checked = 0
    while checked < 60:
        spec = sample_spec(rng, split="train", p_empty=0.0, p_word=0.6, p_occlusion=1.0)
        if not spec.occluders:
            continue
        occ = spec.occluders[0]
        for obj in spec.objects:
            if obj.kind != "word" or geometry.intersection(occ.box, geometry.object_box(obj)) == 0:
                continue
            alone = render(SceneSpec(background=black, objects=(obj,)), 128).max(axis=-1) > 0
            covered = render(SceneSpec(background=black, objects=(obj,), occluders=(occ,)), 128)
            assert (_near(covered, occ.rgb, 3.0) & alone).sum() <= 0.05 * alone.sum()
            checked += 1


def test_sampled_rotations(train_specs: list[SceneSpec]) -> None:
    shape_rot = [
        o.rotation
        for s in train_specs
        for o in s.objects
        if o.kind == "shape" and o.concept != "circle"
    ]
    word_rot = [o.rotation for s in train_specs for o in s.objects if o.kind == "word"]
    assert min(shape_rot) >= 0.0 and max(shape_rot) < 360.0
    assert np.histogram(shape_rot, bins=4, range=(0, 360))[0].min() > 0.15 * len(shape_rot)
    assert all(-15.0 <= r <= 15.0 for r in word_rot)  # words only slightly rotated
    assert 0.2 < np.mean([r != 0.0 for r in word_rot]) < 0.8


def test_occluder_is_drawn_over_objects() -> None:
    obj = _obj("square", "red", size=0.4)
    occ = OccluderSpec(box=(0.25, 0.25, 0.4, 0.75), rgb=(100, 100, 100))
    img = render(SceneSpec(background=_flat((200, 200, 200)), objects=(obj,), occluders=(occ,)))
    assert _near(img[24:40, 18:24], (100, 100, 100), 3.0).all()
    assert _near(img[24:40, 28:40], COLOUR_RGB["red"], 3.0).all()


# --------------------------------------------------------------------------------------------
# Captions


def test_canonical_captions() -> None:
    assert canonical_caption(_obj("triangle", "red")) == "a red triangle"
    assert canonical_caption(_obj("star", "orange")) == "an orange star"
    assert canonical_caption(_obj("SPAM", "yellow")) == "the word spam"
    assert canonical_caption(None) == EMPTY_CAPTION == "an empty background"
    assert concept_caption("ring", "purple") == "a purple ring"
    assert concept_caption("HELLO") == "the word hello"
    with pytest.raises(ConfigError):
        concept_caption("circle")


def test_captions_name_colour_and_shape(train_specs: list[SceneSpec]) -> None:
    rng = np.random.default_rng(2)
    for spec in train_specs[:1500]:
        text = caption(spec, rng)
        assert text == text.lower()
        if not spec.objects:
            assert "background" in text
            continue
        for obj in spec.objects:
            if obj.kind == "shape":
                assert f"{obj.colour} {obj.concept}" in text, (text, obj)
            else:
                assert re.search(rf"\b{obj.concept.lower()}\b", text), (text, obj)
        assert "empty" not in text


def test_captions_count_identical_objects_in_words() -> None:
    bg = _flat((128, 128, 128))
    two = SceneSpec(
        background=bg,
        objects=(
            _obj("circle", "blue", centre=(0.25, 0.5), size=0.2),
            _obj("circle", "blue", centre=(0.75, 0.5), size=0.2),
        ),
    )
    three = SceneSpec(
        background=bg,
        objects=(
            _obj("cross", "red", centre=(0.2, 0.2), size=0.2),
            _obj("cross", "red", centre=(0.5, 0.5), size=0.2),
            _obj("cross", "red", centre=(0.8, 0.8), size=0.2),
        ),
    )
    mixed = SceneSpec(
        background=bg,
        objects=(
            _obj("triangle", "red", centre=(0.25, 0.5), size=0.2),
            _obj("star", "green", centre=(0.75, 0.5), size=0.2),
        ),
    )
    words = SceneSpec(
        background=bg,
        objects=(
            _obj("STOP", "white", centre=(0.5, 0.25), size=0.5),
            _obj("STOP", "white", centre=(0.5, 0.75), size=0.5),
        ),
    )
    for seed in range(20):
        rng = np.random.default_rng(seed)
        assert "two blue circles" in caption(two, rng)
        assert "three red crosses" in caption(three, rng)
        assert "a red triangle and a green star" in caption(mixed, rng)
        text = caption(words, rng)
        assert "word stop" in text and ("twice" in text or "two copies" in text), text


def test_captions_vary_and_are_deterministic() -> None:
    spec = SceneSpec(background=_flat((128, 128, 128)), objects=(_obj("SPAM", "yellow"),))
    texts = {caption(spec, np.random.default_rng(s)) for s in range(60)}
    assert "the word spam" in texts
    assert "the word spam in yellow letters" in texts
    assert len(texts) >= 8
    assert caption(spec, np.random.default_rng(3)) == caption(spec, np.random.default_rng(3))


def test_heldout_captions_mention_the_background_only_by_kind(
    heldout_specs: list[SceneSpec],
) -> None:
    words = {
        "flat": ("plain", "flat", "uniform"),
        "gradient": ("gradient", "shaded"),
        "noise": ("noisy", "grainy", "speckled"),
        "clutter": ("cluttered", "busy", "messy"),
    }
    rng = np.random.default_rng(4)
    for spec in heldout_specs[:500]:
        text = caption(spec, rng)
        if " background" in text:
            assert any(w in text for w in words[spec.background.kind]), text


# --------------------------------------------------------------------------------------------
# Validation


def test_invalid_arguments_raise_config_error() -> None:
    with pytest.raises(ConfigError):
        ObjectSpec(kind="shape", concept="hexagon", colour="red", centre=(0.5, 0.5), size=0.3)
    with pytest.raises(ConfigError):
        ObjectSpec(kind="word", concept="circle", colour="red", centre=(0.5, 0.5), size=0.3)
    with pytest.raises(ConfigError):
        ObjectSpec(kind="shape", concept="circle", colour="teal", centre=(0.5, 0.5), size=0.3)
    with pytest.raises(ConfigError):
        ObjectSpec(kind="shape", concept="circle", colour="red", centre=(0.5, 0.5), size=0.0)
    with pytest.raises(ConfigError):
        BackgroundSpec(kind="stripes", colour=(0, 0, 0), colour2=(0, 0, 0))  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        BackgroundSpec(kind="flat", colour=(0, 0, 300), colour2=(0, 0, 0))
    spec = SceneSpec(background=_flat((1, 2, 3)))
    with pytest.raises(ConfigError):
        render(spec, 4)
    rng = np.random.default_rng(0)
    with pytest.raises(ConfigError):
        sample_spec(rng, split="validation")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        sample_spec(rng, split="train", size_range=(0.5, 0.2))
    with pytest.raises(ConfigError):
        generate_batch(0, 2, split="dev")  # type: ignore[arg-type]
