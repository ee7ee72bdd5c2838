"""Train clipguard-demo, the tiny CLIP bundled with clipguard, on synthetic scenes.

The defaults are the bundled model's whole recipe, one run from scratch (27 minutes of
training on a two-core machine; the model card gives its figures and how it was chosen). A
curriculum: the first steps (``--plain-steps``) draw the generator's plain scenes, which teach
shapes, colours and words fast, and the later steps draw the wider mix: varied renderings
(``--variety``), photographs and procedural textures as empty negatives, and frames taken
through H.264 encoding, PyAV decoding and the decode stage's fit (``--decoded``), under one
learning-rate schedule. Besides the contrastive loss, every image is set against all 53 class
prompts (``--class-loss``). Batches are drawn ahead in a render process while this one trains,
so two cores are used; the towers run under bfloat16 autocast. Seeded and deterministic (same
seed and thread count, same weights, with or without the render process). It writes the
checkpoint (OpenAI state-dict layout, safetensors, fp16) and a metrics JSON the model card
quotes; ``--out pipeline/models/data/clipguard-demo.safetensors`` replaces the bundled one.
``--init`` starts from other weights instead (a fine-tuning run).

    python scripts/train_demo_model.py                      # the bundled model, ~30 min
    python scripts/train_demo_model.py --steps 200 --out /tmp/demo.safetensors   # quick check
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from pathlib import Path

import torch

from pipeline.demo.training import (
    TrainConfig,
    evaluate_multi_object,
    evaluate_pair_retrieval,
    evaluate_zero_shot,
    train,
)
from pipeline.errors import ConfigError
from pipeline.models.configs import CLIPConfig
from pipeline.models.loading import save_clip
from pipeline.models.registry import DEMO_MODEL, get_model_info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--out",
        type=Path,
        default=Path("clipguard-demo.safetensors"),
        help="checkpoint path (default: clipguard-demo.safetensors in the current directory; "
        "the bundled model is pipeline/models/data/clipguard-demo.safetensors)",
    )
    ap.add_argument(
        "--metrics",
        type=Path,
        default=None,
        help="metrics JSON (default: beside --out, .metrics.json)",
    )
    ap.add_argument("--seed", type=int, default=0, help="everything random derives from it")
    ap.add_argument("--steps", type=int, default=4800, help="optimiser steps (default: 4800)")
    ap.add_argument("--batch-size", type=int, default=128, help="scenes per step (default: 128)")
    ap.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (default: 2e-3)")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads; the weights depend on it (default: 1)",
    )
    ap.add_argument(
        "--warmup", type=int, default=None, help="warm-up steps (default: min(150, steps/10))"
    )
    ap.add_argument(
        "--init",
        default=None,
        help="start from these weights (a registry name such as clipguard-demo, or a file) "
        "instead of a random initialisation",
    )
    ap.add_argument(
        "--variety",
        type=float,
        default=0.55,
        help="share of scenes drawn with varied geometry, backgrounds and artefacts "
        "(pipeline/demo/variety.py; photo backgrounds need the train extra)",
    )
    ap.add_argument(
        "--photo-negatives",
        type=float,
        default=0.1,
        help="share of scenes that are bare photograph crops captioned as an empty background",
    )
    ap.add_argument(
        "--textures",
        type=float,
        default=0.06,
        help="share of scenes that are bare procedural textures captioned as an empty background",
    )
    ap.add_argument(
        "--decoded",
        type=float,
        default=0.12,
        help="share of scenes taken from a pool of frames encoded with H.264, decoded and "
        "fitted by the decode stage (pipeline/demo/decoded.py)",
    )
    ap.add_argument("--decoded-pool", type=int, default=768, help="frames in that pool")
    ap.add_argument(
        "--render-workers",
        type=int,
        default=1,
        help="processes drawing batches ahead of training (0: draw them in the training "
        "process; the weights are the same either way)",
    )
    ap.add_argument(
        "--plain-steps",
        type=int,
        default=None,
        help="curriculum: the first this many steps draw plain generator scenes only (fast to "
        "learn from); the shares above apply to the steps after them. One learning-rate "
        "schedule spans both parts (default: 3/8 of --steps; 0 for the mix from the start)",
    )
    ap.add_argument(
        "--class-loss",
        type=float,
        default=1.0,
        help="weight of the second loss that sets every image against all 53 class prompts "
        "(each coloured shape, each word, the empty background); 0 trains with the "
        "contrastive loss alone",
    )
    ap.add_argument(
        "--fp32",
        action="store_true",
        help="run the towers in float32 instead of under bfloat16 autocast (a step costs "
        "about a third more on a CPU with AVX-512 BF16)",
    )
    ap.add_argument(
        "--eval-drawn-per-pair",
        type=int,
        default=10,
        help="second-renderer scenes per shape+colour pair (pipeline/demo/pilscenes.py)",
    )
    ap.add_argument(
        "--max-minutes",
        type=float,
        default=90.0,
        help="safety stop: end training after this many minutes even if steps remain (the "
        "result then depends on machine speed; see the model card for the default run's "
        "time)",
    )
    ap.add_argument(
        "--eval-images",
        type=int,
        default=600,
        help="held-out images for the zero-shot accuracy (0: skip evaluation)",
    )
    ap.add_argument(
        "--eval-per-pair",
        type=int,
        default=50,
        help="held-out images per shape+colour pair for the retrieval check",
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    architecture = get_model_info(DEMO_MODEL).config
    if not isinstance(architecture, CLIPConfig):  # the registry entry is a CLIP; say so if not
        ap.error(f"{DEMO_MODEL} is registered with a {type(architecture).__name__}, not a CLIP")
    plain_steps = args.plain_steps if args.plain_steps is not None else args.steps * 3 // 8
    try:
        cfg = TrainConfig(
            model=architecture,
            seed=args.seed,
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            threads=args.threads,
            max_seconds=args.max_minutes * 60,
            warmup=args.warmup if args.warmup is not None else min(150, max(1, args.steps // 10)),
            variety=args.variety,
            photo_negatives=args.photo_negatives,
            textures=args.textures,
            decoded=args.decoded,
            decoded_pool=args.decoded_pool,
            render_workers=args.render_workers,
            plain_steps=plain_steps,
            class_loss=args.class_loss,
            bf16=not args.fp32,
            init=args.init,
        )
    except ConfigError as e:
        ap.error(str(e))
    result = train(cfg, progress=print)
    save_clip(result.model, args.out, dtype=torch.float16)
    print(
        f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB) after {result.steps} "
        f"steps in {result.seconds / 60:.1f} min"
    )

    metrics: dict[str, object] = {
        "seed": args.seed,
        "steps": result.steps,
        "batch_size": args.batch_size,
        "train_seconds": round(result.seconds, 1),
        # on a shared machine wall time grows with the other load; CPU time hardly does (with
        # one thread it is about the wall time the run takes on a quiet machine)
        "train_cpu_seconds": round(result.cpu_seconds, 1),
        "threads": args.threads,
        "lr": args.lr,
        "warmup": cfg.warmup,
        "init": args.init,
        "variety": args.variety,
        "photo_negatives": args.photo_negatives,
        "textures": args.textures,
        "decoded": args.decoded,
        "decoded_pool": args.decoded_pool if args.decoded else 0,
        "render_workers": args.render_workers,
        "plain_steps": plain_steps,
        "class_loss": args.class_loss,
        "bf16": cfg.bf16,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "loss_curve": [round(x, 4) for x in result.losses],
    }
    if args.eval_images:
        from pipeline.models.loading import load_clip

        model = load_clip(args.out)  # evaluate what was written: fp16 weights, as shipped
        t0 = time.perf_counter()
        zs = evaluate_zero_shot(model, n=args.eval_images)
        print(zs.table())
        pairs = evaluate_pair_retrieval(model, per_pair=args.eval_per_pair)
        multi = evaluate_multi_object(model)
        print(f"multi-object scenes: {multi:.3f} of present objects ranked in the top k")
        worst = sorted(pairs.items(), key=lambda kv: kv[1])[:5]
        mean_pair = sum(pairs.values()) / len(pairs)
        worst_names = [(f"{c} {s}", v) for (s, c), v in worst]
        print(f"pair retrieval: mean {mean_pair:.3f}, worst {worst_names}")
        from pipeline.demo.crosscheck import evaluate_drawn

        drawn = evaluate_drawn(model, per_pair=args.eval_drawn_per_pair)
        print(drawn.table())
        metrics["second_renderer"] = drawn.as_dict()
        metrics.update(
            zero_shot_accuracy=round(zs.accuracy, 4),
            zero_shot_images=zs.n,
            zero_shot_by_group={k: round(v, 4) for k, v in zs.by_group.items()},
            zero_shot_per_class={k: list(v) for k, v in sorted(zs.per_class.items())},
            pair_retrieval_mean=round(sum(pairs.values()) / len(pairs), 4),
            pair_retrieval_min=round(min(pairs.values()), 4),
            pair_retrieval_per_pair={f"{c} {s}": round(v, 3) for (s, c), v in pairs.items()},
            pair_images_per_pair=args.eval_per_pair,
            multi_object_recall=round(multi, 4),
            eval_seconds=round(time.perf_counter() - t0, 1),
        )
    metrics_path = args.metrics or args.out.with_suffix(".metrics.json")
    metrics_path.write_text(json.dumps(metrics, indent=2) + "\n")
    print(f"wrote {metrics_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
