"""Scoring frames against a compiled policy set: run time only, NumPy only.

A policy set compiles (:mod:`pipeline.policies.compile`), once per model, into one matrix of
unit rows: for every label its prompt ensemble (each prompt in each template, plus exemplar
images, averaged and re-normalised), its negatives, and each of its prompts on its own.
Scoring a batch of frame embeddings is then one normalise and one matrix product; the
decisions read their columns:

- ``cosine``: cosine of the frame with the label's ensemble;
- ``margin``: ``cosine`` minus the best negative's cosine (when the label has negatives);
- ``probability``: softmax of the label against its negatives at the model's logit scale;
- ``sigmoid``: ``sigmoid(logit_scale * cosine + logit_bias)``, the probability a SigLIP model
  gives the label's ensemble on its own (models with a logit bias only);
- ``top_prompt``: the single prompt of the label closest to the frame (why it scored).

A label's ``score`` is the value its rule judges, in the model's own unit (the score kind):
the cosine for a ``threshold`` rule, the softmax probability for a ``probability`` rule, the
sigmoid probability for a ``sigmoid`` rule. It passes when the score reaches the rule's cutoff
and, when a ``margin`` is set, the margin is at least that.

:meth:`CompiledPolicies.evaluate` computes all of it for a whole batch at once, one array per
quantity (frames down, labels across), so a backtest over millions of stored frames costs a
matrix product and a few vector operations; :meth:`CompiledPolicies.decisions` turns those
arrays into one :class:`Decision` per frame and label for the temporal rules.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from pipeline.events import HashMatchInfo

__all__ = [
    "Action",
    "CompiledLabel",
    "CompiledPolicies",
    "Decision",
    "DecisionKind",
    "FrameScores",
    "Mode",
    "ScoreKind",
    "Severity",
    "unit_rows",
]

Severity = Literal["low", "medium", "high", "critical"]
Action = Literal["flag", "review", "block"]
Mode = Literal["enforce", "shadow"]
ScoreKind = Literal["cosine", "softmax", "sigmoid"]
#: What a decision's score is: a CLIP label's score kind, or a hash policy's PDQ similarity
#: (``1 - distance / 256``; :mod:`pipeline.policies.hashing`).
DecisionKind = Literal["cosine", "softmax", "sigmoid", "pdq"]
_F32 = npt.NDArray[np.float32]


@dataclass(frozen=True)
class CompiledLabel:
    """One label of a compiled set: where its rows are, its rule, and its policy's facts."""

    policy: str  # policy id
    label: str  # label name
    key: str  # "policy/label", as in output records
    version: int  # the policy's version
    severity: Severity
    action: Action
    mode: Mode  # "shadow": scored and counted, never flagged
    row: int  # the ensemble's row in the matrix
    negative_rows: tuple[int, ...]  # rows of its negatives
    prompt_rows: tuple[int, ...]  # rows of its single prompts (same order as `prompts`)
    prompts: tuple[str, ...]
    threshold: float | None
    probability: float | None
    margin: float | None
    sigmoid: float | None = None

    @property
    def enforce(self) -> bool:
        return self.mode == "enforce"

    @property
    def kind(self) -> ScoreKind:
        """The score its rule judges."""
        if self.threshold is not None:
            return "cosine"
        return "softmax" if self.probability is not None else "sigmoid"

    @property
    def cutoff(self) -> float:
        """The score it must reach."""
        for value in (self.threshold, self.probability, self.sigmoid):
            if value is not None:
                return value
        raise ValueError(f"label {self.key} has no rule")


@dataclass(frozen=True)
class Decision:
    """One label on one frame: whether it passed, and the numbers that decided it."""

    key: str
    passed: bool
    score: float  # in the unit of its rule (kind)
    threshold: float | None  # the cutoff its rule compared the score with
    probability: float | None  # softmax probability against the negatives, if it has any
    margin: float | None  # cosine minus the best negative's cosine, if it has negatives
    top_prompt: str
    kind: DecisionKind = "cosine"
    cosine: float | None = None  # the cosine with the label's ensemble
    match: HashMatchInfo | None = None  # hash policies: the entry matched (None: no match)


