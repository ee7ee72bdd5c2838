"""The review queue in the studio's embedded database (:mod:`consumers.studio.database`,
beside the review labels): incidents from a file of flag events (``--incidents``), from the
flags topic (:mod:`consumers.studio.flagfeed`) and from the policy files run over the frame
store (``--store``), one row per incident id, with the topic offsets the feed has read up to.

An incident's id is the same whichever source reports it (stream, policy, label and start:
:func:`~consumers.studio.incidents.incident_id`), so a scan incident on the flags topic and the
same incident found in the store are one item. An incident's opening and closing events share
its id: a closing event replaces the row, an opening event never replaces a closed one (events
may arrive twice, or out of order across sources), and a closed incident is replaced only by
one from the same source (the store's finding never overwrites what a worker published). A
replacing row keeps the first source's origin, and the source file and event id it knew when
the new one lacks them. The feed writes a poll's incidents and its offsets in one transaction,
so a studio restarted at any point reads on from where its queue stops, neither losing nor
doubling an incident.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Final

from consumers.studio.database import connect
from consumers.studio.incidents import MAX_INCIDENTS, StudioIncident
from pipeline.errors import ConfigError

__all__ = ["QUEUE_LIMIT", "ReviewQueue"]

#: The queue keeps at most this many incidents; more are refused (the oldest are kept).
QUEUE_LIMIT: Final = 10 * MAX_INCIDENTS

_SCHEMA: Final = (
    """CREATE TABLE IF NOT EXISTS incidents (
        id TEXT PRIMARY KEY,
        origin TEXT NOT NULL,
        policy TEXT NOT NULL,
        label TEXT NOT NULL,
        peak_score REAL NOT NULL,
        closed INTEGER NOT NULL,
        data TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS incidents_label ON incidents (policy, label)",
    """CREATE TABLE IF NOT EXISTS feed_offsets (
        topic TEXT NOT NULL,
        partition INTEGER NOT NULL,
        next INTEGER NOT NULL,
        PRIMARY KEY (topic, partition)
    )""",
)
_UPSERT: Final = (
    "INSERT INTO incidents (id, origin, policy, label, peak_score, closed, data) "
    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
    "peak_score = excluded.peak_score, closed = excluded.closed, data = json_set(excluded.data, "
    "'$.origin', incidents.origin, "
    "'$.source', coalesce(json_extract(excluded.data, '$.source'), "
    "json_extract(incidents.data, '$.source')), "
    "'$.event_id', coalesce(json_extract(excluded.data, '$.event_id'), "
    "json_extract(incidents.data, '$.event_id'))) "
    "WHERE excluded.closed = 1 AND (incidents.closed = 0 OR incidents.origin = excluded.origin)"
)


class ReviewQueue:
    """The queue's table; one connection, used under a lock (the server's threads and the
    feed's thread share it)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = connect(path)  # with the labels table: the verdicts are counted with a join
        for statement in _SCHEMA:
            self._db.execute(statement)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def add(
        self,
        incidents: Iterable[StudioIncident],
        *,
        topic: str | None = None,
        offsets: Mapping[int, int] | None = None,
    ) -> int:
        """Add (or close) ``incidents`` and, in the same transaction, record that ``topic``'s
        partitions are read up to ``offsets`` (partition -> next offset). The number of rows
        the queue holds afterwards."""
        rows = [
            (
                i.id,
                i.origin,
                i.policy,
                i.label,
                float(i.peak_score),
                int(i.end_ts is not None),
                json.dumps(asdict(i), ensure_ascii=False),
            )
            for i in incidents
        ]
        with self._lock:
            total = self._count()
            if total + len(rows) > QUEUE_LIMIT:
                raise ConfigError(
                    f"the review queue holds {total} incidents: {QUEUE_LIMIT} at most"
                )
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(_UPSERT, rows)
                if topic is not None and offsets:
                    self._db.executemany(
                        "INSERT OR REPLACE INTO feed_offsets VALUES (?, ?, ?)",
                        [(topic, p, n) for p, n in offsets.items()],
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            return self._count()

    def offsets(self, topic: str) -> dict[int, int]:
        """Partition -> the next offset to read of ``topic`` (partitions never read: absent)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT partition, next FROM feed_offsets WHERE topic = ?", (topic,)
            ).fetchall()
        return {int(p): int(n) for p, n in rows}

    def get(self, incident: str) -> StudioIncident | None:
        with self._lock:
            row = self._db.execute(
                "SELECT data FROM incidents WHERE id = ?", (incident,)
            ).fetchone()
        return None if row is None else _incident(row[0])

    def page(
        self, *, policy: str | None = None, limit: int = 50, offset: int = 0
    ) -> tuple[int, list[StudioIncident]]:
        """How many incidents (of ``policy``, when given) the queue holds, and ``limit`` of them
        from ``offset``, in the order they arrived."""
        with self._lock:
            total = self._db.execute(
                "SELECT count(*) FROM incidents WHERE (? IS NULL OR policy = ?)", (policy, policy)
            ).fetchone()[0]
            rows = self._db.execute(
                "SELECT data FROM incidents WHERE (? IS NULL OR policy = ?) "
                "ORDER BY rowid LIMIT ? OFFSET ?",
                (policy, policy, limit, offset),
            ).fetchall()
        return int(total), [_incident(r[0]) for r in rows]

    def verdicts(self, *, policy: str | None = None) -> dict[str, int]:
        """Verdict -> how many queued incidents (of ``policy``) reviewers gave it."""
        with self._lock:
            rows = self._db.execute(
                "SELECT l.verdict, count(*) FROM incidents i JOIN labels l ON l.incident = i.id "
                "WHERE (? IS NULL OR i.policy = ?) GROUP BY l.verdict",
                (policy, policy),
            ).fetchall()
        return {str(v): int(n) for v, n in rows}

    def peaks(self, policy: str, label: str) -> list[float]:
        """The peak scores of one label's queued incidents."""
        with self._lock:
            rows = self._db.execute(
                "SELECT peak_score FROM incidents WHERE policy = ? AND label = ?", (policy, label)
            ).fetchall()
        return [float(r[0]) for r in rows]

    def all(self) -> list[StudioIncident]:
        """Every queued incident, in the order they arrived."""
        with self._lock:
            rows = self._db.execute("SELECT data FROM incidents ORDER BY rowid").fetchall()
        return [_incident(r[0]) for r in rows]

    def origins(self) -> dict[str, int]:
        """Origin -> how many queued incidents came from it."""
        with self._lock:
            rows = self._db.execute("SELECT origin, count(*) FROM incidents GROUP BY 1").fetchall()
        return {str(o): int(n) for o, n in rows}

    def _count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM incidents").fetchone()[0])


def _incident(data: str) -> StudioIncident:
    return StudioIncident(**json.loads(data))
