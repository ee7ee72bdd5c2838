"""The second renderer (pipeline.demo.pilscenes) draws what it says, reproducibly, and the
demo model recognises its scenes: the accuracy a user sees on shapes the training generator
did not draw."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.demo.crosscheck import evaluate_drawn
from pipeline.demo.pilscenes import COLOUR_HSV, SHAPE_NAMES, draw_scene, draw_scenes
from pipeline.errors import ConfigError
from pipeline.models import DEMO_MODEL, load_clip


def test_scenes_are_seeded_and_cover_every_pair():
    a = draw_scenes(1, seed=3)
    b = draw_scenes(1, seed=3)
    assert len(a) == len(SHAPE_NAMES) * len(COLOUR_HSV) == 48
    assert {(d.shape, d.colour) for d in a} == {(s, c) for s in SHAPE_NAMES for c in COLOUR_HSV}
    assert all(np.array_equal(x.image, y.image) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0].image, draw_scenes(1, seed=4)[0].image)


@pytest.mark.parametrize("shape", SHAPE_NAMES)
def test_the_shape_is_drawn_in_its_colour_at_the_stated_size(shape):
    rng = np.random.default_rng(5)
    scene = draw_scene(rng, shape, "red", "flat", side=64)
    img = scene.image.astype(int)
    assert img.shape == (64, 64, 3) and scene.image.dtype == np.uint8
    red = (img[:, :, 0] > 150) & (img[:, :, 1] < 90) & (img[:, :, 2] < 90)
    ys, xs = np.nonzero(red)
    extent = max(np.ptp(ys), np.ptp(xs)) + 1
    assert 0.12 * 64 <= extent <= 0.36 * 64, extent  # 18-32% of the side, rotation aside
    share = red.mean()
    assert 0.004 < share < 0.12, share


def test_bad_arguments_are_refused():
    rng = np.random.default_rng(0)
    with pytest.raises(ConfigError):
        draw_scene(rng, "hexagon", "red", "flat")
    with pytest.raises(ConfigError):
        draw_scene(rng, "circle", "pink", "flat")
    with pytest.raises(ConfigError):
        draw_scene(rng, "circle", "red", "plaid")
    with pytest.raises(ConfigError):
        draw_scenes(0)
    with pytest.raises(ConfigError):
        draw_scenes(10_000)


def test_demo_model_on_the_second_renderer():
    # 144 scenes (3 per coloured shape); the model card gives the figures on 480
    report = evaluate_drawn(load_clip(DEMO_MODEL), per_pair=3, seed=2027)
    assert report.n == 144
    assert sum(sum(row.values()) for row in report.confusion.values()) == 144
    assert report.both >= MIN_COLOUR_SHAPE, report.table()
    assert min(report.per_shape.values()) >= MIN_PER_SHAPE, report.table()


# bounds below the bundled model's figures on this subset: 0.882 overall, every shape >= 0.70
# (star 0.71, cross 0.79; 0.912 and 0.79 on the card's 480 scenes); a model trained without
# the wider rendering had 0.708 and 0.67
MIN_COLOUR_SHAPE = 0.85
MIN_PER_SHAPE = 0.65
