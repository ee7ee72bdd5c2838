"""The live policy set of a running worker: compiled once, then replaced when files change.

:meth:`PolicyStore.refresh` (call it every few seconds, from any one thread) re-reads the
policy paths; when a file was added, edited or removed it reloads the policies and recompiles
(unchanged policies come from the compile cache), then replaces :attr:`PolicyStore.current`
in one assignment. Readers take ``store.current`` once and use that snapshot for a whole
batch. A broken edit keeps the last good set in force: the error is logged and counted in
``reload_errors``, and retried at the next refresh only if the files change again.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from pipeline.errors import PolicyError
from pipeline.policies.compile import PolicyCompiler
from pipeline.policies.schema import load_policies, policy_files
from pipeline.policies.snapshot import PolicySet

__all__ = ["PolicyStore"]

_log = logging.getLogger(__name__)


class PolicyStore:
    """The policy set in force for ``paths``, compiled by ``compiler``; see the module doc."""

    def __init__(self, paths: Sequence[str | Path], compiler: PolicyCompiler) -> None:
        self.paths = [Path(p) for p in paths]
        self.compiler = compiler
        self.reload_errors = 0
        self.last_error: str | None = None
        self._seen = self._snapshot()
        self.current: PolicySet = compiler.compile(load_policies(self.paths))  # must succeed

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
            if policies.digest == self.current.id:
                return False
            fresh = self.compiler.compile(policies)
        except (PolicyError, ValueError, OSError) as e:
            self.reload_errors += 1
            self.last_error = str(e)
            _log.error("policy reload failed; keeping the last good policies: %s", e)
            return False
        self.current = fresh
        self.last_error = None
        _log.info("policies reloaded: %s", fresh.describe())
        return True
