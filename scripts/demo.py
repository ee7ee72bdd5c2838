"""`make demo`: the bundled demo model and the demo policies judging synthetic frames.

Renders scenes with known content (targets, near misses, busy scenes), scores each against
every policy in policies/demo with clipguard-demo, and prints each label's score, threshold and
decision. The streaming demo (embedded broker, sample video, worker, flag events) replaces this
once the stream worker lands.
"""

from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path

import numpy as np

from pipeline import synthetic
from pipeline.compiler import PolicyCompiler
from pipeline.encoder import Encoder
from pipeline.models import DEMO_MODEL, load_clip
from pipeline.policy import load_policies

ROOT = Path(__file__).resolve().parent.parent
_SINGLE = [
    ("triangle", "red"),
    ("SPAM", "yellow"),
    ("triangle", "purple"),  # near miss: another colour
    ("square", "red"),  # near miss: another shape
    ("STOP", "white"),  # near miss: another word
    ("circle", "blue"),
]


def _busy(rng: np.random.Generator, concept: str, colour: str) -> synthetic.SceneSpec:
    while True:
        spec = synthetic.sample_spec(rng, split="heldout", p_occlusion=0.0)
        if len(spec.objects) >= 2 and any(
            o.concept == concept and o.colour == colour and o.size >= 0.25 for o in spec.objects
        ):
            return spec


def _cell(score: float, threshold: float | None, passed: bool) -> str:
    verdict = "FLAG" if passed else "    "
    return f"{score:6.3f} {'>=' if passed else '< '} {threshold or 0:.2f} {verdict}"


def main() -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    model = load_clip(DEMO_MODEL)  # logs that it is a demo model, and how to switch
    policies = load_policies([ROOT / "policies" / "demo"])
    with tempfile.TemporaryDirectory() as cache:
        compiled = PolicyCompiler(model, cache_dir=Path(cache)).compile(policies)
    rng = np.random.default_rng(7)
    specs = [
        synthetic.sample_single_object_spec(rng, split="heldout", concept=c, colour=col)
        for c, col in _SINGLE
    ]
    specs += [_busy(rng, "triangle", "red"), _busy(rng, "SPAM", "green")]
    specs.append(
        synthetic.SceneSpec(
            background=synthetic.sample_spec(rng, split="train", p_empty=1.0).background
        )
    )
    frames = np.stack([synthetic.render(s, model.input_resolution) for s in specs])
    decisions = compiled.decide(compiled.scores(Encoder(model).encode(frames)))

    keys = [lab.key for lab in compiled.labels]
    print(f"\nclipguard-demo judging {len(specs)} synthetic frames with {len(keys)} demo policies")
    print(f"{'frame shows':<44}" + "".join(f"{k.split('/')[1]:>22}" for k in keys))
    for spec, row in zip(specs, decisions, strict=True):
        shows = (
            " + ".join(dict.fromkeys(synthetic.canonical_caption(o) for o in spec.objects))
            or synthetic.EMPTY_CAPTION
        )
        cells = [_cell(d.score, d.threshold, d.passed) for d in row]
        print(f"{shows[:43]:<44}" + "".join(f"{c:>22}" for c in cells))
    print(
        "\n(cosine score of each frame with each label's prompts, against the threshold measured "
        "for the demo model;\n purple triangles, red squares and the word STOP are near misses "
        "that must not be flagged)"
    )
    print("The streaming demo (embedded Kafka broker, worker, flag events) is not yet built.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
