"""Writing a policy's next version: every change the studio makes to a policy file goes
through :meth:`PolicyWriter.write`, which checks that the file is still the one the author
saw, validates the new text with the same linter as ``clipguard policy lint``, makes sure the
version went up, writes the file atomically, keeps both versions' text in the studio's history
folder, and appends the change to the audit log. Nothing is written silently."""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from consumers.studio.audit import AuditEntry, AuditLog
from pipeline.errors import PolicyError
from pipeline.policies.schema import LoadedHashPolicy, LoadedPolicy, load_document, parse_document
from pipeline.policies.tools.lint import lint_text
from pipeline.policies.tools.nodes import child, label_node

__all__ = [
    "PolicyWriter",
    "Written",
    "add_example",
    "set_lists",
    "set_mode",
    "set_version",
    "yaml_diff",
]


@dataclass(frozen=True)
class Written:
    policy: LoadedPolicy | LoadedHashPolicy
    entry: AuditEntry


def yaml_diff(old: str, new: str, name: str) -> str:
    """A unified diff of two versions of a policy file."""
    return "".join(
        difflib.unified_diff(
            old.splitlines(keepends=True),
            new.splitlines(keepends=True),
            fromfile=f"{name} (now)",
            tofile=f"{name} (new)",
        )
    )


def set_version(text: str, version: int) -> str:
    """``text`` with its ``version:`` value replaced (comments and layout kept)."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    node = child(root, "version")
    if not isinstance(node, yaml.ScalarNode):
        raise PolicyError("cannot find the policy's version to change")
    return text[: node.start_mark.index] + str(version) + text[node.end_mark.index :]


def set_mode(text: str, mode: str) -> str:
    """``text`` with ``mode:`` set (added after ``action:``, or at the end, where absent)."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    node = child(root, "mode")
    if isinstance(node, yaml.ScalarNode):
        return text[: node.start_mark.index] + mode + text[node.end_mark.index :]
    after = child(root, "action")
    if isinstance(after, yaml.ScalarNode):
        end = text.find("\n", after.end_mark.index)
        end = len(text) if end < 0 else end + 1
        return text[:end] + f"mode: {mode}\n" + text[end:]
    return text.rstrip("\n") + f"\nmode: {mode}\n"


class PolicyWriter:
    """New versions of the policy files of one folder, with history and audit."""

    def __init__(self, history_dir: Path, audit: AuditLog) -> None:
        self.history_dir = history_dir
        self.audit = audit

    def write(
        self,
        lp: LoadedPolicy | LoadedHashPolicy,
        new_text: str,
        *,
        base_sha256: str,
        who: str,
        action: str,
        note: str,
        model: str | None = None,
    ) -> Written:
        """Replace ``lp``'s file with ``new_text`` as its next version.

        ``base_sha256`` is the hash of the file the author edited; a file changed since then is
        refused (:class:`PolicyError`), as is text that does not lint, keeps another id, or
        does not change anything. A version not above the current one is set to current + 1.
        """
        path = lp.path
        old_raw = path.read_bytes()
        if hashlib.sha256(old_raw).hexdigest() != base_sha256:
            raise PolicyError(
                f"{path.name} changed since you opened it (someone else saved a new version); "
                "reload the page and make your change again"
            )
        old = old_raw.decode("utf-8")
        current = parse_document(old, path=path).version
        policy = parse_document(new_text, path=path)
        if policy.version <= current:
            new_text = set_version(new_text, current + 1)
        if new_text == old:
            raise PolicyError("nothing changed")
        report = lint_text(new_text, path, model=model)
        if not report.ok:
            raise PolicyError("\n".join(report.errors))
        diff = yaml_diff(old, new_text, path.name)
        new_version = parse_document(new_text, path=path).version
        folder = self.history_dir / lp.policy.id
        folder.mkdir(parents=True, exist_ok=True)
        keep = folder / f"v{current}.yaml"
        if not keep.exists():
            _atomic_write(keep, old_raw)
        _atomic_write(path, new_text.encode("utf-8"))
        _atomic_write(folder / f"v{new_version}.yaml", new_text.encode("utf-8"))
        entry = self.audit.append(
            who=who,
            action=action,
            policy=lp.policy.id,
            file=str(path),
            from_version=current,
            to_version=new_version,
            note=note,
            diff=diff,
        )
        return Written(policy=load_document(path), entry=entry)


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file renamed into place."""
    mode = path.stat().st_mode & 0o7777 if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise PolicyError(f"{path}: cannot write: {e.strerror or e}") from e


def add_example(text: str, entry: str) -> str:
    """``text`` with ``entry`` (a one-line flow mapping such as ``{path: x.png, expect: flag}``)
    appended to its ``examples:`` list, in the list's own style (comments and layout kept)."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    node = child(root, "examples")
    if node is None:
        return text.rstrip("\n") + f"\nexamples:\n  - {entry}\n"
    if not isinstance(node, yaml.SequenceNode):
        raise PolicyError("the policy's examples are not a list")
    if node.flow_style:  # [a, b]: insert before the closing bracket
        close = node.end_mark.index - 1
        sep = ", " if node.value else ""
        return text[:close] + sep + entry + text[close:]
    last = node.value[-1]
    indent = " " * max(last.start_mark.column - 2, 0)
    end = text.find("\n", last.end_mark.index)
    end = len(text) if end < 0 else end + 1
    prefix = "" if text[:end].endswith("\n") else "\n"
    return text[:end] + f"{prefix}{indent}- {entry}\n" + text[end:]


