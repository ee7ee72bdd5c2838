"""Moderation policies: the YAML format, strict validation with file:line:column errors, and
loading policies from files and folders.

One policy a file, named after its id (``policies/weapons.yaml`` holds ``id: weapons``)::

    id: red-triangle
    version: 3
    description: A red triangle anywhere in the frame.
    owner: trust-and-safety@example.com
    severity: medium            # low | medium | high | critical
    action: flag                # flag | review | block
    mode: enforce               # enforce | shadow (scored and counted, never flagged)
    model: clipguard-demo       # the model the thresholds were calibrated for
    labels:
      - name: red-triangle
        prompts: [a red triangle, red triangle]
        templates: ["{}", "a photo of {}"]   # each prompt in each template
        negatives: [a red square, a purple triangle]
        exemplars: [examples/red-triangle.png]   # images whose embeddings join the prompts
        threshold: 0.28         # cosine; or `probability: 0.6` (softmax against negatives),
                                # or `sigmoid: 0.3` (SigLIP's per-prompt probability)
        margin: 0.02            # and beat the best negative by this much
    temporal: {k: 2, n: 3, close_after: 2, cooldown_s: 0}
    examples:
      - {path: examples/clip.mp4, expect: flag, label: red-triangle, start_s: 4, end_s: 9}

A policy file is one of two kinds. The one above (``kind: clip``, the default) scores frames
with a CLIP model; a ``kind: hash`` policy matches frames and files against hash banks of known
content (:mod:`pipeline.hashes`) and goes through the same temporal rules and flag events::

    id: known-terror-content
    version: 1
    kind: hash
    description: Known terrorist propaganda from the GIFCT hash list.
    owner: trust-and-safety@example.com
    severity: critical
    action: block
    mode: enforce
    banks: [gifct, internal-terror]   # bank names, checked against the banks in force
    signals: [pdq, vpdq, md5]   # which entries to match (default: all three)
    max_distance: 31            # PDQ Hamming distance, bits of 256 (ThreatExchange's default)
    min_quality: 50             # frames of lower PDQ quality are not matched
    dihedral: false             # also match mirrored and rotated copies (8 hashes a frame)
    video: {window_s: 10, query_match_percent: 80, compared_match_percent: 0}
    temporal: {k: 1, n: 1}      # a single matching frame is enough by default

Files are read with PyYAML's safe loader only. Every problem (unknown key, wrong type, empty
prompt list, duplicate label or policy id, bad threshold) is a :class:`PolicyError` naming the
file, line and column and what was expected.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from pipeline.decode.access import InputAccess, open_input_file
from pipeline.errors import DecodeError, PolicyError
from pipeline.hashes.signals import (
    BANK_NAME_PATTERN,
    COMPARED_MATCH_PERCENT,
    DEFAULT_MAX_DISTANCE,
    DEFAULT_MIN_QUALITY,
    MAX_DISTANCE,
    QUERY_MATCH_PERCENT,
    SignalType,
)

__all__ = [
    "HASH_LABEL",
    "MAX_MEDIA_BYTES",
    "MAX_POLICY_BYTES",
    "RULES",
    "Example",
    "HashPolicy",
    "Label",
    "LoadedHashPolicy",
    "LoadedPolicies",
    "LoadedPolicy",
    "Policy",
    "Rule",
    "Temporal",
    "VideoMatching",
    "load_document",
    "load_policies",
    "load_policy",
    "parse_document",
    "parse_policy",
    "policy_files",
]

_ID = r"^[a-z0-9][a-z0-9_-]{0,63}$"
_Text = Annotated[str, Field(min_length=1, max_length=500)]

#: The label of a hash policy's incidents (``policy/match`` in records); whole-file matches of
#: scans are labelled with their signal type (``policy/md5``, ``policy/vpdq``).
HASH_LABEL = "match"

#: A label's decision rule, as its YAML key: a cosine ``threshold``, a softmax ``probability``
#: against the label's negatives (CLIP), or a ``sigmoid`` probability (SigLIP).
Rule = Literal["threshold", "probability", "sigmoid"]
RULES: tuple[Rule, ...] = ("threshold", "probability", "sigmoid")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Label(_Strict):
    name: Annotated[str, Field(pattern=_ID)]
    prompts: Annotated[list[_Text], Field(min_length=1)]
    templates: list[_Text] = ["{}"]
    negatives: list[_Text] = []
    exemplars: list[_MediaPath] = []  # relative to the policy file, inside its folder
    threshold: Annotated[float, Field(gt=-1.0, le=1.0)] | None = None
    probability: Annotated[float, Field(gt=0.0, lt=1.0)] | None = None
    sigmoid: Annotated[float, Field(gt=0.0, lt=1.0)] | None = None
    margin: Annotated[float, Field(ge=0.0, le=2.0)] | None = None

    @field_validator("threshold", "probability", "sigmoid", "margin", mode="before")
    @classmethod
    def _int_is_a_number(cls, v: Any) -> Any:
        return float(v) if isinstance(v, int) and not isinstance(v, bool) else v

    @field_validator("templates")
    @classmethod
    def _templates_have_a_slot(cls, v: list[str]) -> list[str]:
        for t in v:
            if t.count("{}") != 1 or re.search(r"\{(?!\})|(?<!\{)\}", t):
                raise ValueError(
                    f"template {t!r} must contain exactly one '{{}}' and no other braces"
                )
        return v

    @model_validator(mode="after")
    def _one_rule(self) -> Label:
        given = [r for r in RULES if getattr(self, r) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one decision rule: `threshold` (cosine), `probability` (softmax "
                "against the negatives) or `sigmoid` (SigLIP's probability)"
            )
        if (self.probability is not None or self.margin is not None) and not self.negatives:
            raise ValueError("`probability` and `margin` compare against `negatives`; list some")
        return self

    @property
    def rule(self) -> Rule:
        """The key of its decision rule: ``threshold``, ``probability`` or ``sigmoid``."""
        return next(r for r in RULES if getattr(self, r) is not None)

    @property
    def cutoff(self) -> float:
        """The value its rule compares the label's score with."""
        value: float = getattr(self, self.rule)
        return value

    def texts(self) -> list[str]:
        """Every prompt in every template, in order, without duplicates."""
        return list(dict.fromkeys(t.replace("{}", p) for p in self.prompts for t in self.templates))

    def negative_texts(self) -> list[str]:
        return list(
            dict.fromkeys(t.replace("{}", n) for n in self.negatives for t in self.templates)
        )


