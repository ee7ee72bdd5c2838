"""Compiling policies for a model: prompts, negatives and exemplars to a matrix of unit rows.

Each policy compiles to its own block of rows: per label, the ensemble row (every prompt in
every template, and the exemplar images, each normalised, averaged and re-normalised), then
its negatives, then each prompt alone. The blocks of a policy set are stacked into one
:class:`~pipeline.policies.score.CompiledPolicies`, and with the policies and their temporal
rules make the immutable :class:`~pipeline.policies.snapshot.PolicySet` that scoring reads.

Blocks are cached on disk under a key made of the model's name and weights SHA-256, the
embedding size, the exact text of every prompt, template and negative, and the bytes of every
exemplar image. A worker that starts with a warm cache never runs the text encoder; editing
one policy recompiles only that policy (its key changes, the others' do not).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
import torch

from pipeline.decode import DecodeOptions, DecodePool, InputAccess, Limits
from pipeline.decode.access import open_input_file
from pipeline.errors import DecodeError, PolicyError
from pipeline.models.base import ImageTextModel
from pipeline.models.registry import cache_dir as _model_cache_dir
from pipeline.policies.schema import MAX_MEDIA_BYTES, LoadedPolicies, LoadedPolicy
from pipeline.policies.score import CompiledLabel, CompiledPolicies, unit_rows
from pipeline.policies.snapshot import PolicySet

__all__ = ["LabelRows", "PolicyBlock", "PolicyCompiler", "default_cache_dir"]


def _media_sha256(lp: LoadedPolicy, relative: str) -> str:
    """SHA-256 of a policy's media file, read in chunks: inside the policy's folder, a regular
    file, within :data:`~pipeline.policies.schema.MAX_MEDIA_BYTES`."""
    path = lp.resolve(relative)
    try:
        handle, _size = open_input_file(
            path, lp.media_access(), limit=MAX_MEDIA_BYTES, label=f"exemplar {relative}"
        )
    except DecodeError as e:
        raise PolicyError(f"{lp.path}: {e}") from e
    digest = hashlib.sha256()
    with handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


_log = logging.getLogger(__name__)
_FORMAT: Final = 1  # bump when the block layout changes: old cache entries are then ignored
_F32 = npt.NDArray[np.float32]


def default_cache_dir() -> Path:
    """``$CLIPGUARD_POLICY_CACHE``, else ``policies/`` beside the model weights cache."""
    override = os.environ.get("CLIPGUARD_POLICY_CACHE")
    return Path(override) if override else _model_cache_dir().parent / "policies"


@dataclass(frozen=True)
class LabelRows:
    """Where one label's rows sit inside its policy's block of the matrix."""

    name: str
    row: int  # the ensemble
    negative_rows: tuple[int, ...]
    prompt_rows: tuple[int, ...]
    prompts: tuple[str, ...]


@dataclass(frozen=True, eq=False)
class PolicyBlock:
    """One policy compiled for one model: its rows of the matrix and their layout."""

    matrix: _F32  # (rows, E) unit rows, float32
    labels: tuple[LabelRows, ...]


class PolicyCompiler:
    """Compiles policies for one model; ``hits`` and ``misses`` count cache use."""

    def __init__(
        self, model: ImageTextModel, *, cache_dir: Path | None = None, use_cache: bool = True
    ):
        self.model = model
        self.cache_dir = cache_dir or default_cache_dir()
        self.use_cache = use_cache
        self.hits = 0
        self.misses = 0

    # -- encoders --------------------------------------------------------------------------

    def encode_text(self, texts: Sequence[str]) -> _F32:
        """Unit text embeddings, one row per text (tokenized as the model was trained: CLIP's
        BPE, or a SigLIP checkpoint's own tokenizer with its padding)."""
        tokens = self.model.tokenize(list(texts), truncate=True)
        with torch.inference_mode():
            emb = self.model.encode_text(tokens.to(self.model.device)).float().cpu()
        return unit_rows(emb)

    def encode_images(
        self, paths: Sequence[str | Path], *, access: InputAccess | None = None
    ) -> _F32:
        """Unit embeddings of exemplar images, decoded and fitted to the model input exactly
        as frames are, in a sandboxed decode process (a policy author's file is untrusted
        input); ``access``: where they may be (the policy's folder), each at most
        :data:`~pipeline.policies.schema.MAX_MEDIA_BYTES`."""
        frames = []
        options = DecodeOptions(size=self.model.input_resolution)
        with DecodePool(1, limits=Limits(max_input_bytes=MAX_MEDIA_BYTES)) as pool:
            for p in paths:
                try:
                    result = pool.decode_uri(p, options, access=access)
                except DecodeError as e:
                    raise PolicyError(f"{p}: exemplar image cannot be read: {e}") from e
                frames.append(result.frames[0].image)
        from pipeline.models.encoders import reference_encoder

        return unit_rows(reference_encoder(self.model).encode(frames))

    # -- one policy ------------------------------------------------------------------------

    def block(self, lp: LoadedPolicy) -> PolicyBlock:
        """Encode one policy's prompts, negatives and exemplars into its block of rows (no
        cache)."""
        rows: list[_F32] = []
        layout: list[LabelRows] = []
        n = 0
        for label in lp.policy.labels:
            texts = label.texts()
            prompts = self.encode_text(texts)  # (P, E)
            members = [prompts]
            if label.exemplars:
                paths = [lp.resolve(e) for e in label.exemplars]
                members.append(self.encode_images(paths, access=lp.media_access()))
            ensemble = unit_rows(np.concatenate(members).mean(axis=0, keepdims=True))  # (1, E)
            negatives = (
                self.encode_text(label.negative_texts())
                if label.negatives
                else np.zeros((0, prompts.shape[1]), dtype=np.float32)
            )
            first_prompt = n + 1 + len(negatives)
            layout.append(
                LabelRows(
                    name=label.name,
                    row=n,
                    negative_rows=tuple(range(n + 1, first_prompt)),
                    prompt_rows=tuple(range(first_prompt, first_prompt + len(texts))),
                    prompts=tuple(texts),
                )
            )
            rows += [ensemble, negatives, prompts]
            n = first_prompt + len(texts)
        matrix = np.ascontiguousarray(np.concatenate(rows), dtype=np.float32)
        return PolicyBlock(matrix=matrix, labels=tuple(layout))

    def compile_one(self, lp: LoadedPolicy) -> PolicyBlock:
        """:meth:`block`, through the on-disk cache."""
        path = self.cache_dir / f"{self.key(lp)}.safetensors" if self.use_cache else None
        if path is not None and path.is_file() and (cached := _load(path)) is not None:
            self.hits += 1
            return cached
        self.misses += 1
        block = self.block(lp)
        if path is not None:
            _store(path, block)
        _log.info(
            "compiled policy %s (%d rows) for %s", lp.policy.id, len(block.matrix), self.model.name
        )
        return block

    # -- a set -----------------------------------------------------------------------------

    def compile(self, policies: LoadedPolicies) -> PolicySet:
        """Every policy (through the cache) stacked into one matrix, as a :class:`PolicySet`
        (hash policies pass through: they have no rows). :class:`PolicyError` when a rule is
        one the model cannot produce."""
        self.check_rules(policies)
        blocks: list[_F32] = []
        labels: list[CompiledLabel] = []
        offset = 0
        for lp in policies:
            block = self.compile_one(lp)
            p = lp.policy
            for rows in block.labels:
                label = p.label(rows.name)
                labels.append(
                    CompiledLabel(
                        policy=p.id,
                        label=label.name,
                        key=f"{p.id}/{label.name}",
                        version=p.version,
                        severity=p.severity,
                        action=p.action,
                        mode=p.mode,
                        row=offset + rows.row,
                        negative_rows=tuple(offset + r for r in rows.negative_rows),
                        prompt_rows=tuple(offset + r for r in rows.prompt_rows),
                        prompts=rows.prompts,
                        threshold=label.threshold,
                        probability=label.probability,
                        margin=label.margin,
                        sigmoid=label.sigmoid,
                    )
                )
            blocks.append(block.matrix)
            offset += len(block.matrix)
        bias = self.model.logit_bias
        if not blocks:  # only hash policies: a matrix of no rows
            blocks.append(np.zeros((0, self.model.embed_dim), dtype=np.float32))
        compiled = CompiledPolicies(
            matrix=np.ascontiguousarray(np.concatenate(blocks)),
            labels=tuple(labels),
            logit_scale=float(self.model.logit_scale.detach().exp()),
            policy_set=policies.digest,
            logit_bias=None if bias is None else float(bias.detach()),
        )
        return PolicySet.of(policies, compiled)

    def check_rules(self, policies: LoadedPolicies) -> None:
        """:class:`PolicyError` when a label's rule is one the model cannot produce (a
        ``sigmoid`` rule needs a model with a logit bias: SigLIP)."""
        if self.model.logit_bias is not None:
            return
        wrong = [
            f"{lp.path}: label {label.name!r}: a sigmoid rule needs a SigLIP model; "
            f"{self.model.name} is a {self.model.family} model (use threshold or probability)"
            for lp in policies
            for label in lp.policy.labels
            if label.rule == "sigmoid"
        ]
        if wrong:
            raise PolicyError("\n".join(wrong))

    # -- cache -----------------------------------------------------------------------------

    def key(self, lp: LoadedPolicy) -> str:
        """What the policy's block depends on, hashed."""
        labels = []
        for label in lp.policy.labels:
            exemplars = []
            for e in label.exemplars:
                exemplars.append(_media_sha256(lp, e))
            labels.append(
                {
                    "name": label.name,
                    "texts": label.texts(),
                    "negatives": label.negative_texts(),
                    "exemplars": exemplars,
                }
            )
        blob = json.dumps(
            {
                "format": _FORMAT,
                "model": self.model.name,
                "weights": self.model.fingerprint(),
                "embed_dim": self.model.embed_dim,
                "labels": labels,
            },
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()


def _load(path: Path) -> PolicyBlock | None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="np") as fh:
            meta = json.loads((fh.metadata() or {})["layout"])
            matrix = np.ascontiguousarray(fh.get_tensor("matrix"), dtype=np.float32)
        labels = tuple(
            LabelRows(
                name=d["name"],
                row=d["row"],
                negative_rows=tuple(d["negative_rows"]),
                prompt_rows=tuple(d["prompt_rows"]),
                prompts=tuple(d["prompts"]),
            )
            for d in meta
        )
    except Exception as e:  # any unreadable entry is recompiled, never fatal
        _log.warning("ignoring unreadable policy cache entry %s: %s", path, e)
        return None
    return PolicyBlock(matrix=matrix, labels=labels)


def _store(path: Path, block: PolicyBlock) -> None:
    from safetensors.numpy import save_file

    layout = [
        {
            "name": r.name,
            "row": r.row,
            "negative_rows": list(r.negative_rows),
            "prompt_rows": list(r.prompt_rows),
            "prompts": list(r.prompts),
        }
        for r in block.labels
    ]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        save_file({"matrix": block.matrix}, str(tmp), metadata={"layout": json.dumps(layout)})
        tmp.replace(path)
    except OSError as e:  # a read-only cache slows start-up; it does not stop scoring
        _log.warning("cannot write policy cache entry %s: %s", path, e)
