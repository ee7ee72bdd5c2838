"""``policy lint``: validate policy files and check the files they name, collecting every
problem as ``file:line:col: ...`` (nothing raised)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml

from pipeline.errors import DecodeError, PolicyError
from pipeline.policies.schema import LoadedPolicies, LoadedPolicy, load_policy, policy_files
from pipeline.policies.tools.model_checks import check_against_model
from pipeline.policies.tools.nodes import child

__all__ = ["LintReport", "lint"]


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
    raised."""
    paths = list(paths)
    try:
        files = policy_files(paths)
    except PolicyError as e:
        return LintReport(policies=0, errors=tuple(str(e).splitlines()))
    if not files:
        where = ", ".join(map(str, paths))
        return LintReport(policies=0, errors=(f"no policy files (*.yaml) found in {where}",))
    loaded: list[LoadedPolicy] = []
    errors: list[str] = []
    notes: list[str] = []
    for f in files:
        try:
            lp = load_policy(f)
        except PolicyError as e:
            errors += str(e).splitlines()
            continue
        errors += _missing_files(lp)
        found = check_against_model(lp, model)
        errors += found.errors
        notes += found.notes
        loaded.append(lp)
    try:
        LoadedPolicies(loaded)
    except PolicyError as e:
        errors += str(e).splitlines()
    return LintReport(policies=len(loaded), errors=tuple(errors), notes=tuple(notes))


def _missing_files(lp: LoadedPolicy) -> list[str]:
    """Examples and exemplars that are not files, or not of a type clipguard decodes."""
    from pipeline.decode import content_type_for

    root = yaml.compose(lp.path.read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
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
