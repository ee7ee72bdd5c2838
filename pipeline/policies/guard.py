"""Policies' regression examples as the accuracy guard's decision check.

:func:`regression_set` turns the still-image regression examples of a policy set into a
:class:`pipeline.models.guard.RegressionSet`: their frames, fitted to the model input as live
frames are, and a function giving each frame's decision (which of its policy's labels pass,
or the example's own label) from embeddings through the compiled policies. A converted image
tower whose decisions differ from fp32's on any of them is refused. Video examples are left
out: their decision runs through the temporal rule over many frames, and their frames would
make a check at every start much slower.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Sequence

import numpy as np
import numpy.typing as npt

from pipeline.decode import IMAGE_TYPES, DecodeOptions, Limits, content_type_for, decode_uri
from pipeline.errors import DecodeError, PolicyError, UnsupportedMedia
from pipeline.models.guard import RegressionSet
from pipeline.policies.schema import MAX_MEDIA_BYTES
from pipeline.policies.snapshot import PolicySet

__all__ = ["regression_set"]

_log = logging.getLogger(__name__)


def regression_set(policies: PolicySet, resolution: int) -> RegressionSet | None:
    """The still-image regression examples of ``policies`` (None when there are none)."""
    compiled = policies.compiled
    frames: list[npt.NDArray[np.uint8]] = []
    keys: list[frozenset[str]] = []  # per frame: the label keys its decision is made of
    for lp in policies:
        for example in lp.policy.examples:
            try:
                path = lp.resolve(example.path)
                if content_type_for(path) not in IMAGE_TYPES:
                    continue
                # inside the policy's folder, a regular file within the size cap
                options = DecodeOptions(
                    resolution, fit="pad", limits=Limits(max_input_bytes=MAX_MEDIA_BYTES)
                )
                result = decode_uri(path, options, access=lp.media_access())
            except PolicyError as e:
                _log.warning("regression example left out of the accuracy guard: %s", e)
                continue
            except UnsupportedMedia:
                continue
            except DecodeError as e:  # `clipguard policy test` reports it; the guard skips it
                _log.warning("regression example %s left out of the accuracy guard: %s", path, e)
                continue
            prefix = f"{lp.policy.id}/"
            wanted = None if example.label is None else prefix + example.label
            keys.append(
                frozenset(
                    lab.key
                    for lab in compiled.labels
                    if lab.key.startswith(prefix) and (wanted is None or lab.key == wanted)
                )
            )
            frames.append(result.frames[0].image)
    if not frames:
        return None

    def decide(embeddings: npt.NDArray[np.float32]) -> Sequence[Hashable]:
        decisions = compiled.decide(embeddings)
        return [
            tuple(sorted(d.key for d in frame if d.passed and d.key in want))
            for frame, want in zip(decisions, keys, strict=True)
        ]

    return RegressionSet(
        name="policy examples",
        frames=np.stack(frames),  # (N, R, R, 3)
        decide=decide,
        fingerprint=compiled.policy_set,
    )
