"""The live set of banks of a running worker or scan: loaded from files, reloaded when they change.

:class:`BankStore` reads every ``*.bank.tsv`` file under its paths (files or folders, searched
recursively) into an immutable :class:`BankSnapshot`: the banks, a
:class:`~pipeline.hashes.match.Matcher` for frames and files and a
:class:`~pipeline.hashes.video.VideoMatcher` for videos. Readers take ``store.snapshot`` once
per batch and use it; :meth:`BankStore.refresh` (call it every few seconds, from any one
thread) builds a new snapshot when a file was added, edited or removed (a change of its
modification time or size) and swaps it in with one assignment, so readers never see a half
update.

As with policies, a broken edit does not take a bank away: the file's last good bank stays in
force, the error is logged, counted in ``reload_errors`` and kept in ``snapshot.errors``, and
the file is read again only when it changes again. Only changed files are re-read and
re-indexed. The first load must succeed in full (a broken file at start-up is an error).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from types import MappingProxyType

from pipeline.errors import BankError
from pipeline.hashes.bank import BANK_SUFFIX, MAX_BANK_BYTES, Bank, read_bank
from pipeline.hashes.index import IndexKind
from pipeline.hashes.match import IndexedBank, Matcher
from pipeline.hashes.video import VideoMatcher

__all__ = ["BankSnapshot", "BankStore", "bank_files"]

_log = logging.getLogger(__name__)

_Stamp = tuple[int, int]  # (mtime_ns, size)


@dataclass(frozen=True)
class BankSnapshot:
    """One consistent state of the banks; never mutated after it is built."""

    banks: Mapping[str, Bank]
    matcher: Matcher
    video: VideoMatcher
    files: Mapping[Path, str] = field(default_factory=dict)  # file -> bank name in force
    errors: Mapping[Path, str] = field(default_factory=dict)  # file -> its last read error

    @cached_property
    def digest(self) -> str:
        """A short hash of every bank's name and entries (what a match can depend on), for
        keys that must change when a bank does (a scan's resume key). Computed on first use:
        about a second a million entries."""
        h = hashlib.sha256()
        for name in sorted(self.banks):
            h.update(f"bank\t{name}\n".encode())
            for e in self.banks[name].entries():
                line = f"{e.signal_type}\t{e.hash_text()}\t{e.entry_id}\t{','.join(e.tags)}\n"
                h.update(line.encode())
        return h.hexdigest()[:16]


def bank_files(paths: Sequence[str | Path]) -> list[Path]:
    """Every bank file under ``paths`` (files named ``*.bank.tsv`` and folders searched
    recursively), sorted; a path that does not exist is a :class:`BankError`."""
    out: set[Path] = set()
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            out.update(f for f in p.rglob(f"*{BANK_SUFFIX}") if f.is_file())
        elif p.is_file():
            if not p.name.endswith(BANK_SUFFIX):
                raise BankError(f"{p}: a bank file's name ends in {BANK_SUFFIX}")
            out.add(p)
        else:
            raise BankError(f"{p}: no such bank file or folder")
    return sorted(out)


class BankStore:
    """Banks from files, refreshed live (see the module docstring)."""

    def __init__(
        self,
        paths: Sequence[str | Path],
        *,
        max_bytes: int = MAX_BANK_BYTES,
        index_kind: IndexKind = "auto",
        threads: int = 1,
    ) -> None:
        self.paths = [Path(p) for p in paths]
        self.max_bytes = max_bytes
        self.index_kind: IndexKind = index_kind
        self.threads = threads  # search threads a bank (the compiled loops release the GIL)
        self.reload_errors = 0
        self.last_error: str | None = None
        self._stamps: dict[Path, _Stamp] = {}
        self._loaded: dict[Path, IndexedBank] = {}
        stamps = self._scan()
        names: dict[str, Path] = {}
        for f, stamp in stamps.items():
            bank = self._read(f)
            if bank.name in names:
                raise BankError(f"{f}: bank {bank.name!r} is already defined by {names[bank.name]}")
            names[bank.name] = f
            self._loaded[f] = IndexedBank(bank, index_kind=index_kind, threads=threads)
            self._stamps[f] = stamp
        self.snapshot = self._build({})

    def _scan(self) -> dict[Path, _Stamp]:
        stamps: dict[Path, _Stamp] = {}
        for f in bank_files(self.paths):
            try:
                st = f.stat()
            except OSError:
                continue  # removed between the listing and now: gone
            stamps[f] = (st.st_mtime_ns, st.st_size)
        return stamps

    def _read(self, f: Path) -> Bank:
        return read_bank(f, max_bytes=self.max_bytes)

    def refresh(self) -> bool:
        """Re-read changed bank files; True when a new snapshot is now in force."""
        try:
            stamps = self._scan()
        except BankError as e:  # a configured path vanished: keep what is loaded
            self._fail(str(e))
            return False
        if stamps == self._stamps:
            return False
        errors = dict(self.snapshot.errors)
        changed = False
        for f in set(self._loaded) - set(stamps):  # removed files take their banks away
            del self._loaded[f]
            errors.pop(f, None)
            changed = True
        for f, stamp in stamps.items():
            if self._stamps.get(f) == stamp:
                continue
            try:
                bank = self._read(f)
                self._loaded[f] = IndexedBank(
                    bank, index_kind=self.index_kind, threads=self.threads
                )
                errors.pop(f, None)
                changed = True
            except (BankError, OSError, ValueError) as e:
                if errors.get(f) != str(e):  # the same error again (a two-step save): once
                    self._fail(str(e))
                errors[f] = str(e)
        self._stamps = stamps
        if not changed and errors == dict(self.snapshot.errors):
            return False
        self.snapshot = self._build(errors)
        return changed

    def _fail(self, message: str) -> None:
        self.reload_errors += 1
        self.last_error = message
        _log.error("bank reload failed; keeping the last good banks: %s", message)

    def _build(self, errors: Mapping[Path, str]) -> BankSnapshot:
        by_name: dict[str, IndexedBank] = {}
        files: dict[Path, str] = {}
        for f in sorted(self._loaded):
            ib = self._loaded[f]
            other = next((g for g, n in files.items() if n == ib.bank.name), None)
            if other is not None:
                message = f"{f}: bank {ib.bank.name!r} is already defined by {other}"
                if f in self._stamps and not errors.get(f):
                    errors = {**errors, f: message}
                _log.error("%s; ignoring this file", message)
                continue
            by_name[ib.bank.name] = ib
            files[f] = ib.bank.name
        banks = {name: ib.bank for name, ib in by_name.items()}
        snapshot = BankSnapshot(
            banks=MappingProxyType(banks),
            matcher=Matcher(by_name),
            video=VideoMatcher(banks),
            files=MappingProxyType(files),
            errors=MappingProxyType(dict(errors)),
        )
        _log.info(
            "banks in force: %s",
            ", ".join(f"{b.name} ({len(b)} entries)" for b in banks.values()) or "none",
        )
        return snapshot
