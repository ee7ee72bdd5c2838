"""Hand-off: incidents and their review labels as one JSON document that a review tool or a
case system can ingest. The shape is :class:`HandoffDocument` (``clipguard.studio.handoff/1``);
its JSON Schema is ``schemas/studio-handoff.schema.json``, written by
``python -m consumers.studio.handoff``.

One document::

    {"schema": "clipguard.studio.handoff/1", "exported_at": "2026-12-01T03:00:00+00:00",
     "policies": "/srv/policies",
     "incidents": [{"id": "9f2c...", "stream_id": "cam-7", "source": null,
                    "policy": "weapons", "policy_version": 4, "label": "knife",
                    "severity": "high", "action": "review", "start_ts": 12.0, "end_ts": 15.5,
                    "peak_ts": 13.0, "peak_score": 0.31, "threshold": 0.27,
                    "top_prompt": "a photo of a knife", "model": "ViT-B/32",
                    "review": {"verdict": "correct", "note": "", "reviewer": "alice",
                               "at": "2026-12-01T02:59:10+00:00"}}]}

``review`` is null for an incident nobody has reviewed. Times are seconds on the stream's
timeline (``start_ts``..``end_ts``, the peak at ``peak_ts``); ``id`` is stable across exports
(stream, source, policy, label and start).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from consumers.studio.incidents import StudioIncident
from consumers.studio.labels import Label

__all__ = [
    "HANDOFF_SCHEMA",
    "HandoffDocument",
    "HandoffIncident",
    "HandoffReview",
    "handoff",
    "write_schema",
]

HANDOFF_SCHEMA: Final = "clipguard.studio.handoff/1"


class _Shape(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class HandoffReview(_Shape):
    verdict: Literal["correct", "incorrect", "unsure"]
    note: str
    reviewer: str
    at: str = Field(description="when the verdict was given, UTC, ISO 8601")


class HandoffIncident(_Shape):
    id: str = Field(description="stable incident id (stream, source, policy, label, start)")
    stream_id: str
    source: str | None = Field(description="the scanned file or URL, for scans")
    policy: str
    policy_version: int
    label: str
    severity: Literal["low", "medium", "high", "critical"]
    action: Literal["flag", "review", "block"]
    start_ts: float = Field(description="seconds: the first passing frame")
    end_ts: float | None = Field(description="seconds: the last passing frame; null if open")
    peak_ts: float
    peak_score: float
    threshold: float | None
    top_prompt: str | None
    model: str
    review: HandoffReview | None = Field(description="null until someone reviews it")


class HandoffDocument(_Shape):
    """Incidents with their review labels, as exported by the studio."""

    schema_id: Literal["clipguard.studio.handoff/1"] = Field(HANDOFF_SCHEMA, alias="schema")
    exported_at: str = Field(description="UTC, ISO 8601")
    policies: str = Field(description="the policy folder the studio served")
    incidents: list[HandoffIncident]


def handoff(
    incidents: Sequence[StudioIncident], labels: Mapping[str, Label], *, policy_dir: str
) -> dict[str, Any]:
    """The hand-off document (as JSON-ready data): every incident, with its review label
    where it has one."""
    doc = HandoffDocument(
        exported_at=datetime.now(UTC).isoformat(timespec="seconds"),
        policies=policy_dir,
        incidents=[_incident(i, labels.get(i.id)) for i in incidents],
    )
    return doc.model_dump(mode="json", by_alias=True)


def _incident(i: StudioIncident, label: Label | None) -> HandoffIncident:
    review = None
    if label is not None:
        review = HandoffReview(
            verdict=label.verdict, note=label.note, reviewer=label.reviewer, at=label.at
        )
    return HandoffIncident(
        id=i.id,
        stream_id=i.stream_id,
        source=i.source,
        policy=i.policy,
        policy_version=i.policy_version,
        label=i.label,
        severity=i.severity,  # type: ignore[arg-type]
        action=i.action,  # type: ignore[arg-type]
        start_ts=i.start_ts,
        end_ts=i.end_ts,
        peak_ts=i.peak_ts,
        peak_score=i.peak_score,
        threshold=i.threshold,
        top_prompt=i.top_prompt,
        model=i.model,
        review=review,
    )


def write_schema(path: str | Path) -> Path:
    """Write the hand-off document's JSON Schema to ``path``."""
    path = Path(path)
    schema = HandoffDocument.model_json_schema(by_alias=True)
    path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


if __name__ == "__main__":  # python -m consumers.studio.handoff [PATH]
    print(write_schema(sys.argv[1] if len(sys.argv) > 1 else "schemas/studio-handoff.schema.json"))
