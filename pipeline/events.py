"""The records clipguard publishes: a score per scored frame, flag events, dead-letter headers,
and the scan jobs' requests and status events.

The models are the contract with downstream consumers; their JSON Schemas are exported to
``schemas/`` (:func:`write_schemas`, ``python -m pipeline.events``) and a test keeps that file
current. Field ``schema`` names the record type and version of every record.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "DLQ_ATTEMPTS",
    "DLQ_ERROR_CLASS",
    "DLQ_ERROR_MESSAGE",
    "DLQ_ORIGINAL_OFFSET",
    "DLQ_ORIGINAL_PARTITION",
    "DLQ_ORIGINAL_TOPIC",
    "FLAG_SCHEMA",
    "JOB_SCHEMA",
    "JOB_STATUS_SCHEMA",
    "SCORE_SCHEMA",
    "EncoderInfo",
    "FlagEvent",
    "HashMatchInfo",
    "JobRequest",
    "JobState",
    "JobStatus",
    "ScoreRecord",
    "schemas",
    "write_schemas",
]

SCORE_SCHEMA: Final = "clipguard.score/1"
FLAG_SCHEMA: Final = "clipguard.flag/1"
JOB_SCHEMA: Final = "clipguard.job/1"
JOB_STATUS_SCHEMA: Final = "clipguard.job-status/1"

# Headers a dead letter carries beside the original value and headers.
DLQ_ERROR_CLASS = "clipguard.error.class"
DLQ_ERROR_MESSAGE = "clipguard.error.message"
DLQ_ORIGINAL_TOPIC = "clipguard.original.topic"
DLQ_ORIGINAL_PARTITION = "clipguard.original.partition"
DLQ_ORIGINAL_OFFSET = "clipguard.original.offset"
DLQ_ATTEMPTS = "clipguard.attempts"


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def to_json(self) -> bytes:
        return self.model_dump_json(by_alias=True, exclude_none=False).encode()


class EncoderInfo(_Record):
    """How a frame's embedding was computed (``ScoreRecord.encoder``): the image encoder's
    weights, precision and runtime, so records of different precisions are never mixed."""

    weights_sha256: str
    precision: Literal["fp32", "bf16", "fp16", "int8"]
    backend: str = Field(description="the runtime family: torch or openvino")
    runtime: str = Field(description="the runtime and its version")


class HashMatchInfo(BaseModel):
    """What a hash policy's flag matched: the bank entry, and how close."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bank: str
    entry_id: str
    signal_type: Literal["pdq", "vpdq", "md5"] = Field(
        description="the entry's signal type: a PDQ entry, a banked video (vPDQ) or a file (MD5)"
    )
    distance: int | None = Field(
        description="PDQ Hamming distance in bits (of 256) of the peak frame to the entry, or "
        "to the closest frame of the banked video; 0 for an MD5 match; null for a video "
        "matched as a whole (see the percentages)"
    )
    quality: int | None = Field(description="PDQ quality (0-100) of the peak frame")
    tags: list[str] = Field(description="the entry's tags")
    variant: str = Field(
        "original",
        description="which rotation or mirror of the frame matched (dihedral policies)",
    )
    query_match_percent: float | None = Field(
        None,
        description="vPDQ: share of the video's (or the stream window's) frames that match "
        "the banked video",
    )
    compared_match_percent: float | None = Field(
        None, description="vPDQ: share of the banked video's frames that are matched"
    )