class Temporal(_Strict):
    k: Annotated[int, Field(ge=1)] = 1  # open when k of the last n sampled frames pass...
    n: Annotated[int, Field(ge=1)] = 1
    min_duration_s: Annotated[float, Field(ge=0.0)] = 0.0  # ...and passing has lasted this long
    close_after: Annotated[int, Field(ge=1)] = 1  # close after this many frames below in a row
    cooldown_s: Annotated[float, Field(ge=0.0)] = 0.0  # no new incident this soon after a close

    @field_validator("min_duration_s", "cooldown_s", mode="before")
    @classmethod
    def _int_is_a_number(cls, v: Any) -> Any:
        return float(v) if isinstance(v, int) and not isinstance(v, bool) else v

    @model_validator(mode="after")
    def _k_within_n(self) -> Temporal:
        if self.k > self.n:
            raise ValueError(f"k ({self.k}) cannot exceed n ({self.n})")
        return self


#: Largest policy file read, bytes.
MAX_POLICY_BYTES: Final = 256 * 1024
#: Largest exemplar or example file read, bytes.
MAX_MEDIA_BYTES: Final = 64 * 1024 * 1024
_MAX_DEPTH: Final = 32  # nesting of mappings and sequences in a policy file


def _inside_folder(value: str) -> str:
    """A media path of a policy: relative to its file, never climbing out of its folder."""
    p = Path(value)
    if p.is_absolute() or value.startswith(("~", "\\")) or re.match(r"^[A-Za-z]:", value):
        raise ValueError(f"{value!r}: must be relative to the policy file, not absolute")
    if ".." in p.parts:
        raise ValueError(f"{value!r}: must stay inside the policy's folder (no '..')")
    return value


_MediaPath = Annotated[_Text, AfterValidator(_inside_folder)]