def set_lists(text: str, label: str, lists: dict[str, list[str]]) -> str:
    """``text`` with the ``prompts`` and/or ``negatives`` of ``label`` replaced by the lists
    given, written as one-line flow lists (each item JSON-quoted, which YAML reads back
    as the same string); a list absent from the file is added after the label's ``prompts``.
    The rest of the file is kept as it is."""
    for key, items in lists.items():
        if key not in ("prompts", "negatives"):
            raise PolicyError(f"only prompts and negatives can be edited as lists, not {key!r}")
        text = _set_list(text, label, key, [i.strip() for i in items if i.strip()])
    return text


def _set_list(text: str, label: str, key: str, items: list[str]) -> str:
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    lnode = label_node(root, label)
    if not isinstance(lnode, yaml.MappingNode):
        raise PolicyError(f"no label {label!r} in the policy")
    literal = "[" + ", ".join(json.dumps(i, ensure_ascii=False) for i in items) + "]"
    pair = next(
        ((k, v) for k, v in lnode.value if isinstance(k, yaml.ScalarNode) and k.value == key),
        None,
    )
    if pair is None:
        if not items:
            return text
        anchor = next(k for k, _ in lnode.value if isinstance(k, yaml.ScalarNode))
        indent = " " * anchor.start_mark.column
        prompts = child(lnode, "prompts") or anchor
        end = text.find("\n", prompts.end_mark.index)
        end = len(text) if end < 0 else end + 1
        if isinstance(prompts, yaml.SequenceNode) and not prompts.flow_style:
            end = _line_end(text, prompts.value[-1].end_mark.index)
        return text[:end] + f"{indent}{key}: {literal}\n" + text[end:]
    key_node, value = pair
    if isinstance(value, yaml.SequenceNode) and not value.flow_style and value.value:
        colon = text.index(":", key_node.end_mark.index)
        end = _line_end(text, value.value[-1].end_mark.index)
        return text[: colon + 1] + f" {literal}\n" + text[end:]
    return text[: value.start_mark.index] + literal + text[value.end_mark.index :]


def _line_end(text: str, index: int) -> int:
    """The index just past the end of the line holding ``index``."""
    end = text.find("\n", max(index - 1, 0))
    return len(text) if end < 0 else end + 1