class ScoreRecord(_Record):
    """One scored frame (``clipguard.scores``, key = stream id)."""

    schema_id: Literal["clipguard.score/1"] = Field(SCORE_SCHEMA, alias="schema")
    stream_id: str
    seq: int = Field(description="per-stream segment number of the input")
    frame_index: int = Field(description="presentation index of the frame within its segment")
    tile: int = Field(0, description="tile number when frames are scored as tiles")
    ts: float = Field(description="stream-timeline seconds: segment start-ts + frame offset")
    model: str
    policy_set: str = Field(description="hash of the compiled policies")
    scores: dict[str, float] = Field(
        description='"policy/label" -> score, in the unit its rule judges (see kinds)'
    )
    flagged: list[str] = Field(description='"policy/label" that passed on this frame')
    kinds: dict[str, Literal["cosine", "softmax", "sigmoid"]] | None = Field(
        None,
        description='"policy/label" -> the score its rule judges: the cosine with the '
        "label's prompts (threshold rules), the softmax probability against its negatives "
        "(probability rules) or the model's sigmoid probability (sigmoid rules, SigLIP)",
    )
    source: str | None = Field(None, description="file or URL, for batch scans")
    job_id: str | None = Field(None, description="the scan job, for scans run as Kafka jobs")
    encoder: EncoderInfo | None = Field(
        None, description="how the embedding was computed (weights, precision, runtime)"
    )
    nearest: dict[str, int | None] | None = Field(
        None,
        description="hash policies: bank -> the smallest PDQ distance (bits of 256) from this "
        "frame to the bank's entries within the policies' max_distance, null when none was "
        "that close or the frame's quality was under min_quality",
    )
    pdq_quality: int | None = Field(
        None, description="hash policies: the frame's PDQ quality (0-100)"
    )
    pdq: str | None = Field(
        None,
        description="hash policies: the frame's PDQ hash (64 hex digits, ThreatExchange's bit "
        "order), so stored records can be matched against banks added later",
        pattern="^[0-9a-f]{64}$",
    )


class FlagEvent(_Record):
    """An incident opened or closed (``clipguard.flags``, key = stream id)."""

    schema_id: Literal["clipguard.flag/1"] = Field(FLAG_SCHEMA, alias="schema")
    event_id: str = Field(description="deterministic: replays give the same id")
    state: Literal["open", "closed"]
    stream_id: str
    policy: str
    policy_version: int
    label: str
    severity: Literal["low", "medium", "high", "critical"]
    action: Literal["flag", "review", "block"]
    start_ts: float = Field(description="time of the incident's first passing frame")
    end_ts: float | None = Field(description="time of its last passing frame (closed only)")
    peak_score: float
    peak_ts: float
    threshold: float | None
    margin: float | None
    top_prompt: str | None
    model: str
    source: str | None = Field(None, description="file or URL, for batch scans")
    job_id: str | None = Field(None, description="the scan job, for scans run as Kafka jobs")
    retro: bool = Field(
        False,
        description="found afterwards in stored frames by a policy version (policy backtest "
        "--publish), not live; the same event id as the live event of the same incident",
    )
    match: HashMatchInfo | None = Field(
        None,
        description="hash policies: the bank entry matched at the peak (peak_score and "
        "threshold are then 1 - distance / 256 and 1 - max_distance / 256; a whole-file match "
        "of a scan has label md5 or vpdq)",
    )


