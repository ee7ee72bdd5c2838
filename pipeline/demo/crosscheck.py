"""Zero-shot accuracy of a demo model on :mod:`pipeline.demo.pilscenes`, the second renderer.

Every scene is classified among :func:`~pipeline.demo.training.class_prompts` (48 coloured
shapes, 4 words, the empty background); the top prompt is then read as a colour and a shape,
so the report gives colour, shape and colour+shape accuracy, per shape, and which shape each
shape is mistaken for.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from pipeline.demo import scenes
from pipeline.demo.pilscenes import SHAPE_NAMES, draw_scenes
from pipeline.demo.training import class_prompts, encode_images, encode_prompts
from pipeline.models.model import CLIP

__all__ = ["DrawnReport", "evaluate_drawn"]


@dataclass
class DrawnReport:
    n: int
    colour: float  # share whose top prompt names the right colour
    shape: float  # ... the right shape
    both: float  # ... exactly the right coloured shape
    per_shape: dict[str, float]  # shape -> colour+shape accuracy
    per_colour: dict[str, float]  # colour -> colour+shape accuracy
    per_background: dict[str, float]
    confusion: dict[str, dict[str, int]]  # true shape -> predicted shape (or word/empty) -> n

    def table(self) -> str:
        lines = [
            f"second renderer, {self.n} scenes: colour {self.colour:.3f}  shape "
            f"{self.shape:.3f}  colour+shape {self.both:.3f}",
            "colour+shape by shape:      "
            + "  ".join(f"{k} {v:.2f}" for k, v in self.per_shape.items()),
            "colour+shape by colour:     "
            + "  ".join(f"{k} {v:.2f}" for k, v in self.per_colour.items()),
            "colour+shape by background: "
            + "  ".join(f"{k} {v:.2f}" for k, v in self.per_background.items()),
            "shape confusion (true: predicted counts):",
        ]
        for true, row in self.confusion.items():
            lines.append(f"  {true:<9}" + "  ".join(f"{p} {n}" for p, n in row.items()))
        return "\n".join(lines)

    def as_dict(self) -> dict[str, object]:
        def r(x: float) -> float:
            return round(x, 4)

        return {
            "images": self.n,
            "colour": r(self.colour),
            "shape": r(self.shape),
            "colour_shape": r(self.both),
            "per_shape": {k: r(v) for k, v in self.per_shape.items()},
            "per_colour": {k: r(v) for k, v in self.per_colour.items()},
            "per_background": {k: r(v) for k, v in self.per_background.items()},
            "shape_confusion": self.confusion,
        }


def _parse(prompt: str) -> tuple[str, str]:
    """(colour, shape) named by a class prompt; ("", "word") / ("", "empty") otherwise."""
    if prompt == scenes.EMPTY_CAPTION:
        return "", "empty"
    if prompt.startswith("the word"):
        return "", "word"
    *_, colour, shape = prompt.split()
    return colour, shape


def evaluate_drawn(model: CLIP, *, per_pair: int = 10, seed: int = 19) -> DrawnReport:
    """Classify ``per_pair`` second-renderer scenes of each of the 48 coloured shapes."""
    drawn = draw_scenes(per_pair, seed=seed, side=model.input_resolution)
    prompts = class_prompts()
    images = np.stack([d.image for d in drawn])
    sims = encode_images(model, images) @ encode_prompts(model, prompts).t()
    preds = [_parse(prompts[j]) for j in sims.argmax(dim=1).tolist()]
    ok_c = [p[0] == d.colour for p, d in zip(preds, drawn, strict=True)]
    ok_s = [p[1] == d.shape for p, d in zip(preds, drawn, strict=True)]
    ok = [a and b for a, b in zip(ok_c, ok_s, strict=True)]

    def share(key: str, value: str) -> float:
        hits = [o for o, d in zip(ok, drawn, strict=True) if getattr(d, key) == value]
        return sum(hits) / len(hits)

    confusion: dict[str, dict[str, int]] = {}
    for shape in SHAPE_NAMES:
        counts = Counter(p[1] for p, d in zip(preds, drawn, strict=True) if d.shape == shape)
        confusion[shape] = dict(counts.most_common())
    return DrawnReport(
        n=len(drawn),
        colour=sum(ok_c) / len(drawn),
        shape=sum(ok_s) / len(drawn),
        both=sum(ok) / len(drawn),
        per_shape={s: share("shape", s) for s in SHAPE_NAMES},
        per_colour={c: share("colour", c) for c in scenes.COLOURS},
        per_background={b: share("background", b) for b in ("flat", "gradient", "noise")},
        confusion=confusion,
    )
