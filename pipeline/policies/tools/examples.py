"""``policy test``: score each policy's regression examples the way the pipeline does (decode,
encode, judge) and say which pass."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pipeline.errors import DecodeError
from pipeline.policies.judge import Judgement
from pipeline.policies.schema import Example, LoadedPolicies, LoadedPolicy
from pipeline.policies.snapshot import PolicySet
from pipeline.policies.tools.judging import (
    Incident,
    Media,
    compile_policies,
    decode_media,
    encode_images,
    judge_frames,
    sampling,
)
from pipeline.policies.tools.judging import incidents as found_incidents

if TYPE_CHECKING:
    from pipeline.models.base import ImageTextModel

__all__ = ["ExampleResult", "Outcome", "run_examples"]

Outcome = Literal["flag", "no_flag"]


@dataclass(frozen=True)
class ExampleResult:
    """One regression example of one policy, scored."""

    policy: str  # policy id
    path: str  # the example's path as written in the policy
    file: Path  # that path resolved against the policy file
    label: str | None  # the label it is about; None: any label of the policy
    expected: Outcome
    got: Outcome | None  # None when the file could not be decoded
    passed: bool  # got == expected (an error never passes)
    best_score: float | None  # highest cosine of the label(s) on any frame
    kind: Literal["image", "video"] | None
    window: tuple[float, float] | None  # videos with start_s/end_s: where an incident must be
    incidents: tuple[Incident, ...] = ()  # videos: every incident of the policy's labels
    error: str | None = None


def run_examples(
    policies: LoadedPolicies | PolicySet | Sequence[LoadedPolicy],
    model: ImageTextModel,
    *,
    sample_fps: float = 2.0,
    cache_dir: Path | None = None,
) -> list[ExampleResult]:
    """Score every example of every policy with ``model``, in file order.

    An image flags when at least one label of the policy (or the example's ``label``) passes
    on it. A video is sampled at ``sample_fps`` and run through the policy's temporal rule; it
    flags when an incident opens (of the example's ``label``, if named) and, when
    ``start_s``/``end_s`` are given, the incident overlaps ``[start_s - 1/fps, end_s + 1/fps]``.
    Shadow-mode policies are tested like enforced ones. A file that cannot be decoded gives a
    result with ``error`` set, which counts as a failure. Policies compile through the policy
    cache (``cache_dir``, default :func:`pipeline.policies.compile.default_cache_dir`) unless
    a compiled :class:`PolicySet` is given.
    """
    if isinstance(policies, PolicySet):
        policy_set = policies
    else:
        loaded = policies if isinstance(policies, LoadedPolicies) else LoadedPolicies(policies)
        policy_set = compile_policies(loaded, model, cache_dir)
    rule = sampling(sample_fps)
    decoded: list[tuple[LoadedPolicy, Example, Media | DecodeError]] = []
    for lp in policy_set:
        for example in lp.policy.examples:
            try:
                decoded.append((lp, example, decode_media(lp.resolve(example.path), model, rule)))
            except DecodeError as e:
                decoded.append((lp, example, e))
    # every frame of every example in one encode: far fewer model calls than one per example
    images = [im for *_, media in decoded if isinstance(media, Media) for im in media.images]
    embeddings = encode_images(model, images)
    results: list[ExampleResult] = []
    at = 0
    for lp, example, media in decoded:
        if isinstance(media, DecodeError):
            results.append(_result(lp, example, media, Judgement(), rule.fps))
            continue
        n = len(media.images)
        rows = embeddings[at : at + n]
        at += n
        judgement = judge_frames(
            policy_set.only([lp.policy.id]), model, str(lp.resolve(example.path)), media.times, rows
        )
        results.append(_result(lp, example, media, judgement, rule.fps))
    return results


def _result(
    lp: LoadedPolicy,
    example: Example,
    media: Media | DecodeError,
    judgement: Judgement,
    fps: float,
) -> ExampleResult:
    """One example's result from its frames' judgement (the policy's labels only)."""

    def result(
        got: Outcome | None,
        best: float | None,
        kind: Literal["image", "video"] | None,
        *,
        window: tuple[float, float] | None = None,
        incidents: tuple[Incident, ...] = (),
        error: str | None = None,
    ) -> ExampleResult:
        return ExampleResult(
            policy=lp.policy.id,
            path=example.path,
            file=lp.resolve(example.path),
            label=example.label,
            expected=example.expect,
            got=got,
            passed=got == example.expect,
            best_score=best,
            kind=kind,
            window=window,
            incidents=incidents,
            error=error,
        )

    if isinstance(media, DecodeError):
        return result(None, None, None, error=str(media))
    wanted = None if example.label is None else f"{lp.policy.id}/{example.label}"
    relevant = [
        [d for d in frame if wanted is None or d.key == wanted] for frame in judgement.decisions
    ]
    best = max((d.score for frame in relevant for d in frame), default=None)
    if media.kind == "image":
        flagged = any(d.passed for d in relevant[0])
        return result("flag" if flagged else "no_flag", best, "image")
    incidents = found_incidents(judgement)
    window = _window(example, fps)
    lo, hi = window if window is not None else (-math.inf, math.inf)
    flagged = any(
        (example.label is None or i.label == example.label) and i.start_s <= hi and i.end_s >= lo
        for i in incidents
    )
    got: Outcome = "flag" if flagged else "no_flag"
    return result(got, best, "video", window=window, incidents=incidents)


def _window(example: Example, fps: float) -> tuple[float, float] | None:
    """Where an incident must overlap: the example's range, widened by one sampling interval."""
    if example.start_s is None and example.end_s is None:
        return None
    slack = 1.0 / fps
    lo = example.start_s - slack if example.start_s is not None else -math.inf
    hi = example.end_s + slack if example.end_s is not None else math.inf
    return lo, hi
