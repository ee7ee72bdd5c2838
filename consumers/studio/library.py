"""The policy files the studio serves, read from disk on every request (the files are the
source of truth), and the live linter the editor calls as the author types. CLIP policies and
hash policies (``kind: hash``) alike: a hash policy's file is kept as :attr:`PolicyFile.hashed`
(every page that scores with a model reads :attr:`PolicyFile.loaded`, the CLIP policy, and so
passes it by)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from pipeline.errors import PolicyError
from pipeline.policies.schema import LoadedHashPolicy, LoadedPolicy, load_document, policy_files
from pipeline.policies.tools.lint import lint_text

__all__ = ["MAX_POLICY_BYTES", "LintProblem", "PolicyFile", "PolicyLibrary", "lint_problems"]

MAX_POLICY_BYTES: Final = 256 * 1024
_NAME: Final = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


@dataclass(frozen=True)
class LintProblem:
    line: int  # 1-based; 0 when the problem has no place in the file
    column: int
    message: str


@dataclass(frozen=True)
class PolicyFile:
    """One policy file: its text, and the policy when it loads (else the problems)."""

    name: str  # the file's stem, which is the policy's id when it is valid
    path: Path
    text: str
    sha256: str
    loaded: LoadedPolicy | None  # a CLIP policy that loads
    problems: tuple[LintProblem, ...]
    hashed: LoadedHashPolicy | None = None  # a hash policy that loads

    @property
    def document(self) -> LoadedPolicy | LoadedHashPolicy | None:
        """The policy of either kind, when the file loads."""
        return self.loaded if self.loaded is not None else self.hashed


def lint_problems(text: str, path: Path, *, model: str | None = None) -> list[LintProblem]:
    """What ``clipguard policy lint`` says of ``text`` as the file ``path``, each problem with
    its line and column."""
    if len(text.encode("utf-8")) > MAX_POLICY_BYTES:
        return [LintProblem(0, 0, f"a policy file is at most {MAX_POLICY_BYTES} bytes")]
    report = lint_text(text, path, model=model)
    return [_problem(line, str(path)) for line in report.errors]


def _problem(line: str, prefix: str) -> LintProblem:
    if line.startswith(prefix + ":"):
        rest = line[len(prefix) + 1 :]
        m = re.match(r"(\d+):(\d+): (.*)", rest, re.S)
        if m:
            return LintProblem(int(m[1]), int(m[2]), m[3])
        return LintProblem(0, 0, rest.lstrip(": "))
    return LintProblem(0, 0, line)


class PolicyLibrary:
    """The ``*.yaml`` files directly in one folder."""

    def __init__(self, folder: Path, *, model: str | None = None) -> None:
        self.folder = folder.resolve()
        self.model = model

    def names(self) -> list[str]:
        return [p.stem for p in policy_files([self.folder]) if _NAME.match(p.stem)]

    def files(self) -> list[PolicyFile]:
        return [self.get(name) for name in self.names()]

    def path(self, name: str) -> Path:
        """The file of policy ``name`` (KeyError when there is none: names are checked, so no
        path outside the folder can be formed)."""
        if not _NAME.match(name):
            raise KeyError(name)
        for suffix in (".yaml", ".yml"):
            p = self.folder / f"{name}{suffix}"
            if p.is_file():
                return p
        raise KeyError(name)

    def get(self, name: str) -> PolicyFile:
        path = self.path(name)
        raw = path.read_bytes()[: MAX_POLICY_BYTES + 1]
        text = raw.decode("utf-8", errors="replace")
        problems: list[LintProblem] = []
        loaded: LoadedPolicy | LoadedHashPolicy | None = None
        if len(raw) > MAX_POLICY_BYTES:
            problems.append(LintProblem(0, 0, f"larger than {MAX_POLICY_BYTES} bytes"))
        else:
            problems = lint_problems(text, path, model=self.model)
            try:
                loaded = load_document(path)
            except PolicyError:
                loaded = None
        return PolicyFile(
            name=name,
            path=path,
            text=text,
            sha256=hashlib.sha256(raw).hexdigest(),
            loaded=loaded if isinstance(loaded, LoadedPolicy) else None,
            problems=tuple(problems),
            hashed=loaded if isinstance(loaded, LoadedHashPolicy) else None,
        )
