"""Writing thresholds back into a policy file: a text edit that keeps comments and layout,
validated before it atomically replaces the file."""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import yaml

from pipeline.errors import ConfigError, PolicyError
from pipeline.policies.schema import LoadedPolicy, Rule, load_policy, parse_policy
from pipeline.policies.tools.calibrate import DECIMALS
from pipeline.policies.tools.nodes import child, label_node

__all__ = ["write_threshold", "write_thresholds"]


def write_threshold(loaded_policy: LoadedPolicy, label: str, threshold: float) -> LoadedPolicy:
    """Set ``label``'s threshold in the policy file (its ``probability`` for a probability
    label), add 1 to ``version`` and set ``calibrated: true`` where the file has that key.

    The file is edited as text, so comments and layout stay as they were; the result is
    validated before it replaces the file (atomically). Returns the policy loaded again.
    Raises :class:`~pipeline.errors.PolicyError` if the file changed since it was loaded.
    """
    return write_thresholds(loaded_policy, {label: threshold})


def write_thresholds(loaded_policy: LoadedPolicy, thresholds: Mapping[str, float]) -> LoadedPolicy:
    """:func:`write_threshold` for several labels at once (one version bump)."""
    lp = loaded_policy
    path = lp.path
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise PolicyError(f"{path}: cannot read policy file: {e.strerror or e}") from e
    if hashlib.sha256(raw).hexdigest() != lp.sha256:
        raise PolicyError(f"{path}: the file changed since it was loaded; load it again")
    text = raw.decode("utf-8")
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    edits: list[tuple[int, int, str]] = []  # (start, end, new text) in characters
    expected: dict[str, tuple[Rule, float]] = {}
    for name, value in thresholds.items():
        try:
            label = lp.policy.label(name)
        except KeyError:
            names = ", ".join(lab.name for lab in lp.policy.labels)
            raise ConfigError(
                f"policy {lp.policy.id!r} has no label {name!r}; its labels: {names}"
            ) from None
        rule: Rule = label.rule
        literal = _number(value)
        node = child(label_node(root, name), rule)
        if not isinstance(node, yaml.ScalarNode):
            raise PolicyError(f"{path}: cannot find the {rule} of label {name!r} to edit")
        edits.append((node.start_mark.index, node.end_mark.index, literal))
        expected[name] = (rule, float(literal))
    version = child(root, "version")
    if not isinstance(version, yaml.ScalarNode):
        raise PolicyError(f"{path}: cannot find the version to edit")
    edits.append((version.start_mark.index, version.end_mark.index, str(lp.policy.version + 1)))
    calibrated = child(root, "calibrated")
    if isinstance(calibrated, yaml.ScalarNode):
        edits.append((calibrated.start_mark.index, calibrated.end_mark.index, "true"))
    new = text
    for start, end, literal in sorted(edits, reverse=True):
        new = new[:start] + literal + new[end:]
    policy = parse_policy(new, path=path)  # PolicyError, with the line, if the value is invalid
    for name, (rule, value) in expected.items():
        written = getattr(policy.label(name), rule)
        if written != value:
            raise PolicyError(f"{path}: editing the {rule} of {name!r} did not take; not written")
    if policy.version != lp.policy.version + 1:
        raise PolicyError(f"{path}: editing the version did not take; not written")
    _replace(path, new.encode("utf-8"))
    return load_policy(path)


def _number(value: float) -> str:
    """``value`` as a short YAML float: 4 decimals, trailing zeros dropped (0.45, -0.1, 1.0)."""
    if not (isinstance(value, int | float) and math.isfinite(value)):
        raise ConfigError(f"a threshold must be a finite number, not {value!r}")
    text = f"{value:.{DECIMALS}f}".rstrip("0")
    text = text + "0" if text.endswith(".") else text
    return "0.0" if text == "-0.0" else text


def _replace(path: Path, data: bytes) -> None:
    """Write ``data`` over ``path`` atomically, keeping its permissions."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, path.stat().st_mode & 0o7777)
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise PolicyError(f"{path}: cannot write policy file: {e.strerror or e}") from e
