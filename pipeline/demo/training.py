"""Training and evaluating ``clipguard-demo``, the tiny CLIP that knows synthetic scenes.

The demo model is our own CLIP architecture (:class:`~pipeline.models.model.CLIP`) with the
real BPE tokenizer, trained contrastively on :mod:`pipeline.demo.scenes` scenes and their
captions, and against all its zero-shot class prompts at once (:func:`_class_targets`). It
exists so that the demo and the end-to-end tests show real zero-shot moderation without
downloadable weights; it knows nothing but shapes, colours and four printed words.

``scripts/train_demo_model.py`` is the command line around :func:`train`; the evaluation
functions here are what the model card's accuracy table and the tests measure.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import resource
import time
from collections import deque
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.demo import decoded, scenes, variety
from pipeline.errors import ConfigError
from pipeline.models.encoders import reference_encoder
from pipeline.models.loading import load_clip
from pipeline.models.model import CLIP, CLIPConfig
from pipeline.models.tokenizer import tokenize

__all__ = [
    "TrainConfig",
    "TrainResult",
    "ZeroShotReport",
    "class_prompts",
    "encode_images",
    "encode_prompts",
    "evaluate_multi_object",
    "evaluate_pair_retrieval",
    "evaluate_zero_shot",
    "train",
]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    model: CLIPConfig  # architecture to train
    seed: int = 0  # everything random derives from it
    steps: int = 2000  # optimiser steps (the run may stop earlier at max_seconds)
    batch_size: int = 128  # scenes per step
    lr: float = 1e-3  # peak learning rate (AdamW), after linear warm-up
    warmup: int = 150  # warm-up steps
    weight_decay: float = 0.05  # on matrices only, not on norms, biases, embeddings
    threads: int = 2  # torch intra-op threads (fixed, for reproducibility)
    max_seconds: float = math.inf  # wall-clock budget; cosine schedule is still over `steps`
    p_letterbox: float = 0.15  # share of scenes shown letterboxed, as the decode stage pads
    partial_credit: float = 0.5  # target weight of a caption naming part of a scene's objects
    log_every: int = 50  # steps between progress lines
    variety: float = 0.0  # share of scenes drawn by pipeline.demo.variety (wider rendering)
    photo_negatives: float = 0.0  # share of scenes that are bare photographs ("empty")
    textures: float = 0.0  # share of scenes that are bare procedural textures ("empty")
    decoded: float = 0.0  # share of scenes taken from a pool of H.264-decoded frames
    decoded_pool: int = 1024  # frames in that pool (made once per run, pipeline.demo.decoded)
    render_workers: int = 0  # processes drawing batches ahead of training (0: in this one)
    plain_steps: int = 0  # curriculum: the first steps draw plain generator scenes only
    init: str | None = None  # start from these weights (same architecture) instead of random
    bf16: bool = True  # towers under bfloat16 autocast (logits and loss stay float32)
    class_loss: float = 1.0  # weight of the loss against all class prompts (_class_targets)

    def __post_init__(self) -> None:
        shares = (self.variety, self.photo_negatives, self.textures, self.decoded)
        if not all(0.0 <= x <= 1.0 for x in shares) or sum(shares) > 1.0:
            raise ConfigError(
                "variety, photo_negatives, textures and decoded are shares of a batch: each "
                f"0 to 1 and together at most 1, not {shares!r}"
            )
        if not 0 <= self.plain_steps <= self.steps:
            raise ConfigError(
                f"plain_steps must be 0 to steps ({self.steps}), not {self.plain_steps!r}"
            )
        if not 0.0 <= self.class_loss <= 10.0:
            raise ConfigError(f"class_loss must be 0 to 10, not {self.class_loss!r}")
        if not 0 <= self.render_workers <= 8:
            raise ConfigError(f"render_workers must be 0 to 8, not {self.render_workers!r}")


@dataclass
class TrainResult:
    model: CLIP
    steps: int  # steps actually taken
    seconds: float  # wall-clock training time
    cpu_seconds: float = 0.0  # CPU time of the process while training (all threads)
    losses: list[float] = field(default_factory=list)  # mean loss per log interval


@dataclass
class ZeroShotReport:
    accuracy: float  # top-1 over all images
    n: int  # images evaluated
    per_class: dict[str, tuple[int, int]]  # prompt -> (correct, total)
    by_group: dict[str, float]  # "shapes", "words", "empty" -> accuracy

    def table(self) -> str:
        lines = [f"{'class':<24} {'correct':>8} {'total':>6} {'acc':>6}"]
        for name, (ok, n) in sorted(self.per_class.items()):
            lines.append(f"{name:<24} {ok:>8} {n:>6} {ok / max(n, 1):>6.2f}")
        lines.append(f"{'all':<24} {'':>8} {self.n:>6} {self.accuracy:>6.3f}")
        return "\n".join(lines)


def class_prompts() -> list[str]:
    """The zero-shot classes: every coloured shape, every word, and the empty background."""
    prompts = [scenes.concept_caption(s, c) for s in scenes.SHAPES for c in scenes.COLOURS]
    prompts += [scenes.concept_caption(w) for w in scenes.WORDS]
    prompts.append(scenes.EMPTY_CAPTION)
    return prompts


def _content_key(spec: scenes.SceneSpec) -> tuple[tuple[str, str, int], ...]:
    """What a caption can say about a scene: its objects by concept, colour and count.

    Scenes with equal keys are full positives for each other's captions in the contrastive
    loss (their captions are interchangeable), and a key contained in another is a partial
    one (see :func:`_match_matrix`)."""
    counts: dict[tuple[str, str], int] = {}
    for obj in spec.objects:
        # a word's caption often omits its colour: words match on the word alone
        colour = "" if obj.kind == "word" else obj.colour
        counts[obj.concept, colour] = counts.get((obj.concept, colour), 0) + 1
    return tuple(sorted((c, col, n) for (c, col), n in counts.items()))


def _match_matrix(keys: Sequence[tuple[tuple[str, str, int], ...]], partial: float) -> torch.Tensor:
    """(images, captions) targets before normalising: 1 where the caption describes the scene
    exactly, ``partial`` where it names some of the scene's objects and nothing absent.

    Moderation asks "is there a red triangle in this frame?", so a frame with a red triangle
    and other things must still be close to "a red triangle"; plain contrastive targets
    would push it away."""
    unique = list(dict.fromkeys(keys))
    position = {k: i for i, k in enumerate(unique)}
    index = torch.tensor([position[k] for k in keys])
    have = [{(c, col): n for c, col, n in k} for k in unique]
    table = torch.eye(len(unique))
    for j, caption in enumerate(unique):
        if not caption:
            continue  # "an empty background" describes empty scenes only
        for i, scene in enumerate(have):
            if i != j and all(scene.get((c, col), 0) >= n for c, col, n in caption):
                table[i, j] = partial
    return table[index][:, index]


def _letterbox(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Shrink the scene along one axis and pad with a dark bar, as ``fit=pad`` shows wide or
    tall frames to the model."""
    import cv2

    side = img.shape[0]
    short = int(rng.integers(side * 9 // 16, side * 7 // 8))
    out = np.full_like(img, int(rng.integers(0, 24)))
    off = (side - short) // 2
    if rng.random() < 0.7:  # wide source: bars top and bottom
        out[off : off + short] = cv2.resize(img, (side, short), interpolation=cv2.INTER_AREA)
    else:
        out[:, off : off + short] = cv2.resize(img, (short, side), interpolation=cv2.INTER_AREA)
    return out


_Batch = tuple[np.ndarray, list[str], list[tuple[tuple[str, str, int], ...]]]


@dataclass(frozen=True)
class _Recipe:
    """What every batch is drawn from (sent once to the render process)."""

    cfg: TrainConfig
    size: int
    pool: tuple[np.ndarray, list[scenes.SceneSpec]] | None  # decoded frames and their specs


def _scene(
    rng: np.random.Generator, recipe: _Recipe, step: int
) -> tuple[np.ndarray, scenes.SceneSpec]:
    """One training scene: a photograph, a texture, a decoded frame, a varied or a plain
    rendering, by the recipe's shares; only plain ones during the curriculum's first part
    (``plain_steps``), which learns shapes, colours and words on the generator's clean scenes
    before the wider mix makes them robust."""
    cfg, size = recipe.cfg, recipe.size
    if step < cfg.plain_steps:
        spec = scenes.sample_spec(rng, split="train")
        return scenes.render(spec, size), spec
    u = rng.random()
    if (u := u - cfg.photo_negatives) < 0:
        return variety.photo_negative(rng, size)
    if (u := u - cfg.textures) < 0:
        return variety.texture_negative(rng, size)
    if (u := u - cfg.decoded) < 0 and recipe.pool is not None:
        i = int(rng.integers(len(recipe.pool[1])))
        return recipe.pool[0][i], recipe.pool[1][i]
    spec = scenes.sample_spec(rng, split="train")
    if u - cfg.variety < 0:
        return variety.render_varied(rng, spec, size)
    return scenes.render(spec, size), spec


def _batch(recipe: _Recipe, step: int) -> _Batch:
    """Batch ``step``, from its own seeded generator: the same whoever draws it, in any order."""
    rng = np.random.default_rng([recipe.cfg.seed, 0, step])
    n, size = recipe.cfg.batch_size, recipe.size
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    captions: list[str] = []
    keys: list[tuple[tuple[str, str, int], ...]] = []
    for i in range(n):
        img, spec = _scene(rng, recipe, step)
        images[i] = _letterbox(img, rng) if rng.random() < recipe.cfg.p_letterbox else img
        captions.append(scenes.caption(spec, rng))
        keys.append(_content_key(spec))
    return images, captions, keys


def _class_targets(keys: Sequence[tuple[tuple[str, str, int], ...]]) -> torch.Tensor:
    """(images, classes) targets against :func:`class_prompts`: a scene's weight shared
    equally by the classes of the objects it shows ("an empty background" when none).

    Every image meets all 53 class prompts at every step, so the near misses a batch of
    random captions seldom holds together (a white star beside "a white cross") are always
    there to be told apart; the contrastive loss alone learnt them far more slowly."""
    index = {p: i for i, p in enumerate(class_prompts())}
    out = torch.zeros(len(keys), len(index))
    for row, key in zip(out, keys, strict=True):
        names = {scenes.concept_caption(c, col or None) for c, col, _ in key}
        for name in names or {scenes.EMPTY_CAPTION}:
            row[index[name]] = 1.0 / max(1, len(names))
    return out


# pixels, caption tokens, caption match (_match_matrix), class targets (_class_targets)
_Prepared = tuple[np.ndarray, torch.Tensor, torch.Tensor, torch.Tensor]


def _prepared(recipe: _Recipe, step: int) -> _Prepared:
    """Batch ``step`` as a training step takes it: the scenes, their captions' tokens, the
    match matrix and the class targets. Made where the batch is drawn, so that with a render
    process this work (a twentieth of a step) is done beside training, not in it."""
    images, captions, keys = _batch(recipe, step)
    ctx = recipe.cfg.model.text.context_length
    tokens = tokenize(captions, context_length=ctx, truncate=True)
    match = _match_matrix(keys, recipe.cfg.partial_credit)
    return images, tokens, match, _class_targets(keys)


_WORKER_RECIPE: list[_Recipe] = []  # the render process's recipe, set by its initializer


def _init_worker(recipe: _Recipe) -> None:
    import cv2

    cv2.setNumThreads(1)
    _WORKER_RECIPE[:] = [recipe]


def _worker_batch(step: int) -> _Prepared:
    return _prepared(_WORKER_RECIPE[0], step)


def _batches(recipe: _Recipe, steps: int, workers: int) -> Generator[_Prepared, None, None]:
    """Batches 0, 1, ... in order; with ``workers`` they are drawn ahead in other processes
    while this one trains (each batch has its own seed, so the result is the same)."""
    if workers == 0:
        for step in range(steps):
            yield _prepared(recipe, step)
        return
    ctx = multiprocessing.get_context("spawn")  # no torch or OpenMP state forked
    ex = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(recipe,))
    try:
        ahead = min(steps, 2 * workers + 1)
        pending = deque(ex.submit(_worker_batch, s) for s in range(ahead))
        for step in range(steps):
            batch = pending.popleft().result()
            if step + ahead < steps:
                pending.append(ex.submit(_worker_batch, step + ahead))
            yield batch
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


def _param_groups(model: CLIP, weight_decay: float) -> list[dict[str, object]]:
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, p in model.named_parameters():
        is_matrix = p.ndim >= 2 and "embedding" not in name and name != "text_projection"
        (decay if is_matrix else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def _loss(
    model: CLIP, cfg: TrainConfig, batch: _Prepared, class_tokens: torch.Tensor
) -> torch.Tensor:
    """One step's loss: the symmetric contrastive loss between the batch's images and
    captions (soft targets from the match matrix), plus ``cfg.class_loss`` times the loss of
    every image against all class prompts (:func:`_class_targets`)."""
    images, tokens, match, class_targets = batch
    targets = match / match.sum(dim=1, keepdim=True)  # (images, captions)
    targets_t = (match / match.sum(dim=0, keepdim=True)).t()
    pixels = model.preprocess(torch.from_numpy(images))
    # bfloat16 matrix products and convolutions (AVX-512 BF16 where the CPU has it): a step
    # costs about a quarter less; the similarities are taken in float32, where a learned scale
    # near 100 would otherwise round logits to halves
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
        image_features = model.encode_image(pixels)
        text_features = model.encode_text(
            torch.cat([tokens, class_tokens]) if cfg.class_loss else tokens
        )
    image = F.normalize(image_features.float(), dim=-1)
    text = F.normalize(text_features.float(), dim=-1)
    per_image = model.logit_scale.exp() * image @ text.t()  # captions, then classes
    per_caption, per_class = per_image[:, : len(tokens)], per_image[:, len(tokens) :]
    loss = 0.5 * (
        F.cross_entropy(per_caption, targets) + F.cross_entropy(per_caption.t(), targets_t)
    )
    if cfg.class_loss:
        loss = loss + cfg.class_loss * F.cross_entropy(per_class, class_targets)
    return loss


def train(cfg: TrainConfig, *, progress: Callable[[str], None] | None = None) -> TrainResult:
    """Train a CLIP of ``cfg.model``'s architecture from scratch on synthetic scenes.

    Deterministic for a given config and thread count: scenes come from one seeded NumPy
    generator and weights from one seeded torch generator."""
    say = progress or _log.info
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    model = CLIP(cfg.model)
    model.init_weights(torch.Generator().manual_seed(cfg.seed))
    if cfg.init is not None:  # warm start: spend the budget on the new distribution
        model.load_state_dict(load_clip(cfg.init).state_dict())
    model.train()
    # fused: one pass over each tensor instead of a dozen element-wise ones (a fifth of a step's
    # CPU time went to the optimiser; the token embedding's 3.2 M parameters dominate it)
    opt = torch.optim.AdamW(
        _param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), fused=True
    )

    def lr_at(step: int) -> float:
        if step < cfg.warmup:
            return cfg.lr * (step + 1) / cfg.warmup
        t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))

    size = cfg.model.vision.image_resolution
    start = time.perf_counter()
    cpu_start = time.process_time()
    children_start = resource.getrusage(resource.RUSAGE_CHILDREN)
    pool = None
    if cfg.decoded > 0 and cfg.plain_steps < cfg.steps:
        pool = decoded.decoded_pool(np.random.default_rng([cfg.seed, 1]), cfg.decoded_pool, size)
        say(f"decoded pool: {cfg.decoded_pool} frames in {time.perf_counter() - start:.0f}s")
    batches = _batches(_Recipe(cfg, size, pool), cfg.steps, cfg.render_workers)
    losses: list[float] = []
    window: list[float] = []
    step = 0
    class_tokens = tokenize(class_prompts(), context_length=cfg.model.text.context_length)
    for batch in batches:
        if time.perf_counter() - start > cfg.max_seconds:
            break
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        loss = _loss(model, cfg, batch, class_tokens)
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0.0, math.log(100.0))
        window.append(float(loss.detach()))
        step += 1
        if step % cfg.log_every == 0 or step == cfg.steps:
            losses.append(sum(window) / len(window))
            window.clear()
            say(
                f"step {step}/{cfg.steps} loss {losses[-1]:.3f} lr {lr_at(step - 1):.2e} "
                f"scale {model.logit_scale.exp().item():.1f} "
                f"{time.perf_counter() - start:.0f}s"
            )
    batches.close()  # ends the render processes, so their CPU time is counted
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    child_cpu = (children.ru_utime + children.ru_stime) - (
        children_start.ru_utime + children_start.ru_stime
    )
    model.eval().requires_grad_(False)
    return TrainResult(
        model=model,
        steps=step,
        seconds=time.perf_counter() - start,
        cpu_seconds=time.process_time() - cpu_start + child_cpu,
        losses=losses,
    )


