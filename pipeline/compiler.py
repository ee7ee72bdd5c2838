"""Compiling a policy set for a model, with an on-disk cache.

Each policy compiles to its own block of rows (:func:`pipeline.scoring.compile_policy`), cached
under a key made of the model's name and weights SHA-256, the embedding size, the exact text
of every prompt, template and negative, and the bytes of every exemplar image. A worker that
starts with a warm cache never runs the text encoder; editing one policy recompiles only that
policy (its key changes, the others' do not).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from pipeline.decode import DecodeOptions, decode_uri
from pipeline.encoder import Encoder
from pipeline.errors import DecodeError, PolicyError
from pipeline.models.model import CLIP
from pipeline.models.registry import cache_dir as _model_cache_dir
from pipeline.models.tokenizer import tokenize
from pipeline.policy import LoadedPolicy, PolicySet, load_policies, policy_files
from pipeline.scoring import (
    CompiledPolicies,
    LabelRows,
    PolicyBlock,
    compile_policies,
    compile_policy,
)

__all__ = ["PolicyCompiler", "PolicyStore", "default_cache_dir"]

_log = logging.getLogger(__name__)
_FORMAT = 1  # bump when the block layout changes: old cache entries are then ignored


def default_cache_dir() -> Path:
    """``$CLIPGUARD_POLICY_CACHE``, else ``policies/`` beside the model weights cache."""
    override = os.environ.get("CLIPGUARD_POLICY_CACHE")
    return Path(override) if override else _model_cache_dir().parent / "policies"


class PolicyCompiler:
    """Compiles policy sets for one model; ``hits`` and ``misses`` count cache use."""

    def __init__(self, model: CLIP, *, cache_dir: Path | None = None, use_cache: bool = True):
        self.model = model
        self.cache_dir = cache_dir or default_cache_dir()
        self.use_cache = use_cache
        self.hits = 0
        self.misses = 0

    # -- encoders --------------------------------------------------------------------------

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        tokens = tokenize(list(texts), context_length=self.model.context_length, truncate=True)
        with torch.inference_mode():
            return self.model.encode_text(tokens.to(self.model.device)).float().cpu()

    def encode_images(self, paths: Sequence[str]) -> torch.Tensor:
        """Exemplar images, decoded and fitted to the model input exactly as frames are."""
        frames = []
        for p in paths:
            try:
                result = decode_uri(p, DecodeOptions(size=self.model.input_resolution))
            except DecodeError as e:
                raise PolicyError(f"{p}: exemplar image cannot be read: {e}") from e
            frames.append(result.frames[0].image)
        return Encoder(self.model).encode(frames)

    # -- cache -----------------------------------------------------------------------------

    def key(self, lp: LoadedPolicy) -> str:
        """What the policy's block depends on, hashed."""
        labels = []
        for label in lp.policy.labels:
            exemplars = []
            for e in label.exemplars:
                path = lp.resolve(e)
                try:
                    exemplars.append(hashlib.sha256(path.read_bytes()).hexdigest())
                except OSError as err:
                    raise PolicyError(f"{lp.path}: exemplar {e}: {err.strerror or err}") from err
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

    def _path(self, key: str) -> Path:
        return self.cache_dir / f"{key}.safetensors"

    def _load(self, path: Path) -> PolicyBlock | None:
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as fh:
                meta = json.loads((fh.metadata() or {})["layout"])
                matrix = fh.get_tensor("matrix")
        except Exception as e:  # any unreadable entry is recompiled, never fatal
            _log.warning("ignoring unreadable policy cache entry %s: %s", path, e)
            return None
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
        return PolicyBlock(matrix=matrix, labels=labels)

    def _store(self, path: Path, block: PolicyBlock) -> None:
        from safetensors.torch import save_file

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

    def compile_one(self, lp: LoadedPolicy) -> PolicyBlock:
        if self.use_cache:
            path = self._path(self.key(lp))
            if path.is_file() and (block := self._load(path)) is not None:
                self.hits += 1
                return block
        self.misses += 1
        block = compile_policy(lp, self.encode_text, self.encode_images)
        if self.use_cache:
            self._store(path, block)
        _log.info(
            "compiled policy %s (%d rows) for %s", lp.policy.id, len(block.matrix), self.model.name
        )
        return block

    def compile(self, policies: PolicySet) -> CompiledPolicies:
        return compile_policies(
            policies,
            self.encode_text,
            logit_scale=float(self.model.logit_scale.detach().exp()),
            compile_one=self.compile_one,
        )


class PolicyStore:
    """The live policy set of a running worker: compiled once, then refreshed when files change.

    :meth:`refresh` (call it every few seconds) re-reads the policy paths; when a file was
    added, edited or removed it reloads the set and recompiles (unchanged policies come from the
    cache). A broken edit keeps the last good set in force: the error is logged and counted in
    ``reload_errors``, and retried at the next refresh only if the files change again.
    """

    def __init__(self, paths: Sequence[str | Path], compiler: PolicyCompiler) -> None:
        self.paths = [Path(p) for p in paths]
        self.compiler = compiler
        self.reload_errors = 0
        self.last_error: str | None = None
        self.policies = load_policies(self.paths)  # the first load must succeed
        self.compiled = compiler.compile(self.policies)
        self._seen = self._snapshot()

    def _snapshot(self) -> dict[Path, tuple[int, int]]:
        snap: dict[Path, tuple[int, int]] = {}
        try:
            files = policy_files(self.paths)
        except PolicyError:
            return snap
        for f in files:
            try:
                st = f.stat()
            except OSError:
                continue
            snap[f] = (st.st_mtime_ns, st.st_size)
        return snap

    def refresh(self) -> bool:
        """Reload if any policy file changed; True when a new set is now in force."""
        snap = self._snapshot()
        if snap == self._seen:
            return False
        self._seen = snap
        try:
            policies = load_policies(self.paths)
            compiled = self.compiler.compile(policies)
        except (PolicyError, ValueError, OSError) as e:
            self.reload_errors += 1
            self.last_error = str(e)
            _log.error("policy reload failed; keeping the last good policies: %s", e)
            return False
        if policies.digest == self.policies.digest:
            return False
        self.policies, self.compiled = policies, compiled
        self.last_error = None
        _log.info(
            "policies reloaded: %s (set %s)",
            ", ".join(f"{lp.policy.id} v{lp.policy.version}" for lp in policies),
            policies.digest,
        )
        return True
