"""Hand-off: incidents and their review labels as one JSON document that a review tool or a
case system can ingest (shape ``clipguard.studio.handoff/1``, described in
``schemas/studio-handoff.schema.json``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final

from consumers.studio.incidents import StudioIncident
from consumers.studio.labels import Label

__all__ = ["HANDOFF_SCHEMA", "handoff"]

HANDOFF_SCHEMA: Final = "clipguard.studio.handoff/1"


def handoff(
    incidents: Sequence[StudioIncident], labels: Mapping[str, Label], *, policy_dir: str
) -> dict[str, Any]:
    """The hand-off document: every incident, with its review label where it has one."""
    return {
        "schema": HANDOFF_SCHEMA,
        "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "policies": policy_dir,
        "incidents": [_incident(i, labels.get(i.id)) for i in incidents],
    }


def _incident(i: StudioIncident, label: Label | None) -> dict[str, Any]:
    return {
        "id": i.id,
        "stream_id": i.stream_id,
        "source": i.source,
        "policy": i.policy,
        "policy_version": i.policy_version,
        "label": i.label,
        "severity": i.severity,
        "action": i.action,
        "start_ts": i.start_ts,
        "end_ts": i.end_ts,
        "peak_ts": i.peak_ts,
        "peak_score": i.peak_score,
        "threshold": i.threshold,
        "top_prompt": i.top_prompt,
        "model": i.model,
        "review": None
        if label is None
        else {
            "verdict": label.verdict,
            "note": label.note,
            "reviewer": label.reviewer,
            "at": label.at,
        },
    }
