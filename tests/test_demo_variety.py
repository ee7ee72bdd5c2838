"""The wider training rendering (pipeline.demo.variety): the same scene with varied drawing,
photographs as empty negatives, and a warm-started training run that stays deterministic."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.demo import scenes

pytest.importorskip("skimage")  # photographs: the train extra (in the test extra too)

from pipeline.demo import variety

ROOT = Path(__file__).resolve().parent.parent


def test_varied_scenes_keep_their_objects_and_differ_from_the_generator():
    rng = np.random.default_rng(7)
    differ = 0
    for _ in range(40):
        spec = scenes.sample_spec(rng, split="train", p_empty=0.0)
        img, captioned = variety.render_varied(rng, spec, 64)
        assert img.shape == (64, 64, 3) and img.dtype == np.uint8
        assert captioned.objects == spec.objects  # the caption still names every object
        differ += not np.array_equal(img, scenes.render(spec, 64))
    assert differ == 40


def test_photo_negatives_are_photographs_captioned_as_empty():
    rng = np.random.default_rng(8)
    img, spec = variety.photo_negative(rng, 64)
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    assert spec.objects == () and img.std() > 5  # textured, not a flat fill
    assert scenes.caption(spec, rng).endswith("background") or "empty" in scenes.caption(spec, rng)
    assert len(variety.photos()) == len(variety.PHOTOS)


def _run(tmp: Path, name: str, render_workers: int) -> dict[str, object]:
    out = tmp / f"{name}.safetensors"
    cmd = [sys.executable, str(ROOT / "scripts" / "train_demo_model.py"), "--out", str(out)]
    cmd += ["--init", "clipguard-demo", "--variety", "0.4", "--photo-negatives", "0.2"]
    cmd += ["--textures", "0.1", "--decoded", "0.2", "--decoded-pool", "16"]
    cmd += ["--steps", "6", "--batch-size", "16", "--eval-images", "0", "--threads", "1"]
    cmd += ["--render-workers", str(render_workers)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from safetensors.torch import load_file

    return load_file(str(out))


def test_warm_started_wide_training_is_deterministic_with_or_without_a_render_process(tmp_path):
    """Every kind of scene (varied, photographs, textures, H.264-decoded frames), once drawn in
    this process and once in a render process: the same weights, bit for bit."""
    import torch

    a, b = _run(tmp_path, "a", 0), _run(tmp_path, "b", 1)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
