"""Review labels in the studio's embedded database (:mod:`consumers.studio.database`): a
reviewer's verdict on an incident, with what the incident covers (stream, source, start and
end), which Tune and the store backtest (``clipguard policy backtest --labels``) use as ground
truth."""

from __future__ import annotations

import threading
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, Literal, get_args

from consumers.studio.database import LABELS_SCHEMA, connect
from consumers.studio.incidents import StudioIncident
from pipeline.errors import ConfigError

__all__ = ["LABELS_SCHEMA", "MAX_NOTE", "Label", "LabelStore", "Verdict"]

Verdict = Literal["correct", "incorrect", "unsure"]
MAX_NOTE: Final = 2000


@dataclass(frozen=True)
class Label:
    incident: str
    policy: str
    label: str
    peak_score: float
    verdict: Verdict
    note: str
    reviewer: str
    at: str  # UTC, ISO 8601
    # what the incident covers (None: a label made before labels recorded it, whose
    # incident has left the queue)
    stream_id: str | None = None
    source: str | None = None
    start_ts: float | None = None
    end_ts: float | None = None  # the peak time while the incident was open
    model: str | None = None
    policy_version: int | None = None


_COLUMNS: Final = ", ".join(f.name for f in fields(Label))


class LabelStore:
    """The labels database; one connection, used under a lock (the server's threads share
    it)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = connect(path)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def put(
        self,
        *,
        incident: str,
        policy: str,
        label: str,
        peak_score: float,
        verdict: str,
        note: str,
        reviewer: str,
        stream_id: str | None = None,
        source: str | None = None,
        start_ts: float | None = None,
        end_ts: float | None = None,
        model: str | None = None,
        policy_version: int | None = None,
    ) -> Label:
        """Record (or replace) the verdict on an incident."""
        if verdict not in get_args(Verdict):
            raise ConfigError(f"verdict must be one of {get_args(Verdict)}, not {verdict!r}")
        if len(note) > MAX_NOTE:
            raise ConfigError(f"a note is at most {MAX_NOTE} characters")
        at = datetime.now(UTC).isoformat(timespec="seconds")
        made = Label(
            incident,
            policy,
            label,
            float(peak_score),
            verdict,  # type: ignore[arg-type]  # checked above
            note,
            reviewer,
            at,
            stream_id,
            source,
            start_ts,
            end_ts,
            model,
            policy_version,
        )
        row = tuple(getattr(made, f.name) for f in fields(Label))
        marks = ", ".join("?" * len(row))
        with self._lock:
            self._db.execute(f"INSERT OR REPLACE INTO labels ({_COLUMNS}) VALUES ({marks})", row)  # noqa: S608 - fixed column names
        return made

    def put_incident(
        self, incident: StudioIncident, *, verdict: str, note: str, reviewer: str
    ) -> Label:
        """Record (or replace) the verdict on a queued incident, with what it covers."""
        return self.put(
            incident=incident.id,
            policy=incident.policy,
            label=incident.label,
            peak_score=incident.peak_score,
            verdict=verdict,
            note=note,
            reviewer=reviewer,
            stream_id=incident.stream_id,
            source=incident.source,
            start_ts=incident.start_ts,
            end_ts=incident.end_ts if incident.end_ts is not None else incident.peak_ts,
            model=incident.model,
            policy_version=incident.policy_version,
        )

    def all(self, *, policy: str | None = None, label: str | None = None) -> list[Label]:
        """Every label (of one policy, and of one of its labels, when given), oldest first."""
        sql = (
            f"SELECT {_COLUMNS} FROM labels "  # noqa: S608 - fixed column names
            "WHERE (? IS NULL OR policy = ?) AND (? IS NULL OR label = ?)"
        )
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY at, incident", (policy, policy, label, label))
            return [Label(*r) for r in rows.fetchall()]

    def by_incident(self) -> dict[str, Label]:
        return {lab.incident: lab for lab in self.all()}