@torch.inference_mode()
def encode_prompts(model: CLIP, prompts: Sequence[str]) -> torch.Tensor:
    tokens = tokenize(list(prompts), context_length=model.context_length, truncate=True)
    return F.normalize(model.encode_text(tokens).float(), dim=-1)


def encode_images(model: CLIP, images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(reference_encoder(model, batch_size=256).encode(images))


def evaluate_zero_shot(model: CLIP, *, n: int = 600, seed: int = 1234) -> ZeroShotReport:
    """Top-1 zero-shot accuracy on held-out single-object scenes (and empty backgrounds)
    among :func:`class_prompts`. Every object forms a (concept, colour, background) triple
    the training split never shows."""
    rng = np.random.default_rng(seed)
    size = model.input_resolution
    prompts = class_prompts()
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    truth: list[str] = []
    n_empty = max(1, n // 20)
    for i in range(n):
        if i < n_empty:  # empty backgrounds have no held-out triple; any unseen seed will do
            spec = scenes.SceneSpec(
                background=scenes.sample_spec(rng, split="train", p_empty=1.0).background
            )
        else:
            spec = scenes.sample_single_object_spec(rng, split="heldout")
        images[i] = scenes.render(spec, size)
        truth.append(scenes.canonical_caption(spec.primary))
    sims = encode_images(model, images) @ encode_prompts(model, prompts).t()
    pred = [prompts[j] for j in sims.argmax(dim=1).tolist()]
    per_class: dict[str, tuple[int, int]] = {}
    groups: dict[str, list[bool]] = {"shapes": [], "words": [], "empty": []}
    for p, t in zip(pred, truth, strict=True):
        ok, total = per_class.get(t, (0, 0))
        per_class[t] = (ok + (p == t), total + 1)
        group = (
            "empty"
            if t == scenes.EMPTY_CAPTION
            else ("words" if t.startswith("the word") else "shapes")
        )
        groups[group].append(p == t)
    correct = sum(ok for ok, _ in per_class.values())
    return ZeroShotReport(
        accuracy=correct / n,
        n=n,
        per_class=per_class,
        by_group={k: sum(v) / len(v) for k, v in groups.items() if v},
    )


def evaluate_pair_retrieval(
    model: CLIP, *, per_pair: int = 20, seed: int = 4321
) -> dict[tuple[str, str], float]:
    """For every (shape, colour) pair: the share of its held-out images on which its caption
    ranks first among the captions of all 48 pairs."""
    rng = np.random.default_rng(seed)
    size = model.input_resolution
    pairs = [(s, c) for s in scenes.SHAPES for c in scenes.COLOURS]
    prompts = [scenes.concept_caption(s, c) for s, c in pairs]
    images = np.empty((len(pairs) * per_pair, size, size, 3), dtype=np.uint8)
    for i, (s, c) in enumerate(pairs):
        for j in range(per_pair):
            spec = scenes.sample_single_object_spec(rng, split="heldout", concept=s, colour=c)
            images[i * per_pair + j] = scenes.render(spec, size)
    best = (encode_images(model, images) @ encode_prompts(model, prompts).t()).argmax(dim=1)
    hits = (best.view(len(pairs), per_pair) == torch.arange(len(pairs))[:, None]).float()
    return {pair: float(h) for pair, h in zip(pairs, hits.mean(dim=1).tolist(), strict=True)}


def evaluate_multi_object(model: CLIP, *, n: int = 300, seed: int = 999) -> float:
    """On held-out scenes with two or three different objects: the share of present objects
    whose plain caption ranks within the top k of :func:`class_prompts` (k = objects in the
    scene), i.e. how well the model says what a busy frame contains."""
    rng = np.random.default_rng(seed)
    size = model.input_resolution
    prompts = class_prompts()
    specs: list[scenes.SceneSpec] = []
    while len(specs) < n:
        spec = scenes.sample_spec(rng, split="heldout", p_repeat=0.0, p_occlusion=0.0)
        present = {scenes.canonical_caption(o) for o in spec.objects}
        if len(spec.objects) >= 2 and len(present) == len(spec.objects):
            specs.append(spec)
    images = np.stack([scenes.render(s, size) for s in specs])
    sims = encode_images(model, images) @ encode_prompts(model, prompts).t()
    hits = total = 0
    for spec, row in zip(specs, sims, strict=True):
        present = {scenes.canonical_caption(o) for o in spec.objects}
        top = {prompts[j] for j in row.topk(len(present)).indices.tolist()}
        hits += len(present & top)
        total += len(present)
    return hits / total