class Example(_Strict):
    path: _MediaPath  # image or video, relative to the policy file, inside its folder
    expect: Literal["flag", "no_flag"]
    label: Annotated[str, Field(pattern=_ID)] | None = None  # default: any label of the policy
    start_s: Annotated[float, Field(ge=0.0)] | None = None  # for videos: where the flag should
    end_s: Annotated[float, Field(ge=0.0)] | None = None  # ...be, within one sampling interval

    @field_validator("start_s", "end_s", mode="before")
    @classmethod
    def _int_is_a_number(cls, v: Any) -> Any:
        return float(v) if isinstance(v, int) and not isinstance(v, bool) else v

    @model_validator(mode="after")
    def _range(self) -> Example:
        if self.start_s is not None and self.end_s is not None and self.end_s < self.start_s:
            raise ValueError("end_s is before start_s")
        return self


class Policy(_Strict):
    id: Annotated[str, Field(pattern=_ID)]
    version: Annotated[int, Field(ge=1)]
    description: _Text
    owner: _Text
    severity: Literal["low", "medium", "high", "critical"]
    action: Literal["flag", "review", "block"]
    mode: Literal["enforce", "shadow"] = "enforce"
    model: _Text | None = None  # the model its thresholds were written for
    calibrated: bool = False  # thresholds measured on labelled data with that model
    labels: Annotated[list[Label], Field(min_length=1)]
    temporal: Temporal = Temporal()
    examples: list[Example] = []

    @field_validator("labels")
    @classmethod
    def _unique_labels(cls, labels: list[Label]) -> list[Label]:
        names = [label.name for label in labels]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate label names: {', '.join(dupes)}")
        return labels

    @model_validator(mode="after")
    def _examples_name_labels(self) -> Policy:
        names = [label.name for label in self.labels]
        for ex in self.examples:
            if ex.label is not None and ex.label not in names:
                raise ValueError(f"example {ex.path!r} names unknown label {ex.label!r}")
        return self

    def label(self, name: str) -> Label:
        for label in self.labels:
            if label.name == name:
                return label
        raise KeyError(name)


class VideoMatching(_Strict):
    """vPDQ matching of whole files (scans) and of a sliding window of a stream."""

    window_s: Annotated[float, Field(gt=0.0, le=3600.0)] = 10.0  # streams: the window compared
    query_match_percent: Annotated[float, Field(ge=0.0, le=100.0)] = QUERY_MATCH_PERCENT
    compared_match_percent: Annotated[float, Field(ge=0.0, le=100.0)] = COMPARED_MATCH_PERCENT

    @field_validator("window_s", "query_match_percent", "compared_match_percent", mode="before")
    @classmethod
    def _int_is_a_number(cls, v: Any) -> Any:
        return float(v) if isinstance(v, int) and not isinstance(v, bool) else v


class HashPolicy(_Strict):
    """A ``kind: hash`` policy (format in the module docstring). Bank names are checked
    against the banks in force when the policy set is loaded, not here."""

    id: Annotated[str, Field(pattern=_ID)]
    version: Annotated[int, Field(ge=1)]
    kind: Literal["hash"]
    description: _Text
    owner: _Text
    severity: Literal["low", "medium", "high", "critical"]
    action: Literal["flag", "review", "block"]
    mode: Literal["enforce", "shadow"] = "enforce"
    banks: Annotated[
        list[Annotated[str, Field(pattern=BANK_NAME_PATTERN)]], Field(min_length=1, max_length=100)
    ]
    signals: Annotated[list[SignalType], Field(min_length=1)] = ["pdq", "vpdq", "md5"]
    max_distance: Annotated[int, Field(ge=0, le=MAX_DISTANCE)] = DEFAULT_MAX_DISTANCE
    min_quality: Annotated[int, Field(ge=0, le=100)] = DEFAULT_MIN_QUALITY
    dihedral: bool = False
    video: VideoMatching = VideoMatching()
    temporal: Temporal = Temporal()

    @field_validator("banks")
    @classmethod
    def _unique_banks(cls, banks: list[str]) -> list[str]:
        dupes = sorted({b for b in banks if banks.count(b) > 1})
        if dupes:
            raise ValueError(f"banks listed twice: {', '.join(dupes)}")
        return banks

    @field_validator("signals")
    @classmethod
    def _unique_signals(cls, signals: list[SignalType]) -> list[SignalType]:
        if len(set(signals)) != len(signals):
            raise ValueError("a signal type is listed twice")
        return signals


