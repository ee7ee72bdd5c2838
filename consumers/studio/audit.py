"""The audit log: one JSON line per change the studio made to a policy file (who, when, what,
the diff and the note), appended and never rewritten; the page shows it and exports it."""

from __future__ import annotations

import json
import os
import threading
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from pipeline.errors import ConfigError

__all__ = ["AUDIT_SCHEMA", "AuditEntry", "AuditLog"]

AUDIT_SCHEMA: Final = "clipguard.studio.audit/1"
_MAX_LINE: Final = 4 * 1024**2  # a longer line is not one this studio wrote


@dataclass(frozen=True)
class AuditEntry:
    at: str  # UTC, ISO 8601
    who: str
    action: str  # edit | promote | threshold | example
    policy: str
    file: str
    from_version: int
    to_version: int
    note: str
    diff: str  # unified diff of the YAML
    schema: str = AUDIT_SCHEMA


class AuditLog:
    """``audit.jsonl`` in the studio's data folder."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def append(self, **fields: Any) -> AuditEntry:
        """Record a change (the time is now); the line is flushed to disk before returning."""
        entry = AuditEntry(at=datetime.now(UTC).isoformat(timespec="seconds"), **fields)
        line = json.dumps(asdict(entry), ensure_ascii=False) + "\n"
        with self._lock, self.path.open("a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
        return entry

    def entries(self, *, policy: str | None = None) -> list[AuditEntry]:
        """Every entry, oldest first (of one policy when ``policy`` is given)."""
        if not self.path.exists():
            return []
        out = []
        with self.path.open(encoding="utf-8") as fh:
            for number, line in enumerate(fh, 1):
                if len(line) > _MAX_LINE:
                    raise ConfigError(f"{self.path}:{number}: line too long for an audit entry")
                if not line.strip():
                    continue
                try:
                    data = json.loads(line)
                    entry = AuditEntry(**data)
                except (ValueError, TypeError) as e:
                    raise ConfigError(f"{self.path}:{number}: not an audit entry: {e}") from e
                if policy is None or entry.policy == policy:
                    out.append(entry)
        return out
