"""The published record shapes: JSON round trips, and the exported JSON Schemas stay current."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from pipeline.events import FLAG_SCHEMA, SCORE_SCHEMA, FlagEvent, ScoreRecord, schemas

SCHEMA_FILE = Path(__file__).resolve().parent.parent / "schemas" / "events.schema.json"


def test_exported_schemas_are_current():
    on_disk = json.loads(SCHEMA_FILE.read_text())
    assert on_disk == json.loads(json.dumps(schemas())), (
        "schemas/events.schema.json is stale: run `python -m pipeline.events`"
    )


def test_score_record_json_uses_the_contract_names():
    rec = ScoreRecord(
        stream_id="cam-1",
        seq=3,
        frame_index=12,
        ts=6.5,
        model="clipguard-demo",
        policy_set="abc",
        scores={"red-triangle/red-triangle": 0.8},
        flagged=[],
    )
    data = json.loads(rec.to_json())
    assert data["schema"] == SCORE_SCHEMA
    assert set(data) >= {
        "schema",
        "stream_id",
        "seq",
        "frame_index",
        "ts",
        "model",
        "policy_set",
        "scores",
        "flagged",
    }
    assert ScoreRecord.model_validate_json(rec.to_json()) == rec


def test_flag_event_validation():
    base = dict(
        event_id="e",
        state="open",
        stream_id="s",
        policy="p",
        policy_version=1,
        label="l",
        severity="high",
        action="flag",
        start_ts=1.0,
        end_ts=None,
        peak_score=0.9,
        peak_ts=1.5,
        threshold=0.4,
        margin=0.1,
        top_prompt="x",
        model="m",
    )
    ev = FlagEvent(**base)
    assert json.loads(ev.to_json())["schema"] == FLAG_SCHEMA
    with pytest.raises(ValidationError):
        FlagEvent(**{**base, "state": "half-open"})
    with pytest.raises(ValidationError):
        FlagEvent(**{**base, "colour": "red"})
