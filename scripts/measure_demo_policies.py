"""Measure the demo policies' score distributions with clipguard-demo and suggest thresholds.

For each label of the policies bundled for the demo: generated scenes that contain its concept
(single objects and busy multi-object scenes, both splits) against scenes that do not (random
scenes and near misses: the same shape in another colour, another shape in the same colour,
other words). With ``--wide`` (default 0.3) that share of the scenes is drawn by the wider training
rendering (pipeline/demo/variety.py), and as many again of the negatives are frames with
nothing the model knows: procedural textures, photographs and frames taken through H.264 and
the decode stage (pipeline/demo/decoded.py). Everything is generated here; real clips are never
used to calibrate. Prints score quantiles and the lowest threshold whose precision on these
scenes is at least --precision, with its recall.

    python scripts/measure_demo_policies.py [--per-class 400] [--precision 0.98] [--wide 0.3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from pipeline.demo import scenes
from pipeline.models import DEMO_MODEL, load_clip
from pipeline.models.encoders import reference_encoder
from pipeline.policies import load_policies
from pipeline.policies.bundled import DEMO_POLICIES
from pipeline.policies.compile import PolicyCompiler

ROOT = Path(__file__).resolve().parent.parent
# label -> (concept, colour or None for words) the label is about
_TARGETS = {"red-triangle/red-triangle": ("triangle", "red"), "spam-text/spam-text": ("SPAM", None)}


def _has(spec: scenes.SceneSpec, concept: str, colour: str | None) -> bool:
    return any(
        o.concept == concept and (colour is None or o.colour == colour) for o in spec.objects
    )


def _scenes(rng, concept, colour, n, *, positive):
    specs = []
    near = [
        (c, col)
        for c in scenes.CONCEPTS
        for col in scenes.COLOURS
        if (c == concept) != (col == colour)
        or (colour is None and c in scenes.WORDS and c != concept)
    ]
    while len(specs) < n:
        split = "heldout" if rng.random() < 0.5 else "train"
        if positive and len(specs) < n // 2:
            col = colour or scenes.COLOURS[int(rng.integers(len(scenes.COLOURS)))]
            spec = scenes.sample_single_object_spec(
                rng,
                split=split,
                concept=concept,
                colour=col,
                size_range=(0.12, 0.45) if colour else None,
            )
        elif not positive and len(specs) < n // 2:
            c, col = near[int(rng.integers(len(near)))]
            spec = scenes.sample_single_object_spec(rng, split=split, concept=c, colour=col)
        else:
            spec = scenes.sample_spec(rng, split=split)
        if _has(spec, concept, colour) == positive:
            specs.append(spec)
    return specs


def _frames(
    rng: np.random.Generator, specs: list[scenes.SceneSpec], size: int, wide: float
) -> np.ndarray:
    """The scenes drawn by the generator, or by the wider rendering for a ``wide`` share."""
    from pipeline.demo import variety

    out = []
    for spec in specs:
        if rng.random() < wide:
            out.append(variety.render_varied(rng, spec, size)[0])
        else:
            out.append(scenes.render(spec, size))
    return np.stack(out)


def _blank_frames(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """``n`` frames with nothing the model knows: textures, photographs, decoded empty frames."""
    from pipeline.demo import decoded, variety

    pool, specs = decoded.decoded_pool(rng, 2 * n, size)
    empty = [img for img, spec in zip(pool, specs, strict=True) if not spec.objects]
    out = [variety.texture_negative(rng, size)[0] for _ in range(n // 2)]
    out += [variety.photo_negative(rng, size)[0] for _ in range(n // 4)]
    out += empty[: n - len(out)]
    return np.stack(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--policies", type=Path, default=DEMO_POLICIES)
    ap.add_argument("--per-class", type=int, default=400)
    ap.add_argument("--precision", type=float, default=0.98)
    ap.add_argument("--seed", type=int, default=99)
    ap.add_argument("--wide", type=float, default=0.3, help="share drawn by the wider rendering")
    args = ap.parse_args(argv)
    model = load_clip(DEMO_MODEL)
    policies = load_policies([args.policies])

    compiled = PolicyCompiler(model, use_cache=False).compile(policies).compiled
    encoder = reference_encoder(model)
    rng = np.random.default_rng(args.seed)
    for lab in compiled.labels:
        if lab.key not in _TARGETS:
            continue
        concept, colour = _TARGETS[lab.key]
        result = {}
        for positive in (True, False):
            specs = _scenes(rng, concept, colour, args.per_class, positive=positive)
            frames = _frames(rng, specs, model.input_resolution, args.wide)
            if not positive and args.wide > 0:
                extra = round(args.per_class * args.wide)
                frames = np.concatenate([frames, _blank_frames(rng, extra, frames.shape[1])])
            cos = compiled.cosines(encoder.encode(frames))
            negs = cos[:, list(lab.negative_rows)].max(axis=1) if lab.negative_rows else None
            margins = cos[:, lab.row] - negs if negs is not None else None
            result[positive] = (cos[:, lab.row], margins)
        (pos, pos_m), (neg, neg_m) = result[True], result[False]
        q = [5, 25, 50, 75, 95]
        print(f"{lab.key}  (threshold in file: {lab.threshold})")
        print(f"  positives ({len(pos)}): quantiles {q}: {np.percentile(pos, q).round(3).tolist()}")
        print(f"  negatives ({len(neg)}): quantiles {q}: {np.percentile(neg, q).round(3).tolist()}")
        best = None
        for t in np.arange(-0.2, 1.0, 0.005):
            tp, fp = int((pos >= t).sum()), int((neg >= t).sum())
            if tp and tp / (tp + fp) >= args.precision:
                best = (round(float(t), 3), tp / (tp + fp), tp / len(pos))
                break
        if best is None:
            print(f"  no threshold reaches precision {args.precision}")
        else:
            print(
                f"  lowest threshold with precision >= {args.precision}: {best[0]} "
                f"(precision {best[1]:.3f}, recall {best[2]:.3f})"
            )
        if pos_m is not None and neg_m is not None:
            combos = []
            for t in np.arange(0.0, 0.9, 0.01):
                for m in np.arange(0.0, 0.3, 0.01):
                    tp = int(((pos >= t) & (pos_m >= m)).sum())
                    fp = int(((neg >= t) & (neg_m >= m)).sum())
                    if tp and tp / (tp + fp) >= args.precision:
                        combos.append((tp / len(pos), tp / (tp + fp), round(t, 2), round(m, 2)))
            if combos:
                recall, prec, t, m = max(combos, key=lambda c: (c[0], c[1], c[2]))
                print(
                    f"  best threshold+margin with precision >= {args.precision}: threshold {t} "
                    f"margin {m} (precision {prec:.3f}, recall {recall:.3f})"
                )
        if lab.threshold is not None:
            ok_p = pos >= lab.threshold
            ok_n = neg >= lab.threshold
            if lab.margin is not None and pos_m is not None and neg_m is not None:
                ok_p &= pos_m >= lab.margin
                ok_n &= neg_m >= lab.margin
            tp, fp = int(ok_p.sum()), int(ok_n.sum())
            print(
                f"  the file's rule (threshold {lab.threshold}, margin {lab.margin}): precision "
                f"{tp / max(tp + fp, 1):.3f}, recall {tp / len(pos):.3f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
