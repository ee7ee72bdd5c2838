"""The studio's embedded database (SQLite): where it lives, opening it, and bringing one an
older studio wrote up to date.

One file holds the review labels (:mod:`consumers.studio.labels`) and the review queue
(:mod:`consumers.studio.queue`). With a store on this machine's disk it is the store's
``_labels.sqlite``, beside the stored frames, so that ``clipguard policy backtest --store``
finds the reviewers' labels without being told; otherwise ``labels.sqlite3`` in the studio's
data folder. A data-folder database from before is copied beside the store the first time.

Versions (``PRAGMA user_version``):

- 0: labels name their incident only by its hashed id; queue ids hash the source too.
- 1: each label also records what it covers (stream, source, start and end, model, policy
  version), filled in from the queue for labels made before; queue ids are the same for an
  incident whichever source (flags topic, store, file) reported it
  (:func:`~consumers.studio.incidents.incident_id`), old ids rewritten and their labels with
  them.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Final

from consumers.studio.incidents import incident_id

__all__ = ["LABELS_SCHEMA", "VERSION", "connect", "database_path"]

VERSION: Final = 1
#: The store's side file (``pipeline.store.location.LABELS_FILE``; named here so that the
#: studio runs without the store package).
STORE_FILE: Final = "_labels.sqlite"
DATA_FILE: Final = "labels.sqlite3"

#: The labels table (the review queue joins it to count verdicts; the store backtest reads it
#: as ground truth: stream_id, start_ts, end_ts, policy, label, verdict).
LABELS_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS labels (
    incident TEXT PRIMARY KEY,
    policy TEXT NOT NULL,
    label TEXT NOT NULL,
    peak_score REAL NOT NULL,
    verdict TEXT NOT NULL CHECK (verdict IN ('correct', 'incorrect', 'unsure')),
    note TEXT NOT NULL,
    reviewer TEXT NOT NULL,
    at TEXT NOT NULL,
    stream_id TEXT,
    source TEXT,
    start_ts REAL,
    end_ts REAL,
    model TEXT,
    policy_version INTEGER
)
"""
#: Columns added in version 1, with their types (filled from the queue's incidents).
_SPAN_COLUMNS: Final = (
    ("stream_id", "TEXT"),
    ("source", "TEXT"),
    ("start_ts", "REAL"),
    ("end_ts", "REAL"),
    ("model", "TEXT"),
    ("policy_version", "INTEGER"),
)


def database_path(data_dir: Path, store: Path | None) -> Path:
    """Where the studio keeps its database (see the module docstring); an older data-folder
    database is copied beside the store on the way."""
    old = data_dir / DATA_FILE
    if store is None or "://" in str(store) or not store.is_dir() or not os.access(store, os.W_OK):
        return old
    path = store / STORE_FILE
    if not path.exists() and old.is_file():
        source = sqlite3.connect(old)
        target = sqlite3.connect(path)
        try:
            source.backup(target)  # consistent even while another process writes it
        finally:
            target.close()
            source.close()
    return path


def connect(path: Path) -> sqlite3.Connection:
    """The database at ``path`` (created when missing), at the current version: autocommit,
    WAL, usable from several threads under the caller's lock."""
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA busy_timeout=5000")
    db.execute("BEGIN IMMEDIATE")  # one connection migrates; the others then see it done
    try:
        if db.execute("PRAGMA user_version").fetchone()[0] < VERSION:
            _to_version_1(db)
            db.execute(f"PRAGMA user_version = {VERSION}")
        else:
            db.execute(LABELS_SCHEMA)
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        db.close()
        raise
    return db


def _to_version_1(db: sqlite3.Connection) -> None:
    db.execute(LABELS_SCHEMA)
    have = {row[1] for row in db.execute("PRAGMA table_info(labels)")}
    for name, kind in _SPAN_COLUMNS:
        if name not in have:
            db.execute(f"ALTER TABLE labels ADD COLUMN {name} {kind}")
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "incidents" not in tables:
        return
    _rewrite_ids(db)
    db.execute(
        """UPDATE labels SET
            stream_id = json_extract(i.data, '$.stream_id'),
            source = json_extract(i.data, '$.source'),
            start_ts = json_extract(i.data, '$.start_ts'),
            end_ts = coalesce(json_extract(i.data, '$.end_ts'), json_extract(i.data, '$.peak_ts')),
            model = json_extract(i.data, '$.model'),
            policy_version = json_extract(i.data, '$.policy_version')
        FROM incidents AS i WHERE i.id = labels.incident AND labels.start_ts IS NULL"""
    )


def _rewrite_ids(db: sqlite3.Connection) -> None:
    """Queue ids as :func:`incident_id` makes them now. Rows that now share an id become one
    (the first closed one, else the first), and the labels of their old ids one label of the
    new id (the latest verdict)."""
    groups: dict[str, list[tuple[int, str, int, dict[str, object]]]] = {}
    for rowid, old, closed, data in db.execute(
        "SELECT rowid, id, closed, data FROM incidents ORDER BY rowid"
    ).fetchall():
        d = json.loads(data)
        new = incident_id(str(d["stream_id"]), str(d["policy"]), str(d["label"]), d["start_ts"])
        groups.setdefault(new, []).append((rowid, old, closed, d))
    survivors = []
    for new, members in groups.items():
        keep = next((m for m in members if m[2]), members[0])
        for m in members:
            if m is not keep:
                db.execute("DELETE FROM incidents WHERE rowid = ?", (m[0],))
        survivors.append((new, keep, [m[1] for m in members]))
    for new, (rowid, old, _, d), olds in survivors:
        if olds == [new]:
            continue
        marks = ",".join("?" * len(olds))
        labelled = db.execute(
            f"SELECT rowid FROM labels WHERE incident IN ({marks}) ORDER BY at DESC",  # noqa: S608 - placeholders only
            olds,
        ).fetchall()
        for (extra,) in labelled[1:]:
            db.execute("DELETE FROM labels WHERE rowid = ?", (extra,))
        if labelled:
            db.execute("UPDATE labels SET incident = ? WHERE rowid = ?", (new, labelled[0][0]))
        if old != new:
            d["id"] = new
            db.execute(
                "UPDATE incidents SET id = ?, data = ? WHERE rowid = ?",
                (new, json.dumps(d, ensure_ascii=False), rowid),
            )
