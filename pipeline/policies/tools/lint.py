"""``policy lint``: validate policy files and check the files they name, collecting every
problem as ``file:line:col: ...`` (nothing raised)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml

from pipeline.errors import DecodeError, PolicyError
from pipeline.policies.schema import (
    HashPolicy,
    LoadedHashPolicy,
    LoadedPolicies,
    LoadedPolicy,
    load_document,
    parse_document,
    policy_files,
)
from pipeline.policies.tools.model_checks import check_against_model
from pipeline.policies.tools.nodes import child

__all__ = ["LintReport", "lint", "lint_text"]


@dataclass(frozen=True)
class LintReport:
    """What :func:`lint` found: the number of valid policies and every problem, one a line
    (``file:line:col: ...`` where the problem has a place in a file)."""

    policies: int
    errors: tuple[str, ...]
    notes: tuple[str, ...] = ()  # checks that could not run, and why

    @property
    def ok(self) -> bool:
        return not self.errors


def lint(paths: Iterable[str | Path], *, model: str | None = None) -> LintReport:
    """Validate the policy files named (or found in the named folders), check that the
    examples and exemplars they name exist, and that each policy's rules and prompts suit its
    model (``model``, else the policy's own ``model:``); every problem is collected, none
    raised. Hash policies (``kind: hash``) are validated; the banks they name are checked
    where banks are loaded (a worker, a scan)."""
    paths = list(paths)
    try:
        files = policy_files(paths)
    except PolicyError as e:
        return LintReport(policies=0, errors=tuple(str(e).splitlines()))
    if not files:
        where = ", ".join(map(str, paths))
        return LintReport(policies=0, errors=(f"no policy files (*.yaml) found in {where}",))
    loaded: list[LoadedPolicy] = []
    hashes: list[LoadedHashPolicy] = []
    errors: list[str] = []
    notes: list[str] = []
    for f in files:
        try:
            lp = load_document(f)
        except PolicyError as e:
            errors += str(e).splitlines()
            continue
        if isinstance(lp, LoadedHashPolicy):
            hashes.append(lp)
            continue
        text = f.read_text(encoding="utf-8")
        errors += _missing_files(lp, text)
        found = check_against_model(lp, model, text=text)
        errors += found.errors
        notes += found.notes
        loaded.append(lp)
    try:
        LoadedPolicies(loaded, hashes)
    except PolicyError as e:
        errors += str(e).splitlines()
    count = len(loaded) + len(hashes)
    return LintReport(policies=count, errors=tuple(errors), notes=tuple(notes))


def lint_text(text: str, path: str | Path, *, model: str | None = None) -> LintReport:
    """:func:`lint` for one policy document held in memory (an editor's unsaved text), as if it
    were the file at ``path``: its examples and exemplars are looked for beside ``path``, its
    id must match ``path``'s name, and problems are reported as ``path:line:col: ...``."""
    import hashlib

    path = Path(path)
    try:
        policy = parse_document(text, path=path)
    except PolicyError as e:
        return LintReport(policies=0, errors=tuple(str(e).splitlines()))
    if path.stem != policy.id:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        node = child(root, "id")
        at = (
            f"{path}:{node.start_mark.line + 1}:{node.start_mark.column + 1}" if node else f"{path}"
        )
        return LintReport(
            policies=0,
            errors=(
                f"{at}: id: policy id {policy.id!r} must match the file name ({path.stem!r}); "
                "one policy a file, named after its id",
            ),
        )
    if isinstance(policy, HashPolicy):  # its banks are checked where banks are loaded
        return LintReport(policies=1, errors=())
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    lp = LoadedPolicy(policy=policy, path=path, sha256=digest)
    found = check_against_model(lp, model, text=text)
    errors = _missing_files(lp, text) + found.errors
    return LintReport(policies=1, errors=tuple(errors), notes=tuple(found.notes))


def _missing_files(lp: LoadedPolicy, text: str) -> list[str]:
    """Examples and exemplars that are not files, or not of a type clipguard decodes."""
    from pipeline.decode import content_type_for

    root = yaml.compose(text, Loader=yaml.SafeLoader)
    problems: list[str] = []

    def check(node: yaml.Node, where: str, *, media: bool) -> None:
        if not isinstance(node, yaml.ScalarNode):
            return
        at = f"{lp.path}:{node.start_mark.line + 1}:{node.start_mark.column + 1}: {where}"
        try:
            file = lp.resolve(str(node.value))
        except PolicyError as e:  # leads out of the policy's folder
            problems.append(f"{at}: {e}")
            return
        if not file.is_file():
            problems.append(f"{at}: no such file: {file}")
            return
        if media:
            try:
                content_type_for(file)
            except DecodeError as e:
                problems.append(f"{at}: {e}")

    labels = child(root, "labels")
    if isinstance(labels, yaml.SequenceNode):
        for i, label in enumerate(labels.value):
            exemplars = child(label, "exemplars")
            if isinstance(exemplars, yaml.SequenceNode):
                for j, node in enumerate(exemplars.value):
                    check(node, f"labels.{i}.exemplars.{j}", media=False)
    examples = child(root, "examples")
    if isinstance(examples, yaml.SequenceNode):
        for i, example in enumerate(examples.value):
            node = child(example, "path")
            if node is not None:
                check(node, f"examples.{i}.path", media=True)
    return problems