@dataclass(frozen=True)
class LoadedPolicy:
    policy: Policy
    path: Path  # the file it came from
    sha256: str  # of the file's bytes

    def resolve(self, relative: str) -> Path:
        """A path from the policy (exemplar, example) relative to the policy file; it must
        stay inside the policy's folder once symlinks are resolved (:class:`PolicyError`)."""
        folder = os.path.realpath(self.path.parent)
        target = os.path.realpath(self.path.parent / _inside_or_error(relative, self.path))
        if not (target == folder or target.startswith(folder.rstrip(os.sep) + os.sep)):
            raise PolicyError(
                f"{self.path}: {relative!r} leads outside the policy's folder ({target})"
            )
        return self.path.parent / relative

    def media_access(self) -> InputAccess:
        """What reading this policy's exemplars and examples may reach: its folder."""
        return InputAccess(roots=(str(self.path.parent),))


def _inside_or_error(relative: str, file: Path) -> str:
    try:
        return _inside_folder(relative)
    except ValueError as e:
        raise PolicyError(f"{file}: {e}") from None


@dataclass(frozen=True)
class LoadedHashPolicy:
    """A ``kind: hash`` policy and the file it came from."""

    policy: HashPolicy
    path: Path
    sha256: str


# --------------------------------------------------------------------------------------------
# YAML with positions


class _Node:
    """Where each value of a YAML document sits: (path) -> (line, column), 1-based."""

    def __init__(self) -> None:
        self.marks: dict[tuple[str | int, ...], tuple[int, int]] = {}  # where values start
        self.keys: dict[tuple[str | int, ...], tuple[int, int]] = {}  # where their keys are

    def locate(self, loc: Sequence[str | int], *, key: bool = False) -> tuple[int, int]:
        path = tuple(loc)
        if key and path in self.keys:
            return self.keys[path]
        while path and path not in self.marks:
            path = path[:-1]
        return self.marks.get(path, (1, 1))


_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"


def _to_python(node: yaml.Node, path: tuple[str | int, ...], where: _Node, file: Path) -> Any:
    where.marks[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
    plain = None  # scalars: the safe constructor refuses unknown tags
    if isinstance(node, yaml.MappingNode):
        plain = _MAP_TAG
    elif isinstance(node, yaml.SequenceNode):
        plain = _SEQ_TAG
    if plain is not None and node.tag != plain:
        line, col = where.marks[path]
        raise PolicyError(
            f"{file}:{line}:{col}: the tag {node.tag} is not allowed (plain YAML only)"
        )
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key_value = _scalar(key_node, file)
            if not isinstance(key_value, str):
                line, col = key_node.start_mark.line + 1, key_node.start_mark.column + 1
                raise PolicyError(f"{file}:{line}:{col}: keys must be strings, not {key_value!r}")
            if key_value in out:
                line, col = key_node.start_mark.line + 1, key_node.start_mark.column + 1
                raise PolicyError(f"{file}:{line}:{col}: duplicate key {key_value!r}")
            where.keys[(*path, key_value)] = (
                key_node.start_mark.line + 1,
                key_node.start_mark.column + 1,
            )
            out[key_value] = _to_python(value_node, (*path, key_value), where, file)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_to_python(v, (*path, i), where, file) for i, v in enumerate(node.value)]
    return _scalar(node, file)


def _scalar(node: yaml.Node, file: Path) -> Any:
    if not isinstance(node, yaml.ScalarNode):
        line, col = node.start_mark.line + 1, node.start_mark.column + 1
        raise PolicyError(f"{file}:{line}:{col}: expected a plain value here")
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node, deep=True)
    except yaml.YAMLError as e:
        line, col = node.start_mark.line + 1, node.start_mark.column + 1
        raise PolicyError(
            f"{file}:{line}:{col}: the tag {node.tag} is not allowed (plain YAML only): "
            f"{getattr(e, 'problem', e)}"
        ) from e
    finally:
        loader.dispose()


