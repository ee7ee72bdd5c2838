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
