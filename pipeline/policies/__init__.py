"""Moderation policies: from YAML files to per-frame decisions and incidents.

One module per step, in the order data flows:

- :mod:`~pipeline.policies.schema`: the YAML format, strict validation with file:line:column
  errors, loading policies from files and folders (:class:`LoadedPolicies`);
- :mod:`~pipeline.policies.compile`: prompts, negatives and exemplars to a matrix of unit rows
  for a model, cached on disk (:class:`~pipeline.policies.compile.PolicyCompiler`);
- :mod:`~pipeline.policies.snapshot`: :class:`PolicySet`, the immutable policy set in force:
  policies, compiled matrix, temporal rules and set id, read as one reference;
- :mod:`~pipeline.policies.store`: the live set of a running worker, reloaded when files change;
- :mod:`~pipeline.policies.score`: embeddings to per-label scores and decisions (NumPy, run time
  only);
- :mod:`~pipeline.policies.temporal`: per-stream temporal rules, decisions to incidents;
- :mod:`~pipeline.policies.hashing`: ``kind: hash`` policies judged from frames' PDQ hashes and
  whole files against the hash banks in force (:mod:`pipeline.hashes`);
- :mod:`~pipeline.policies.judge`: the one judging path of the worker, scans and tools:
  embeddings (and frame hashes) to score records and flag events;
- :mod:`~pipeline.policies.tools`: lint, regression examples, explain, calibrate.

Importing this package loads the schema only (no torch, no NumPy-heavy modules).
"""

from pipeline.policies.schema import (
    Example,
    HashPolicy,
    Label,
    LoadedHashPolicy,
    LoadedPolicies,
    LoadedPolicy,
    Policy,
    Temporal,
    load_document,
    load_policies,
    load_policy,
    parse_document,
    parse_policy,
    policy_files,
)

__all__ = [
    "Example",
    "HashPolicy",
    "Label",
    "LoadedHashPolicy",
    "LoadedPolicies",
    "LoadedPolicy",
    "Policy",
    "Temporal",
    "load_document",
    "load_policies",
    "load_policy",
    "parse_document",
    "parse_policy",
    "policy_files",
]
