"""The live policy set of a running worker: compiled once, then replaced when files change.

:meth:`PolicyStore.refresh` (call it every few seconds, from any one thread) re-reads the
policy paths; when a file was added, edited or removed it reloads the policies and recompiles
(unchanged policies come from the compile cache), then replaces :attr:`PolicyStore.current`
in one assignment. Readers take ``store.current`` once and use that snapshot for a whole
batch. A broken edit keeps the last good set in force: the error is logged and counted in
``reload_errors``, and retried at the next refresh only if the files change again. The same
error again (an editor that writes a file in two steps is seen between them and after) is
counted and logged once.

Hash policies (``kind: hash``) must name banks in force: ``banks`` (a function giving the bank
store's bank names) is asked at every load, and a policy naming any other bank is an error
like a broken edit. A change in the bank names is a reason to load again, so a policy refused
for a bank not there yet comes in once the bank does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Sequence
from pathlib import Path

from pipeline.errors import PolicyError
from pipeline.policies.compile import PolicyCompiler
from pipeline.policies.hashing import check_banks
from pipeline.policies.schema import LoadedPolicies, load_policies, policy_files
from pipeline.policies.snapshot import PolicySet

__all__ = ["PolicyStore"]

_log = logging.getLogger(__name__)


class PolicyStore:
    """The policy set in force for ``paths``, compiled by ``compiler``; see the module doc."""

    def __init__(
        self,
        paths: Sequence[str | Path],
        compiler: PolicyCompiler,
        *,
        banks: Callable[[], Collection[str]] = frozenset,
    ) -> None:
        self.paths = [Path(p) for p in paths]
        self.compiler = compiler
        self.banks = banks
        self.reload_errors = 0
        self.last_error: str | None = None
        self._seen = self._snapshot()
        self._bank_names = frozenset(banks())
        self.current: PolicySet = compiler.compile(self._load())  # must succeed

    def _load(self) -> LoadedPolicies:
        policies = load_policies(self.paths)
        check_banks(policies.hashes, self._bank_names)
        return policies

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
        names = frozenset(self.banks())
        if snap == self._seen and names == self._bank_names:
            return False
        self._seen, self._bank_names = snap, names
        try:
            policies = self._load()
            if policies.digest == self.current.id:
                return False
            fresh = self.compiler.compile(policies)
        except (PolicyError, ValueError, OSError) as e:
            if str(e) != self.last_error:
                self.reload_errors += 1
                self.last_error = str(e)
                _log.error("policy reload failed; keeping the last good policies: %s", e)
            return False
        self.current = fresh
        self.last_error = None
        _log.info("policies reloaded: %s", fresh.describe())
        return True
