"""The training curriculum: plain generator scenes for the first ``plain_steps`` steps, the
wider mix after them, in one run with one learning-rate schedule."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.demo.training import TrainConfig, _batch, _Recipe
from pipeline.errors import ConfigError
from pipeline.models.configs import CLIPConfig
from pipeline.models.registry import DEMO_MODEL, get_model_info

pytest.importorskip("skimage")  # photographs: the train extra (in the test extra too)

ROOT = Path(__file__).resolve().parent.parent
CONFIG = get_model_info(DEMO_MODEL).config
assert isinstance(CONFIG, CLIPConfig)


def test_plain_steps_draw_generator_scenes_then_the_wide_mix():
    # every scene of the wide mix here is a bare photograph captioned as empty, so a batch
    # tells which part of the curriculum drew it
    cfg = TrainConfig(model=CONFIG, steps=4, batch_size=24, photo_negatives=1.0, plain_steps=2)
    recipe = _Recipe(cfg, 64, None)
    for step in range(4):
        _, captions, keys = _batch(recipe, step)
        empty = [not k for k in keys]
        if step < 2:  # the generator's scenes: most have objects, captioned by what they show
            assert sum(empty) < len(keys) / 2, (step, captions)
        else:
            assert all(empty), (step, captions)
            assert all("background" in c for c in captions), captions


def test_a_curriculum_batch_is_the_same_whoever_draws_it():
    cfg = TrainConfig(model=CONFIG, steps=3, batch_size=16, variety=0.6, plain_steps=1)
    a, b = _batch(_Recipe(cfg, 64, None), 2), _batch(_Recipe(cfg, 64, None), 2)
    assert (a[0] == b[0]).all() and a[1] == b[1] and a[2] == b[2]


@pytest.mark.parametrize("plain_steps", [-1, 11])
def test_plain_steps_are_bounded_by_the_run(plain_steps):
    with pytest.raises(ConfigError, match="plain_steps"):
        TrainConfig(model=CONFIG, steps=10, plain_steps=plain_steps)


def test_the_script_rejects_a_curriculum_longer_than_the_run(tmp_path):
    cmd = [sys.executable, str(ROOT / "scripts" / "train_demo_model.py")]
    cmd += ["--out", str(tmp_path / "x.safetensors"), "--steps", "5", "--plain-steps", "6"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "plain_steps must be 0 to steps (5)" in proc.stderr
    assert not (tmp_path / "x.safetensors").exists()


def test_class_targets_share_a_scene_among_the_classes_it_shows():
    from pipeline.demo import scenes
    from pipeline.demo.training import _class_targets, _content_key, class_prompts

    prompts = class_prompts()
    red_triangle = scenes.ObjectSpec("shape", "triangle", "red", (0.5, 0.5), 0.3)
    spam = scenes.ObjectSpec("word", "SPAM", "yellow", (0.3, 0.2), 0.3)
    black = scenes.BackgroundSpec("flat", (0, 0, 0), (0, 0, 0))
    specs = [
        scenes.SceneSpec(background=black),
        scenes.SceneSpec(background=black, objects=(red_triangle,)),
        scenes.SceneSpec(background=black, objects=(red_triangle, spam)),
        scenes.SceneSpec(background=black, objects=(red_triangle, red_triangle)),
    ]
    targets = _class_targets([_content_key(s) for s in specs])
    assert targets.shape == (4, len(prompts))
    assert targets.sum(dim=1).tolist() == [1.0, 1.0, 1.0, 1.0]
    named = [{prompts[j]: float(v) for j, v in enumerate(row) if v} for row in targets]
    assert named[0] == {"an empty background": 1.0}
    assert named[1] == named[3] == {"a red triangle": 1.0}
    assert named[2] == {"a red triangle": 0.5, "the word spam": 0.5}


def test_every_prepared_batch_carries_class_targets_that_match_its_captions():
    import torch

    from pipeline.demo.training import _prepared, class_prompts

    cfg = TrainConfig(model=CONFIG, steps=2, batch_size=32, variety=0.5, photo_negatives=0.2)
    images, tokens, match, targets = _prepared(_Recipe(cfg, 64, None), 1)
    _, captions, keys = _batch(_Recipe(cfg, 64, None), 1)
    assert images.shape == (32, 64, 64, 3) and tokens.shape == (32, CONFIG.text.context_length)
    assert match.shape == (32, 32) and targets.shape == (32, len(class_prompts()))
    assert torch.allclose(targets.sum(dim=1), torch.ones(32))
    empty = class_prompts().index("an empty background")
    assert sum(not k for k in keys) >= 2  # photographs among them
    for caption, key, row in zip(captions, keys, targets, strict=True):
        # a photograph or an empty scene is the empty background only; a scene with objects
        # never is
        assert (row[empty] == 1.0) == (not key), caption


@pytest.mark.parametrize("weight", [-0.5, 11.0, float("nan")])
def test_the_class_loss_weight_is_bounded(weight):
    with pytest.raises(ConfigError, match="class_loss must be 0 to 10"):
        TrainConfig(model=CONFIG, steps=10, class_loss=weight)
