"""`make demo`: the bundled demo model moderating synthetic frames.

Renders a few synthetic scenes with known content, scores each against the demo policies'
prompts with clipguard-demo, and prints which prompt wins and the cosine scores. The streaming
demo (embedded broker, sample video, worker, flag events) replaces this once the worker lands.
"""

from __future__ import annotations

import sys

import numpy as np
import torch
import torch.nn.functional as F

from pipeline import synthetic
from pipeline.models import DEMO_MODEL, DEMO_NOTICE, load_clip, tokenize

_PROMPTS = [
    "a red triangle",
    "the word spam",
    "a blue circle",
    "a green star",
    "the word hello",
    "an empty background",
]
_SCENES = [
    ("triangle", "red"),
    ("SPAM", "yellow"),
    ("circle", "blue"),
    ("star", "green"),
    ("HELLO", "white"),
    ("triangle", "purple"),
    ("square", "red"),
]


def main() -> int:
    print(f"note: {DEMO_NOTICE}\n")
    model = load_clip(DEMO_MODEL)
    rng = np.random.default_rng(7)
    specs = [
        synthetic.sample_single_object_spec(rng, split="heldout", concept=c, colour=col)
        for c, col in _SCENES
    ]
    specs.append(
        synthetic.SceneSpec(
            background=synthetic.sample_spec(rng, split="train", p_empty=1.0).background
        )
    )
    frames = torch.from_numpy(
        np.stack([synthetic.render(s, model.input_resolution) for s in specs])
    )
    tokens = tokenize(_PROMPTS, context_length=model.context_length)
    with torch.inference_mode():
        image = F.normalize(model.encode_image(model.preprocess(frames)), dim=-1)
        text = F.normalize(model.encode_text(tokens), dim=-1)
    scores = image @ text.t()
    width = max(len(p) for p in _PROMPTS)
    print(
        f"{'frame shows':<24} {'best prompt':<{width}}  "
        + "  ".join(f"{p[:12]:>12}" for p in _PROMPTS)
    )
    for spec, row in zip(specs, scores, strict=True):
        truth = synthetic.canonical_caption(spec.primary)
        best = _PROMPTS[int(row.argmax())]
        print(f"{truth:<24} {best:<{width}}  " + "  ".join(f"{float(s):>12.3f}" for s in row))
    print(
        "\n(cosine similarity of each frame with each prompt; a purple triangle and a red "
        "square are near misses that a red-triangle policy must not flag)"
    )
    print("The streaming demo (embedded Kafka broker, worker, flag events) is not yet built.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
