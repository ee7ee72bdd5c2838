"""Seeded batches of scenes (images, captions, specs) for training and evaluation."""

from __future__ import annotations

import numpy as np

from pipeline.demo.scenes.captions import caption
from pipeline.demo.scenes.render import render
from pipeline.demo.scenes.sampling import sample_spec
from pipeline.demo.scenes.specs import SceneSpec, Split, U8Image, check_split
from pipeline.errors import ConfigError

__all__ = [
    "generate_batch",
]


def generate_batch(
    seed: int, n: int, *, size: int = 64, split: Split = "train"
) -> tuple[U8Image, list[str], list[SceneSpec]]:
    """``n`` scenes of ``split`` from ``seed``: images (n, size, size, 3) uint8 RGB, captions
    and specs. The same arguments always give byte-identical output."""
    check_split(split)
    if n < 0:
        raise ConfigError(f"n must be >= 0, not {n}")
    rng = np.random.default_rng(seed)
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    captions: list[str] = []
    specs: list[SceneSpec] = []
    for i in range(n):
        spec = sample_spec(rng, split=split)
        images[i] = render(spec, size)
        captions.append(caption(spec, rng))
        specs.append(spec)
    return images, captions, specs
