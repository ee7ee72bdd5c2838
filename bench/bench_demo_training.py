"""Demo model training: the cost of one step in float32 and under bfloat16 autocast.

One training step of ``clipguard-demo`` as ``scripts/train_demo_model.py`` takes it (the
model's forward and backward passes with the contrastive and class losses, and the AdamW
update) on one real batch of the default mix, with one torch thread. The two precisions are
measured in turns in this process, so that a machine's drift between runs hits both alike;
it prints the CPU time a step took in each (median and best of ``--rounds``) and their ratio.
Drawing the batch is not included: the render process does it beside training.

    python bench/bench_demo_training.py [--batch-size 128] [--rounds 5] [--steps 6]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace

import torch

from pipeline.demo.training import (
    TrainConfig,
    _loss,
    _param_groups,
    _Prepared,
    _prepared,
    _Recipe,
    class_prompts,
)
from pipeline.models.configs import CLIPConfig
from pipeline.models.model import CLIP
from pipeline.models.registry import DEMO_MODEL, get_model_info
from pipeline.models.tokenizer import tokenize


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch-size", type=int, default=128, help="scenes per step (default 128)")
    ap.add_argument("--rounds", type=int, default=5, help="turns of each precision (default 5)")
    ap.add_argument("--steps", type=int, default=6, help="steps timed per turn (default 6)")
    args = ap.parse_args(argv)
    if not (1 <= args.batch_size <= 1024 and 1 <= args.rounds <= 100 and 1 <= args.steps <= 100):
        ap.error("--batch-size 1-1024, --rounds and --steps 1-100")
    architecture = get_model_info(DEMO_MODEL).config
    assert isinstance(architecture, CLIPConfig)
    torch.set_num_threads(1)
    cfg = TrainConfig(model=architecture, batch_size=args.batch_size, variety=0.55)
    batch = _prepared(_Recipe(cfg, architecture.vision.image_resolution, None), 1)
    class_tokens = tokenize(class_prompts(), context_length=architecture.text.context_length)
    model = CLIP(architecture)
    model.init_weights(torch.Generator().manual_seed(0))
    model.train()
    opt = torch.optim.AdamW(_param_groups(model, 0.05), lr=1e-4, fused=True)

    def turn(bf16: bool) -> float:
        step_cfg = replace(cfg, bf16=bf16)
        for _ in range(2):  # warm-up: kernels chosen, memory allocated
            _step(model, opt, step_cfg, batch, class_tokens)
        start = time.process_time()
        for _ in range(args.steps):
            _step(model, opt, step_cfg, batch, class_tokens)
        return float((time.process_time() - start) / args.steps)

    times: dict[str, list[float]] = {"float32": [], "bfloat16": []}
    for _ in range(args.rounds):
        times["float32"].append(turn(False))
        times["bfloat16"].append(turn(True))
    for name, values in times.items():
        print(
            f"{name:>8}: {statistics.median(values):.3f} s a step (median), "
            f"{min(values):.3f} s (best), {args.batch_size} scenes, one thread"
        )
    ratio = statistics.median(times["float32"]) / statistics.median(times["bfloat16"])
    print(f"bfloat16 autocast: {ratio:.2f}x the steps a second of float32 (medians)")
    return 0


def _step(
    model: CLIP,
    opt: torch.optim.Optimizer,
    cfg: TrainConfig,
    batch: _Prepared,
    class_tokens: torch.Tensor,
) -> None:
    loss = _loss(model, cfg, batch, class_tokens)
    opt.zero_grad(set_to_none=True)
    loss.backward()  # type: ignore[no-untyped-call]
    opt.step()


if __name__ == "__main__":
    sys.exit(main())