def _describe(err: Any) -> str:
    kind = err.get("type", "")
    msg = str(err.get("msg", "invalid value"))
    if kind == "extra_forbidden":
        return "unknown key (not part of the policy format; check the spelling)"
    if kind == "missing":
        return "required key is missing"
    if kind.endswith("_type") or kind == "literal_error":
        got = err.get("input")
        return f"{msg.lower()} (got {type(got).__name__} {got!r})"
    return msg.removeprefix("Value error, ")


def _plain_events(text: str, file: Path) -> None:
    """Refuse anchors, aliases and deep nesting before a node is built: aliases expand
    without limit (each level can multiply the document) and a self-referencing one recurses;
    the parser's events are read in one linear pass."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        mark = event.start_mark
        where = f"{file}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(file)
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise PolicyError(f"{where}: YAML anchors and aliases are not allowed")
        if isinstance(event, yaml.MappingStartEvent | yaml.SequenceStartEvent):
            depth += 1
            if depth > _MAX_DEPTH:
                raise PolicyError(f"{where}: nested deeper than {_MAX_DEPTH} levels")
        elif isinstance(event, yaml.MappingEndEvent | yaml.SequenceEndEvent):
            depth -= 1


def parse_document(text: str, *, path: Path | str = "<string>") -> Policy | HashPolicy:
    """Validate one policy document of either kind (``kind: hash`` gives a
    :class:`HashPolicy`, ``kind: clip`` or none a :class:`Policy`); :class:`PolicyError` with
    file:line:col on any problem. Plain YAML only: no tags, anchors or aliases, at most 32
    levels deep."""
    file = Path(path)
    if len(text) > MAX_POLICY_BYTES:
        raise PolicyError(f"{file}: over {MAX_POLICY_BYTES} characters; a policy is smaller")
    try:
        _plain_events(text, file)
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        line, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        raise PolicyError(f"{file}:{line}:{col}: not valid YAML: {e.problem}") from e
    except yaml.YAMLError as e:
        raise PolicyError(f"{file}: not valid YAML: {e}") from e
    if root is None:
        raise PolicyError(f"{file}:1:1: the file is empty; expected a policy mapping")
    where = _Node()
    data = _to_python(root, (), where, file)
    if not isinstance(data, dict):
        raise PolicyError(
            f"{file}:1:1: expected a mapping of policy keys, got {type(data).__name__}"
        )
    kind = data.get("kind", "clip")
    model: type[Policy] | type[HashPolicy]
    if kind == "hash":
        model = HashPolicy
    elif kind == "clip":
        model = Policy
        data.pop("kind", None)  # the default kind is not part of a CLIP policy's content
    else:
        line, col = where.locate(["kind"])
        raise PolicyError(f"{file}:{line}:{col}: kind: {kind!r} is not 'clip' or 'hash'")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            loc = [p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-"))]
            line, col = where.locate(loc, key=err.get("type") == "extra_forbidden")
            dotted = ".".join(str(p) for p in loc) or "(policy)"
            problems.append(f"{file}:{line}:{col}: {dotted}: {_describe(err)}")
        raise PolicyError("\n".join(problems)) from None


def parse_policy(text: str, *, path: Path | str = "<string>") -> Policy:
    """Validate one CLIP policy document; :class:`PolicyError` with file:line:col on any
    problem (a hash policy is one)."""
    policy = parse_document(text, path=path)
    if not isinstance(policy, Policy):
        raise PolicyError(f"{path}:1:1: a hash policy (kind: hash), not a CLIP policy")
    return policy


def load_document(path: str | Path) -> LoadedPolicy | LoadedHashPolicy:
    """One policy file of either kind, whose id must be its file name."""
    path = Path(path)
    try:
        handle, _size = open_input_file(path, None, limit=MAX_POLICY_BYTES, label=str(path))
        with handle:
            raw = handle.read(MAX_POLICY_BYTES + 1)
    except DecodeError as e:
        raise PolicyError(f"cannot read policy file: {e}") from e
    if len(raw) > MAX_POLICY_BYTES:
        raise PolicyError(f"{path}: over the limit of {MAX_POLICY_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise PolicyError(f"{path}: not UTF-8 text: {e}") from e
    policy = parse_document(text, path=path)
    if path.stem != policy.id:
        where = _Node()
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        assert root is not None  # parse_document accepted it
        _to_python(root, (), where, path)
        line, col = where.locate(["id"], key=True)
        raise PolicyError(
            f"{path}:{line}:{col}: id: policy id {policy.id!r} must match the file name "
            f"({path.stem!r}); one policy a file, named after its id"
        )
    sha256 = hashlib.sha256(raw).hexdigest()
    if isinstance(policy, HashPolicy):
        return LoadedHashPolicy(policy=policy, path=path, sha256=sha256)
    return LoadedPolicy(policy=policy, path=path, sha256=sha256)


def load_policy(path: str | Path) -> LoadedPolicy:
    """One CLIP policy file (:class:`PolicyError` for a hash policy)."""
    lp = load_document(path)
    if not isinstance(lp, LoadedPolicy):
        raise PolicyError(f"{lp.path}:1:1: a hash policy (kind: hash), not a CLIP policy")
    return lp


def policy_files(paths: Iterable[str | Path]) -> list[Path]:
    """Policy files named directly, and ``*.yaml``/``*.yml`` directly inside named folders."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(q for q in p.iterdir() if q.suffix in (".yaml", ".yml") and q.is_file())
        elif p.is_file():
            out.append(p)
        else:
            raise PolicyError(f"{p}: no such policy file or folder")
    return out


