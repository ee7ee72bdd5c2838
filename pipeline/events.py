"""The records clipguard publishes: a score per scored frame, flag events, dead-letter headers.

The models are the contract with downstream consumers; their JSON Schemas are exported to
``schemas/`` (:func:`write_schemas`, ``python -m pipeline.events``) and a test keeps that file
current. Field ``schema`` names the record type and version of every record.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "DLQ_ATTEMPTS",
    "DLQ_ERROR_CLASS",
    "DLQ_ERROR_MESSAGE",
    "DLQ_ORIGINAL_OFFSET",
    "DLQ_ORIGINAL_PARTITION",
    "DLQ_ORIGINAL_TOPIC",
    "FLAG_SCHEMA",
    "SCORE_SCHEMA",
    "FlagEvent",
    "ScoreRecord",
    "schemas",
    "write_schemas",
]

SCORE_SCHEMA: Final = "clipguard.score/1"
FLAG_SCHEMA: Final = "clipguard.flag/1"

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
    scores: dict[str, float] = Field(description='"policy/label" -> cosine score')
    flagged: list[str] = Field(description='"policy/label" that passed on this frame')
    source: str | None = Field(None, description="file or URL, for batch scans")
    job_id: str | None = Field(None, description="the scan job, for scans run as Kafka jobs")


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


def schemas() -> dict[str, Any]:
    """The JSON Schemas of every published record type, by schema id."""
    return {
        SCORE_SCHEMA: ScoreRecord.model_json_schema(by_alias=True),
        FLAG_SCHEMA: FlagEvent.model_json_schema(by_alias=True),
    }


def write_schemas(path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(schemas(), indent=2, sort_keys=True) + "\n")
    return path


if __name__ == "__main__":  # python -m pipeline.events [PATH]
    out = sys.argv[1] if len(sys.argv) > 1 else "schemas/events.schema.json"
    print(write_schemas(out))
