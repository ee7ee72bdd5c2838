"""Review labels in a small embedded database (SQLite, ``labels.sqlite3`` in the studio's data
folder): a reviewer's verdict on an incident, which Tune and Backtest use as ground truth."""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, Literal, get_args

from pipeline.errors import ConfigError

__all__ = ["LABELS_SCHEMA", "MAX_NOTE", "Label", "LabelStore", "Verdict"]

Verdict = Literal["correct", "incorrect", "unsure"]
MAX_NOTE: Final = 2000

#: The labels table (the review queue joins it to count verdicts).
LABELS_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS labels (
    incident TEXT PRIMARY KEY,
    policy TEXT NOT NULL,
    label TEXT NOT NULL,
    peak_score REAL NOT NULL,
    verdict TEXT NOT NULL CHECK (verdict IN ('correct', 'incorrect', 'unsure')),
    note TEXT NOT NULL,
    reviewer TEXT NOT NULL,
    at TEXT NOT NULL
)
"""


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


class LabelStore:
    """The labels database; one connection, used under a lock (the server's threads share
    it)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(LABELS_SCHEMA)
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
    ) -> Label:
        """Record (or replace) the verdict on an incident."""
        if verdict not in get_args(Verdict):
            raise ConfigError(f"verdict must be one of {get_args(Verdict)}, not {verdict!r}")
        if len(note) > MAX_NOTE:
            raise ConfigError(f"a note is at most {MAX_NOTE} characters")
        at = datetime.now(UTC).isoformat(timespec="seconds")
        row = (incident, policy, label, float(peak_score), verdict, note, reviewer, at)
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO labels VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row)
        return Label(*row)  # type: ignore[arg-type]

    def all(self, *, policy: str | None = None, label: str | None = None) -> list[Label]:
        """Every label (of one policy, and of one of its labels, when given), oldest first."""
        sql = "SELECT * FROM labels WHERE (? IS NULL OR policy = ?) AND (? IS NULL OR label = ?)"
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY at, incident", (policy, policy, label, label))
            return [Label(*r) for r in rows.fetchall()]

    def by_incident(self) -> dict[str, Label]:
        return {lab.incident: lab for lab in self.all()}