class LoadedPolicies:
    """Policies loaded together; ids are unique across them (both kinds). Iterating gives the
    CLIP policies, :attr:`hashes` the hash policies. Compiled for a model they become a
    :class:`~pipeline.policies.snapshot.PolicySet`."""

    def __init__(
        self, loaded: Sequence[LoadedPolicy], hashes: Sequence[LoadedHashPolicy] = ()
    ) -> None:
        seen: dict[str, Path] = {}
        every: list[LoadedPolicy | LoadedHashPolicy] = [*loaded, *hashes]
        for lp in every:
            if lp.policy.id in seen:
                other = seen[lp.policy.id]
                raise PolicyError(
                    f"{lp.path}: duplicate policy id {lp.policy.id!r} (also in {other})"
                )
            seen[lp.policy.id] = lp.path
        self.loaded = list(loaded)
        self.hashes = list(hashes)

    def __iter__(self) -> Iterator[LoadedPolicy]:
        return iter(self.loaded)

    def __len__(self) -> int:
        return len(self.loaded)

    def only(self, policy_ids: Iterable[str]) -> LoadedPolicies:
        """The policies named, in this collection's order."""
        wanted = set(policy_ids)
        return LoadedPolicies(
            [lp for lp in self.loaded if lp.policy.id in wanted],
            [hp for hp in self.hashes if hp.policy.id in wanted],
        )

    def get(self, policy_id: str) -> LoadedPolicy:
        """The CLIP policy with that id; KeyError if there is none."""
        for lp in self.loaded:
            if lp.policy.id == policy_id:
                return lp
        raise KeyError(policy_id)

    @property
    def digest(self) -> str:
        """A short hash of every policy's content: names the policy set in output records.
        (Hash policies count only when there are some, so a set of CLIP policies keeps the
        digest it always had.)"""
        h = hashlib.sha256()
        everything: list[LoadedPolicy | LoadedHashPolicy] = [*self.loaded, *self.hashes]
        for lp in sorted(everything, key=lambda lp: lp.policy.id):
            h.update(json.dumps(lp.policy.model_dump(mode="json"), sort_keys=True).encode())
        return h.hexdigest()[:16]


def load_policies(paths: Iterable[str | Path]) -> LoadedPolicies:
    """Load every policy file (of either kind) named or found in the named folders; all
    errors are reported together, one per line."""
    paths = list(paths)
    files = policy_files(paths)
    if not files:
        raise PolicyError(f"no policy files (*.yaml) found in {', '.join(map(str, paths))}")
    loaded: list[LoadedPolicy] = []
    hashes: list[LoadedHashPolicy] = []
    errors: list[str] = []
    for f in files:
        try:
            lp = load_document(f)
        except PolicyError as e:
            errors.append(str(e))
            continue
        if isinstance(lp, LoadedHashPolicy):
            hashes.append(lp)
        else:
            loaded.append(lp)
    if errors:
        raise PolicyError("\n".join(errors))
    return LoadedPolicies(loaded, hashes)
