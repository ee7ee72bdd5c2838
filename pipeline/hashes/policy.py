"""The settings of a hash policy (``kind: hash``): which banks to match and how strictly.

A hash policy sits beside the CLIP policies in the policy set and goes through the same
temporal rules and flag events; it names banks instead of prompts::

    id: known-terror-content
    version: 1
    kind: hash
    description: Known terrorist propaganda from the GIFCT hash list.
    owner: trust-and-safety@example.com
    severity: critical          # low | medium | high | critical
    action: block               # flag | review | block
    mode: enforce               # enforce | shadow (matched and counted, never flagged)
    banks: [gifct, internal-terror]
    signals: [pdq, vpdq, md5]   # which entries to match (default: all three)
    max_distance: 31            # PDQ Hamming distance, bits of 256 (ThreatExchange's default)
    min_quality: 50             # frames of lower PDQ quality are not matched
    dihedral: false             # also match mirrored and rotated copies (8 hashes a frame)
    video: {window_s: 10, query_match_percent: 80, compared_match_percent: 0}
    temporal: {k: 1, n: 1}      # a single matching frame is enough by default

:class:`HashPolicy` validates that document (pydantic, strict, unknown keys refused, frozen).
Bank names are checked against the banks in force when the policy set is loaded (the bank
store's snapshot), not here.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipeline.hashes.bank import check_bank_name
from pipeline.hashes.index import MAX_DISTANCE
from pipeline.hashes.match import DEFAULT_MAX_DISTANCE, DEFAULT_MIN_QUALITY
from pipeline.hashes.signals import SignalType
from pipeline.hashes.video import COMPARED_MATCH_PERCENT, QUERY_MATCH_PERCENT
from pipeline.policies.schema import Temporal

__all__ = ["HashPolicy", "VideoMatching"]

_ID = r"^[a-z0-9][a-z0-9_-]{0,63}$"
_Text = Annotated[str, Field(min_length=1, max_length=500)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


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
    """A ``kind: hash`` policy (format in the module docstring)."""

    id: Annotated[str, Field(pattern=_ID)]
    version: Annotated[int, Field(ge=1)]
    kind: Literal["hash"]
    description: _Text
    owner: _Text
    severity: Literal["low", "medium", "high", "critical"]
    action: Literal["flag", "review", "block"]
    mode: Literal["enforce", "shadow"] = "enforce"
    banks: Annotated[list[str], Field(min_length=1, max_length=100)]
    signals: Annotated[list[SignalType], Field(min_length=1)] = ["pdq", "vpdq", "md5"]
    max_distance: Annotated[int, Field(ge=0, le=MAX_DISTANCE)] = DEFAULT_MAX_DISTANCE
    min_quality: Annotated[int, Field(ge=0, le=100)] = DEFAULT_MIN_QUALITY
    dihedral: bool = False
    video: VideoMatching = VideoMatching()
    temporal: Temporal = Temporal()

    @field_validator("banks")
    @classmethod
    def _bank_names(cls, banks: list[str]) -> list[str]:
        for b in banks:
            check_bank_name(b)
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
