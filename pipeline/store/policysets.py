"""Policy set snapshots: the exact set that scored stored frames, kept beside them.

Every stored frame names the policy set in force when it was scored (``policy_set``, the
set's digest). A backtest compares an edited policy with *that* set, so the writers keep a
snapshot of each set they see: the policies as validated data (hash policies too, under
``hash_policies``, absent when there are none), the compiled matrix and label layout they scored
with (no rows when the set has only hash policies), and the model they were compiled for.
Re-scoring stored frames with a snapshot needs no text encoder and gives the scores the worker
computed (up to the float16 rounding of the stored embeddings).

A snapshot is one JSON document (:func:`snapshot_bytes`, :func:`read_snapshot`), at most
:data:`MAX_SNAPSHOT_BYTES`; the matrix is float32 little-endian, base64-encoded. The store keeps
them as ``_policy_sets/<id>.json``; the worker publishes them on the embeddings topic.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline.errors import StoreError
from pipeline.policies.schema import (
    HashPolicy,
    LoadedHashPolicy,
    LoadedPolicies,
    LoadedPolicy,
    Policy,
)
from pipeline.policies.score import CompiledLabel, CompiledPolicies
from pipeline.policies.snapshot import PolicySet

__all__ = [
    "MAX_SNAPSHOT_BYTES",
    "SNAPSHOT_FORMAT",
    "StoredPolicySet",
    "policy_versions",
    "read_snapshot",
    "snapshot_bytes",
]

SNAPSHOT_FORMAT: Final = 1
#: The largest snapshot read (about 5,000 rows of 1,152-dimension float32, base64).
MAX_SNAPSHOT_BYTES: Final = 32 * 1024 * 1024
_MAX_ROWS: Final = 100_000
_MAX_DIM: Final = 8192


@dataclass(frozen=True, eq=False)
class StoredPolicySet:
    """A policy set as it was in force, and the model it was compiled for."""

    policies: PolicySet
    model: str
    weights_sha256: str

    @property
    def id(self) -> str:
        return self.policies.id


def policy_versions(policies: PolicySet) -> dict[str, int]:
    """Policy id -> version, of every CLIP policy in the set."""
    return {lp.policy.id: lp.policy.version for lp in policies}


def snapshot_bytes(policies: PolicySet, *, model: str, weights_sha256: str) -> bytes:
    """The snapshot document of ``policies`` compiled for ``model`` with these weights."""
    compiled = policies.compiled
    matrix = np.ascontiguousarray(compiled.matrix, dtype="<f4")
    doc: dict[str, Any] = {
        "format": SNAPSHOT_FORMAT,
        "id": policies.id,
        "model": model,
        "weights_sha256": weights_sha256,
        "logit_scale": compiled.logit_scale,
        "logit_bias": compiled.logit_bias,
        "policies": [
            {"sha256": lp.sha256, "policy": lp.policy.model_dump(mode="json")} for lp in policies
        ],
        "labels": [
            {
                "policy": lab.policy,
                "label": lab.label,
                "version": lab.version,
                "severity": lab.severity,
                "action": lab.action,
                "mode": lab.mode,
                "row": lab.row,
                "negative_rows": list(lab.negative_rows),
                "prompt_rows": list(lab.prompt_rows),
                "prompts": list(lab.prompts),
                "threshold": lab.threshold,
                "probability": lab.probability,
                "margin": lab.margin,
                "sigmoid": lab.sigmoid,
            }
            for lab in compiled.labels
        ],
        "matrix": {
            "rows": int(matrix.shape[0]),
            "dim": int(matrix.shape[1]),
            "float32_le_base64": base64.b64encode(matrix.tobytes()).decode("ascii"),
        },
    }
    hashes = policies.policies.hashes
    if hashes:  # absent otherwise: a CLIP-only set's snapshot is as it always was
        doc["hash_policies"] = [
            {"sha256": hp.sha256, "policy": hp.policy.model_dump(mode="json")} for hp in hashes
        ]
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


def read_snapshot(data: bytes, *, where: str = "policy set snapshot") -> StoredPolicySet:
    """A snapshot back; :class:`StoreError` naming ``where`` when it is not a valid one."""
    if len(data) > MAX_SNAPSHOT_BYTES:
        raise StoreError(f"{where}: {len(data)} bytes, over the limit of {MAX_SNAPSHOT_BYTES}")
    try:
        doc = _Snapshot.model_validate_json(data)
    except ValidationError as e:
        first = e.errors()[0]
        at = ".".join(str(p) for p in first["loc"]) or "(document)"
        raise StoreError(f"{where}: not a policy set snapshot: {at}: {first['msg']}") from None
    try:
        return _restore(doc)
    except (ValueError, binascii.Error, KeyError) as e:
        raise StoreError(f"{where}: not a usable policy set snapshot: {e}") from e


# --------------------------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_Rows = Annotated[list[Annotated[int, Field(ge=0, lt=_MAX_ROWS)]], Field(max_length=_MAX_ROWS)]


class _Label(_Strict):
    policy: str
    label: str
    version: Annotated[int, Field(ge=1)]
    severity: Literal["low", "medium", "high", "critical"]
    action: Literal["flag", "review", "block"]
    mode: Literal["enforce", "shadow"]
    row: Annotated[int, Field(ge=0, lt=_MAX_ROWS)]
    negative_rows: _Rows
    prompt_rows: Annotated[_Rows, Field(min_length=1)]
    prompts: list[Annotated[str, Field(max_length=2000)]]
    threshold: float | None
    probability: float | None
    margin: float | None
    sigmoid: float | None


class _Matrix(_Strict):
    rows: Annotated[int, Field(ge=0, le=_MAX_ROWS)]  # 0: only hash policies
    dim: Annotated[int, Field(ge=1, le=_MAX_DIM)]
    float32_le_base64: str


class _PolicyEntry(_Strict):
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    policy: dict[str, Any]


class _Snapshot(_Strict):
    format: Literal[1]
    id: Annotated[str, Field(pattern=r"^[0-9a-f]{16}$")]
    model: Annotated[str, Field(min_length=1, max_length=4096)]
    weights_sha256: Annotated[str, Field(max_length=128)]
    logit_scale: Annotated[float, Field(allow_inf_nan=False)]
    logit_bias: Annotated[float, Field(allow_inf_nan=False)] | None
    policies: Annotated[list[_PolicyEntry], Field(max_length=10_000)]
    labels: list[_Label]
    matrix: _Matrix
    hash_policies: Annotated[list[_PolicyEntry], Field(max_length=10_000)] = []


def _restore(doc: _Snapshot) -> StoredPolicySet:
    loaded = []
    for entry in doc.policies:
        policy = Policy.model_validate_json(json.dumps(entry.policy))
        loaded.append(
            LoadedPolicy(policy=policy, path=Path(f"{policy.id}.yaml"), sha256=entry.sha256)
        )
    hashes = []
    for entry in doc.hash_policies:
        hp = HashPolicy.model_validate_json(json.dumps(entry.policy))
        hashes.append(LoadedHashPolicy(policy=hp, path=Path(f"{hp.id}.yaml"), sha256=entry.sha256))
    if not loaded and not hashes:
        raise ValueError("it holds no policy")
    if bool(loaded) != bool(doc.labels) or bool(doc.labels) != bool(doc.matrix.rows):
        raise ValueError("its policies, labels and matrix rows do not go together")
    policies = LoadedPolicies(loaded, hashes)
    if policies.digest != doc.id:
        raise ValueError(f"its policies hash to {policies.digest}, not its id {doc.id}")
    raw = base64.b64decode(doc.matrix.float32_le_base64, validate=True)
    m = doc.matrix
    if len(raw) != m.rows * m.dim * 4:
        raise ValueError(f"matrix of {len(raw)} bytes for {m.rows} x {m.dim} float32")
    matrix = np.frombuffer(raw, dtype="<f4").reshape(m.rows, m.dim).astype(np.float32)
    if not np.all(np.isfinite(matrix)):
        raise ValueError("the matrix holds a NaN or an infinity")
    labels: list[CompiledLabel] = []
    for lab in doc.labels:
        rows = [lab.row, *lab.negative_rows, *lab.prompt_rows]
        if max(rows) >= m.rows or len(lab.prompts) != len(lab.prompt_rows):
            raise ValueError(f"label {lab.policy}/{lab.label} names rows the matrix lacks")
        labels.append(
            CompiledLabel(
                policy=lab.policy,
                label=lab.label,
                key=f"{lab.policy}/{lab.label}",
                version=lab.version,
                severity=lab.severity,
                action=lab.action,
                mode=lab.mode,
                row=lab.row,
                negative_rows=tuple(lab.negative_rows),
                prompt_rows=tuple(lab.prompt_rows),
                prompts=tuple(lab.prompts),
                threshold=lab.threshold,
                probability=lab.probability,
                margin=lab.margin,
                sigmoid=lab.sigmoid,
            )
        )
    compiled = CompiledPolicies(
        matrix=np.ascontiguousarray(matrix),
        labels=tuple(labels),
        logit_scale=doc.logit_scale,
        policy_set=doc.id,
        logit_bias=doc.logit_bias,
    )
    for compiled_label in labels:
        compiled_label.cutoff  # noqa: B018 - raises ValueError for a label without a rule
    known = {lp.policy.id for lp in policies}
    if any(lab.policy not in known for lab in labels):
        raise ValueError("a label names a policy the snapshot lacks")
    return StoredPolicySet(
        policies=PolicySet.of(policies, compiled),
        model=doc.model,
        weights_sha256=doc.weights_sha256,
    )
