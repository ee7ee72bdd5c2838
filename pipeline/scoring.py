"""Policy compilation and frame scoring.

A policy set compiles, once per model, into one matrix of unit rows: for every label its
prompt ensemble (each prompt in each template, plus exemplar images, averaged and
re-normalised), its negatives, and each of its prompts on its own. Scoring a batch of frame
embeddings is then one normalise and one matrix product; the decisions read their columns:

- ``score``: cosine of the frame with the label's ensemble;
- ``margin``: ``score`` minus the best negative's cosine (when the label has negatives);
- ``probability``: softmax of the label against its negatives at the model's logit scale;
- ``top_prompt``: the single prompt of the label closest to the frame (why it scored).

A label passes when its rule holds (``threshold`` on the score, or ``probability``) and, when
a ``margin`` is set, the margin is at least that.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.policy import LoadedPolicy, PolicySet

__all__ = [
    "CompiledLabel",
    "CompiledPolicies",
    "Decision",
    "LabelRows",
    "PolicyBlock",
    "compile_policies",
    "compile_policy",
]

TextEncoder = Callable[[Sequence[str]], torch.Tensor]
ExemplarEncoder = Callable[[Sequence[str]], torch.Tensor]  # image paths -> embeddings


@dataclass(frozen=True)
class CompiledLabel:
    policy: str  # policy id
    label: str  # label name
    key: str  # "policy/label", as in output records
    row: int  # the ensemble's row in the matrix
    negative_rows: tuple[int, ...]  # rows of its negatives
    prompt_rows: tuple[int, ...]  # rows of its single prompts (same order as `prompts`)
    prompts: tuple[str, ...]
    threshold: float | None
    probability: float | None
    margin: float | None
    enforce: bool  # False for shadow policies: scored and counted, never flagged


@dataclass(frozen=True)
class Decision:
    key: str
    passed: bool
    score: float
    threshold: float | None
    probability: float | None  # softmax probability against the negatives, if it has any
    margin: float | None  # score minus the best negative's score, if it has negatives
    top_prompt: str


@dataclass
class CompiledPolicies:
    matrix: torch.Tensor  # (rows, E) unit rows, float32
    labels: list[CompiledLabel]
    logit_scale: float
    policy_set: str  # digest of the policies it was compiled from

    def scores(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(B, E) image embeddings -> (B, rows) cosines, with one matmul."""
        image = F.normalize(embeddings.float(), dim=-1)
        return image @ self.matrix.to(image.device).t()

    def decide(self, cosines: torch.Tensor) -> list[list[Decision]]:
        """Per frame, one decision per label, from the (B, rows) cosines."""
        c = cosines.detach().float().cpu().numpy()
        out: list[list[Decision]] = []
        for frame in c:
            decisions = []
            for lab in self.labels:
                score = float(frame[lab.row])
                margin = prob = None
                if lab.negative_rows:
                    negs = frame[list(lab.negative_rows)]
                    margin = score - float(negs.max())
                    logits = self.logit_scale * np.concatenate([[score], negs])
                    logits -= logits.max()
                    prob = float(np.exp(logits[0]) / np.exp(logits).sum())
                if lab.threshold is not None:
                    passed = score >= lab.threshold
                else:
                    passed = (
                        prob is not None
                        and lab.probability is not None
                        and (prob >= lab.probability)
                    )
                if lab.margin is not None:
                    passed = passed and margin is not None and margin >= lab.margin
                best = int(np.argmax(frame[list(lab.prompt_rows)]))
                decisions.append(
                    Decision(
                        key=lab.key,
                        passed=bool(passed),
                        score=score,
                        threshold=lab.threshold,
                        probability=prob,
                        margin=margin,
                        top_prompt=lab.prompts[best],
                    )
                )
            out.append(decisions)
        return out


def _unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.float(), dim=-1)


@dataclass(frozen=True)
class LabelRows:
    """Where one label's rows sit inside its policy's block of the matrix."""

    name: str
    row: int  # the ensemble
    negative_rows: tuple[int, ...]
    prompt_rows: tuple[int, ...]
    prompts: tuple[str, ...]


@dataclass(frozen=True)
class PolicyBlock:
    """One policy compiled for one model: its rows of the matrix and their layout."""

    matrix: torch.Tensor  # (rows, E) unit rows, float32, on the CPU
    labels: tuple[LabelRows, ...]


def compile_policy(
    lp: LoadedPolicy,
    encode_text: TextEncoder,
    encode_images: ExemplarEncoder | None = None,
) -> PolicyBlock:
    """Encode one policy's prompts, negatives and exemplars into its block of rows.

    Per label: the ensemble row (every prompt in every template, and exemplar images, each
    normalised, averaged, re-normalised), then its negatives, then each prompt alone."""
    rows: list[torch.Tensor] = []
    layout: list[LabelRows] = []
    n = 0
    with torch.no_grad():
        for label in lp.policy.labels:
            texts = label.texts()
            prompt_emb = _unit(encode_text(texts))  # (P, E)
            members = [prompt_emb]
            if label.exemplars:
                if encode_images is None:
                    raise ValueError(f"{lp.path}: exemplars need an image encoder")
                members.append(_unit(encode_images([str(lp.resolve(e)) for e in label.exemplars])))
            ensemble = _unit(torch.cat(members).mean(dim=0, keepdim=True))  # (1, E)
            negatives = (
                _unit(encode_text(label.negative_texts()))
                if label.negatives
                else prompt_emb.new_zeros(0, prompt_emb.shape[1])
            )
            layout.append(
                LabelRows(
                    name=label.name,
                    row=n,
                    negative_rows=tuple(range(n + 1, n + 1 + len(negatives))),
                    prompt_rows=tuple(
                        range(n + 1 + len(negatives), n + 1 + len(negatives) + len(texts))
                    ),
                    prompts=tuple(texts),
                )
            )
            rows += [ensemble, negatives, prompt_emb]
            n += 1 + len(negatives) + len(texts)
    return PolicyBlock(matrix=torch.cat(rows).cpu().contiguous(), labels=tuple(layout))


def compile_policies(
    policies: PolicySet,
    encode_text: TextEncoder,
    *,
    logit_scale: float,
    encode_images: ExemplarEncoder | None = None,
    compile_one: Callable[[LoadedPolicy], PolicyBlock] | None = None,
) -> CompiledPolicies:
    """Compile every policy (through ``compile_one``, e.g. a cache, when given) into one
    matrix."""
    blocks: list[torch.Tensor] = []
    labels: list[CompiledLabel] = []
    offset = 0
    for lp in policies:
        if compile_one is not None:
            block = compile_one(lp)
        else:
            block = compile_policy(lp, encode_text, encode_images)
        for rows in block.labels:
            label = lp.policy.label(rows.name)
            labels.append(
                CompiledLabel(
                    policy=lp.policy.id,
                    label=label.name,
                    key=f"{lp.policy.id}/{label.name}",
                    row=offset + rows.row,
                    negative_rows=tuple(offset + r for r in rows.negative_rows),
                    prompt_rows=tuple(offset + r for r in rows.prompt_rows),
                    prompts=rows.prompts,
                    threshold=label.threshold,
                    probability=label.probability,
                    margin=label.margin,
                    enforce=lp.policy.mode == "enforce",
                )
            )
        blocks.append(block.matrix)
        offset += len(block.matrix)
    return CompiledPolicies(
        matrix=torch.cat(blocks).contiguous(),
        labels=labels,
        logit_scale=logit_scale,
        policy_set=policies.digest,
    )
