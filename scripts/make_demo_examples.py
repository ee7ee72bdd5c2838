"""Regenerate the demo policies' regression examples (pipeline/policies/data/demo/examples/*.png).

Each example is a synthetic scene drawn from a fixed seed with a fixed recipe, never picked by
how the model scores it: positives show the policy's concept (alone, or among other objects),
negatives show near misses. `clipguard policy test pipeline/policies/data/demo` checks them.

    python scripts/make_demo_examples.py
"""

from __future__ import annotations

import sys

import cv2
import numpy as np

from pipeline.demo import scenes as synth
from pipeline.policies.bundled import DEMO_POLICIES

OUT = DEMO_POLICIES / "examples"
SIZE = 128

# file name -> (concept, colour) of a single large object, or None for an empty background
_SINGLE: dict[str, tuple[str, str] | None] = {
    "red-triangle-1": ("triangle", "red"),
    "red-triangle-2": ("triangle", "red"),
    "red-square": ("square", "red"),
    "purple-triangle": ("triangle", "purple"),
    "orange-star": ("star", "orange"),
    "spam-yellow": ("SPAM", "yellow"),
    "spam-white": ("SPAM", "white"),
    "stop-red": ("STOP", "red"),
    "hello-blue": ("HELLO", "blue"),
    "empty": None,
}


def _scene_with(rng: np.random.Generator, concept: str, colour: str) -> synth.SceneSpec:
    """A busy held-out scene (2-3 objects) that includes ``concept`` in ``colour`` at a size the
    64-pixel demo model can see (a quarter of the frame side or more)."""
    while True:
        spec = synth.sample_spec(rng, split="heldout", max_objects=3, p_occlusion=0.0)
        if len(spec.objects) >= 2 and any(
            o.concept == concept and o.colour == colour and o.size >= 0.25 for o in spec.objects
        ):
            return spec


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20261128)
    scenes: dict[str, synth.SceneSpec] = {}
    for name, what in _SINGLE.items():
        if what is None:
            bg = synth.sample_spec(rng, split="train", p_empty=1.0).background
            scenes[name] = synth.SceneSpec(background=bg)
        else:
            concept, colour = what  # on the background training never showed it on
            scenes[name] = synth.sample_single_object_spec(
                rng, split="heldout", concept=concept, colour=colour
            )
    scenes["red-triangle-busy"] = _scene_with(rng, "triangle", "red")
    scenes["spam-busy"] = _scene_with(rng, "SPAM", "green")
    for name, spec in scenes.items():
        rgb = synth.render(spec, SIZE)
        path = OUT / f"{name}.png"
        cv2.imwrite(str(path), np.ascontiguousarray(rgb[:, :, ::-1]))
        print(f"{path.relative_to(OUT.parent.parent.parent)}: {synth.caption(spec, rng)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