class JobRequest(_Record):
    """A scan job: one stored video to scan (``clipguard.jobs``, key = job id).

    At most one sampling option; none means one frame a second (as ``clipguard scan``). The
    URI is read by the worker that takes the job: an absolute path or ``file://`` URL on the
    workers' file system, or an ``http(s)://`` URL (without credentials in it)."""

    schema_id: Literal["clipguard.job/1"] = Field(JOB_SCHEMA, alias="schema")
    uri: str = Field(description="absolute path, file:// URL or http(s):// URL of the video")
    sample_fps: float | None = Field(
        None, gt=0, allow_inf_nan=False, description="score this many frames per second"
    )
    keyframes: bool = Field(False, description="score keyframes only")
    scene_change: float | None = Field(
        None,
        ge=0,
        le=1,
        description="score the first frame and every scene change, with this threshold (0..1)",
    )
    fit: Literal["pad", "crop", "tiles"] = Field(
        "pad", description="how frames become the model's square input"
    )
    content_type: str | None = Field(
        None, description="media type of the input; default: from its name's extension"
    )

    @field_validator("uri")
    @classmethod
    def _readable_by_a_worker(cls, uri: str) -> str:
        parts = urlsplit(uri)
        scheme = parts.scheme.lower()
        if scheme in ("http", "https"):
            if parts.username is not None or parts.password is not None:
                raise ValueError("credentials in the URI are not accepted")
            if not parts.hostname:
                raise ValueError(f"no host in {uri!r}")
        elif scheme == "file":
            if not parts.path.startswith("/"):
                raise ValueError(f"not an absolute file URL: {uri!r}")
        elif scheme and len(scheme) > 1:
            raise ValueError(f"URL scheme {scheme!r} is not supported (http, https, file)")
        elif not os.path.isabs(uri):
            raise ValueError(f"not an absolute path: {uri!r} (workers have their own cwd)")
        return uri

    @model_validator(mode="after")
    def _one_sampling_option(self) -> JobRequest:
        given = [
            name
            for name, value in (
                ("sample_fps", self.sample_fps),
                ("keyframes", self.keyframes or None),
                ("scene_change", self.scene_change),
            )
            if value is not None
        ]
        if len(given) > 1:
            raise ValueError(f"at most one sampling option, not {' and '.join(given)}")
        return self


JobState = Literal["accepted", "progress", "done", "failed"]


class JobStatus(_Record):
    """What happened to a scan job (``clipguard.job-status``, key = job id).

    A job's events: ``accepted`` (a worker took it), ``progress`` (after its decode, with the
    frames to score, then periodically with the frames scored so far), then ``done`` (every
    record of it is on the scores and flags topics) or ``failed`` (with the error class and
    reason). A job taken over after a worker stopped mid-way starts again at ``accepted``."""

    schema_id: Literal["clipguard.job-status/1"] = Field(JOB_STATUS_SCHEMA, alias="schema")
    job_id: str
    state: JobState
    at: float = Field(description="when, Unix seconds (the worker's clock)")
    worker: str = Field(description="the worker that sent it (host:pid)")
    uri: str | None = Field(None, description="the job's URI (None: the request was unreadable)")
    source: str | None = Field(None, description="the records' source and stream id")
    model: str | None = None
    weights_sha256: str | None = Field(None, description="fingerprint of the model's weights")
    policy_set: str | None = Field(None, description="hash of the compiled policies")
    frames_total: int | None = Field(None, description="sampled frames to score (once decoded)")
    frames_scored: int = Field(0, description="frames scored so far (tiles of a frame: one)")
    flags: int = Field(0, description="incidents flagged so far (closed flag events)")
    duration: float | None = Field(None, description="seconds of video (done)")
    width: int | None = None
    height: int | None = None
    codec: str | None = None
    frames_decoded: int | None = None
    decode_errors: int | None = Field(None, description="damaged packets skipped (done)")
    first_decode_error: str | None = None
    error_class: str | None = Field(None, description="the typed error (failed)")
    reason: str | None = Field(None, description="the error's message (failed)")


def schemas() -> dict[str, Any]:
    """The JSON Schemas of every published record type, by schema id."""
    return {
        SCORE_SCHEMA: ScoreRecord.model_json_schema(by_alias=True),
        FLAG_SCHEMA: FlagEvent.model_json_schema(by_alias=True),
        JOB_SCHEMA: JobRequest.model_json_schema(by_alias=True),
        JOB_STATUS_SCHEMA: JobStatus.model_json_schema(by_alias=True),
    }


def write_schemas(path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(schemas(), indent=2, sort_keys=True) + "\n")
    return path


if __name__ == "__main__":  # python -m pipeline.events [PATH]
    out = sys.argv[1] if len(sys.argv) > 1 else "schemas/events.schema.json"
    print(write_schemas(out))
