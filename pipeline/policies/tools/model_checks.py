"""What a policy asks of its model, checked without loading the model's weights.

``policy lint`` checks each policy against the model it names (``model:``, or the one given on
the command line): a label's rule must be one that model produces (a ``sigmoid`` rule needs a
SigLIP model: CLIP has no logit bias), and every prompt, template and negative must fit in the
model's text context (CLIP's BPE tokenizer is bundled; a SigLIP model's tokenizer ships with its
checkpoint, so its prompts are measured only once the model is downloaded). Problems come back
as ``file:line:col: ...`` lines, notes (a check that could not run) as plain lines.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache

import yaml

from pipeline.errors import ClipguardError
from pipeline.models.registry import get_model_info
from pipeline.models.text_tokenizers import (
    ClipBpeTokenizer,
    TextTokenizer,
    check_text_length,
    load_text_tokenizer,
)
from pipeline.policies.schema import LoadedPolicy
from pipeline.policies.tools.nodes import child, label_node

__all__ = ["ModelFindings", "check_against_model"]


@dataclass
class ModelFindings:
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def check_against_model(
    lp: LoadedPolicy, model: str | None, *, text: str | None = None
) -> ModelFindings:
    """The problems of one policy with ``model`` (default: the policy's own ``model:``);
    ``text`` is the policy's YAML where it is not (yet) the file's."""
    out = ModelFindings()
    name = model or lp.policy.model
    if name is None:
        return out
    try:
        info = get_model_info(name)
    except ClipguardError:
        out.notes.append(
            f"{lp.path}: model {name!r} is not in the registry: not checked against it"
        )
        return out
    if text is None:
        text = lp.path.read_text(encoding="utf-8")
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    tokenizer = _tokenizer(info.name)
    if tokenizer is None:
        out.notes.append(
            f"{lp.path}: prompt lengths not checked: {name}'s tokenizer comes with its "
            f"checkpoint (`clipguard models download {name}`)"
        )
    for label in lp.policy.labels:
        node = label_node(root, label.name)
        if label.rule == "sigmoid" and info.family == "clip":
            at = _where(lp, child(node, "sigmoid") or node)
            out.errors.append(
                f"{at}: labels.{label.name}.sigmoid: a sigmoid rule needs a SigLIP model; "
                f"{name} is a CLIP model (use threshold, or probability with negatives)"
            )
        if tokenizer is None:
            continue
        for text in [*label.texts(), *label.negative_texts()]:
            long = check_text_length(tokenizer, text)
            if long is not None:
                out.errors.append(f"{_where(lp, node)}: labels.{label.name}: {long} ({name})")
    return out


def _where(lp: LoadedPolicy, node: yaml.Node | None) -> str:
    if node is None:
        return str(lp.path)
    return f"{lp.path}:{node.start_mark.line + 1}:{node.start_mark.column + 1}"


@cache
def _tokenizer(name: str) -> TextTokenizer | None:
    info = get_model_info(name)
    if info.family == "clip":
        return ClipBpeTokenizer(context_length=info.text_context)
    folder = info.path().parent if info.hf is not None else None
    if folder is None:
        return None
    try:
        return load_text_tokenizer(folder, family=info.family, context_length=info.text_context)
    except ClipguardError:
        return None
