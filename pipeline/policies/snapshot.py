"""The policy set in force: one immutable value that scoring reads as a single reference.

A :class:`PolicySet` holds everything judging needs, built together from the same files: the
loaded policies, the matrix and labels they compiled to for the model, the hash policies
(:attr:`PolicySet.hashes`, matched against the bank store's banks, not compiled), each
policy's temporal rule and mode, and the set's id (a digest of the policies' content, written
in every record).
A live reload (:class:`~pipeline.policies.store.PolicyStore`) builds a new one and replaces
the old in one assignment; a reader takes the reference once per batch and never sees one part
of a set beside another part of the next.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from pipeline.policies.schema import HashPolicy, LoadedPolicies, LoadedPolicy, Temporal
from pipeline.policies.score import CompiledLabel, CompiledPolicies, Mode
from pipeline.policies.temporal import temporal_rules

__all__ = ["PolicySet"]


@dataclass(frozen=True, eq=False)
class PolicySet:
    """Policies, their compiled matrix and their temporal rules; build with :meth:`of`."""

    policies: LoadedPolicies
    compiled: CompiledPolicies
    rules: Mapping[str, tuple[Temporal, Mode]]  # policy id -> (temporal rule, mode)

    @classmethod
    def of(cls, policies: LoadedPolicies, compiled: CompiledPolicies) -> PolicySet:
        """The set of ``policies`` compiled as ``compiled`` (which must come from them)."""
        if compiled.policy_set != policies.digest:
            raise ValueError("the compiled policies were not compiled from these policies")
        rules = MappingProxyType(temporal_rules([*policies, *policies.hashes]))
        return cls(policies=policies, compiled=compiled, rules=rules)

    @property
    def id(self) -> str:
        """The set's digest, as in output records (``policy_set``)."""
        return self.compiled.policy_set

    @property
    def hashes(self) -> tuple[HashPolicy, ...]:
        """The hash policies (``kind: hash``), in file order."""
        return tuple(hp.policy for hp in self.policies.hashes)

    def __iter__(self) -> Iterator[LoadedPolicy]:
        """The CLIP policies (:attr:`hashes` has the others)."""
        return iter(self.policies)

    def __len__(self) -> int:
        return len(self.policies)

    def get(self, policy_id: str) -> LoadedPolicy:
        """The loaded policy with that id; KeyError if the set has none."""
        return self.policies.get(policy_id)

    def label(self, key: str) -> CompiledLabel:
        """The compiled label ``"policy/label"``; KeyError if the set has none."""
        return self.compiled.label(key)

    def only(self, policy_ids: Iterable[str]) -> PolicySet:
        """The set restricted to some of its policies (their rows are not recompiled)."""
        policies = self.policies.only(policy_ids)
        compiled = self.compiled.select(
            [lp.policy.id for lp in policies], policy_set=policies.digest
        )
        return PolicySet.of(policies, compiled)

    def describe(self) -> str:
        """``"id vN, id vN (set digest)"`` for logs."""
        every = [*self.policies, *self.policies.hashes]
        versions = ", ".join(f"{lp.policy.id} v{lp.policy.version}" for lp in every)
        return f"{versions} (set {self.id})"