@dataclass(frozen=True, eq=False)
class FrameScores:
    """A batch scored: one row per frame, one column per label (the set's label order).

    ``margin`` and ``probability`` are NaN for labels without negatives; ``top_prompt`` is an
    index into the label's ``prompts``."""

    cosines: _F32  # (B, rows) cosine of every frame with every row of the matrix
    cosine: _F32  # (B, L) cosine of each label's ensemble
    score: _F32  # (B, L) each label's score in its rule's unit
    margin: _F32  # (B, L)
    probability: _F32  # (B, L)
    passed: npt.NDArray[np.bool_]  # (B, L)
    top_prompt: npt.NDArray[np.intp]  # (B, L)

    def __len__(self) -> int:
        return int(self.score.shape[0])


def unit_rows(x: Any) -> _F32:
    """Rows scaled to unit length, as float32 (a torch tensor on the CPU is accepted)."""
    a = np.asarray(x, dtype=np.float32)
    if a.ndim != 2:
        raise ValueError(f"expected a 2-d array of row vectors, got shape {a.shape}")
    norms = np.linalg.norm(a, axis=1, keepdims=True)
    out: _F32 = (a / np.maximum(norms, np.float32(1e-12))).astype(np.float32, copy=False)
    return out


@dataclass(frozen=True, eq=False)
class CompiledPolicies:
    """A policy set compiled for one model: the matrix of unit rows and its labels."""

    matrix: _F32  # (rows, E) unit rows, float32
    labels: tuple[CompiledLabel, ...]
    logit_scale: float
    policy_set: str  # digest of the policies it was compiled from
    logit_bias: float | None = None  # SigLIP models: sigmoid(scale * cos + bias) per label

    def label(self, key: str) -> CompiledLabel:
        """The label named ``"policy/label"``; KeyError if the set has none."""
        for lab in self.labels:
            if lab.key == key:
                return lab
        raise KeyError(key)

    def select(self, policy_ids: Iterable[str], *, policy_set: str) -> CompiledPolicies:
        """Only the labels of ``policy_ids`` (the same matrix: nothing is recompiled)."""
        wanted = set(policy_ids)
        return replace(
            self,
            labels=tuple(lab for lab in self.labels if lab.policy in wanted),
            policy_set=policy_set,
        )

    def cosines(self, embeddings: Any) -> _F32:
        """(B, E) image embeddings (any scale) -> (B, rows) cosines, with one matmul."""
        image = unit_rows(embeddings)
        if image.shape[1] != self.matrix.shape[1]:
            raise ValueError(
                f"embeddings of size {image.shape[1]} for policies compiled at size "
                f"{self.matrix.shape[1]} (another model?)"
            )
        out: _F32 = image @ self.matrix.T
        return out

    def evaluate(self, embeddings: Any) -> FrameScores:
        """Every label's score, margin, probability, pass and top prompt on every frame."""
        return self.evaluate_cosines(self.cosines(embeddings))

    def evaluate_cosines(
        self,
        c: _F32,
        *,
        probability: bool = True,
        shared: dict[tuple[Any, ...], tuple[_F32, _F32, _F32, Any]] | None = None,
        details: bool = True,
    ) -> FrameScores:
        """:meth:`evaluate` from the (B, rows) cosines of the frames with the matrix's rows
        (for callers that compute several sets' cosines in one product). ``probability=False``
        leaves the probability NaN where the score is not that probability (the softmax is
        the costliest step; a backtest reads only scores, margins, passes and top prompts).
        ``shared``: a dict the caller passes to every call on the same ``c`` (a backtest
        scores the edited set and the stored one on the same cosines); a label reading the
        same rows with the same rule kind as one scored before takes its score, margin,
        probability and top prompt from there, and only its pass is computed. ``details=False``:
        scores only (from the label's row, and its negatives for a softmax), margins NaN and
        top prompts 0 (unless the score needed them), and ``passed`` the score reaching the
        cutoff, the margin rule not applied: a backtest finds the few frames that reach a
        cutoff this way, then scores those alone in full (their margins, passes, top
        prompts), so the other rows' cosines are never computed for most frames."""
        frames, count = c.shape[0], len(self.labels)
        cosine = np.empty((frames, count), dtype=np.float32)
        score = np.empty((frames, count), dtype=np.float32)
        margin = np.full((frames, count), np.nan, dtype=np.float32)
        prob = np.full((frames, count), np.nan, dtype=np.float32)
        passed = np.empty((frames, count), dtype=bool)
        top = np.empty((frames, count), dtype=np.intp)
        for j, lab in enumerate(self.labels):
            s = c[:, lab.row]
            cosine[:, j] = s
            key = (
                lab.row,
                lab.negative_rows,
                lab.prompt_rows,
                lab.kind,
                self.logit_scale,
                self.logit_bias,
                probability or lab.kind == "softmax",
                details,
            )
            known = None if shared is None else shared.get(key)
            if known is not None:
                score[:, j], margin[:, j], prob[:, j], top[:, j] = known
            else:
                wanted = (probability, details)
                self._label_arrays(lab, c, s, wanted, j, (score, margin, prob, top))
                if shared is not None:
                    shared[key] = (score[:, j], margin[:, j], prob[:, j], top[:, j])
            ok = score[:, j] >= lab.cutoff
            if lab.margin is not None and details:
                ok &= margin[:, j] >= lab.margin  # NaN (no negatives) compares False
            passed[:, j] = ok
        return FrameScores(
            cosines=c,
            cosine=cosine,
            score=score,
            margin=margin,
            probability=prob,
            passed=passed,
            top_prompt=top,
        )

    def _label_arrays(
        self,
        lab: CompiledLabel,
        c: _F32,
        s: _F32,
        wanted: tuple[bool, bool],
        j: int,
        out: tuple[_F32, _F32, _F32, Any],
    ) -> None:
        """Label ``lab``'s score, margin, probability and top prompt into column ``j``
        (``wanted``: the probability, the details; see :meth:`evaluate_cosines`)."""
        score, margin, prob, top = out
        probability, details = wanted
        if lab.negative_rows and (details or probability or lab.kind == "softmax"):
            negs = c[:, list(lab.negative_rows)]  # (B, negatives)
            margin[:, j] = s - negs.max(axis=1)
            if probability or lab.kind == "softmax":
                prob[:, j] = _softmax_first(self.logit_scale, s, negs)
        score[:, j] = self._score(lab, s, prob[:, j])
        if len(lab.prompt_rows) == 1 or not details:
            top[:, j] = 0
        else:
            top[:, j] = np.argmax(c[:, list(lab.prompt_rows)], axis=1)

    def _score(self, lab: CompiledLabel, cosine: _F32, softmax: _F32) -> _F32:
        if lab.kind == "cosine":
            return cosine
        if lab.kind == "softmax":
            return softmax
        if self.logit_bias is None:
            raise ValueError(f"label {lab.key} has a sigmoid rule; the model has no logit bias")
        logits = self.logit_scale * cosine.astype(np.float64) + self.logit_bias
        out: _F32 = (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)
        return out

    def decisions(self, scores: FrameScores) -> list[list[Decision]]:
        """Per frame, one :class:`Decision` per label, from :meth:`evaluate`'s arrays."""
        out: list[list[Decision]] = []
        for i in range(len(scores)):
            row: list[Decision] = []
            for j, lab in enumerate(self.labels):
                m, p = float(scores.margin[i, j]), float(scores.probability[i, j])
                row.append(
                    Decision(
                        key=lab.key,
                        passed=bool(scores.passed[i, j]),
                        score=float(scores.score[i, j]),
                        threshold=lab.cutoff,
                        probability=None if np.isnan(p) else p,
                        margin=None if np.isnan(m) else m,
                        top_prompt=lab.prompts[int(scores.top_prompt[i, j])],
                        kind=lab.kind,
                        cosine=float(scores.cosine[i, j]),
                    )
                )
            out.append(row)
        return out

    def decide(self, embeddings: Any) -> list[list[Decision]]:
        """:meth:`evaluate` then :meth:`decisions`."""
        return self.decisions(self.evaluate(embeddings))


def _softmax_first(scale: float, first: _F32, others: _F32) -> _F32:
    """Softmax at ``scale`` of ``first`` against each row of ``others``: its probability."""
    logits = scale * np.concatenate([first[:, None], others], axis=1).astype(np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    weights = np.exp(logits)
    out: _F32 = (weights[:, 0] / weights.sum(axis=1)).astype(np.float32)
    return out
