"""Hash policies (``kind: hash``) in the studio: what the Policies page says of one (its banks
with their entry counts, its distance and quality thresholds) and the bank names the editor's
linter checks against the banks in force."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from consumers.studio.library import LintProblem
from pipeline.errors import PolicyError
from pipeline.hashes.signals import PDQ_BITS
from pipeline.policies.schema import HashPolicy, parse_document
from pipeline.policies.tools.nodes import child

if TYPE_CHECKING:
    from pipeline.hashes.store import BankSnapshot

__all__ = ["BankCount", "HashSummary", "bank_problems", "missing_banks", "summary"]


@dataclass(frozen=True)
class BankCount:
    name: str
    loaded: bool  # False: no bank of that name is in force (or the studio has no --banks)
    counts: dict[str, int]  # signal type -> entries

    @property
    def entries(self) -> int:
        return sum(self.counts.values())


@dataclass(frozen=True)
class HashSummary:
    banks: list[BankCount]
    signals: list[str]
    max_distance: int
    bits: int  # of a PDQ hash
    min_quality: int
    dihedral: bool

    @property
    def similarity(self) -> float:
        """The score threshold the distance gives (``1 - max_distance / 256``), as the
        backtest and flag events show it."""
        return 1.0 - self.max_distance / self.bits


def summary(policy: HashPolicy, banks: BankSnapshot | None) -> HashSummary:
    """What the Policies page shows of ``policy`` given the banks in force (None: none)."""
    found = {} if banks is None else banks.banks
    return HashSummary(
        banks=[
            BankCount(name, name in found, dict(found[name].counts()) if name in found else {})
            for name in policy.banks
        ],
        signals=list(policy.signals),
        max_distance=policy.max_distance,
        bits=PDQ_BITS,
        min_quality=policy.min_quality,
        dihedral=policy.dihedral,
    )


def missing_banks(policy: HashPolicy, banks: BankSnapshot | None) -> list[str]:
    """The banks ``policy`` names that are not in force (none checked without banks)."""
    if banks is None:
        return []
    return [name for name in policy.banks if name not in banks.banks]


def bank_problems(text: str, path: Path, banks: BankSnapshot | None) -> list[LintProblem]:
    """The editor's text, when it is a hash policy: a problem (at its ``banks:`` line) for
    each bank it names that is not in force. Nothing for other text, or without banks."""
    if banks is None:
        return []
    try:
        policy = parse_document(text, path=path)
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except (PolicyError, yaml.YAMLError):
        return []  # the linter reports it
    if not isinstance(policy, HashPolicy):
        return []
    node = child(root, "banks")
    line, column = (node.start_mark.line + 1, node.start_mark.column + 1) if node else (0, 0)
    known = ", ".join(sorted(banks.banks)) or "none"
    return [
        LintProblem(line, column, f"banks: no bank named {name!r} is loaded (banks: {known})")
        for name in missing_banks(policy, banks)
    ]
