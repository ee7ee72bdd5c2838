"""The review queue's incidents: flag events (``clipguard.flags`` records, as JSON lines, e.g.
``clipguard consume clipguard.flags > flags.jsonl`` or a scan's ``flags.jsonl``), one incident
per opened flag with its closing event merged in."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from pydantic import ValidationError

from pipeline.errors import ConfigError
from pipeline.events import FlagEvent

__all__ = [
    "MAX_INCIDENTS",
    "Origin",
    "StudioIncident",
    "incident_id",
    "incident_of",
    "read_incidents",
]

#: Where an incident came from: a file of flag events (``--incidents``), the flags topic
#: (``--flags-topic``), or the policy files run over the frame store (``--store``).
Origin = Literal["file", "flags", "store"]

MAX_INCIDENTS: Final = 100_000
_MAX_FILE_BYTES: Final = 512 * 1024**2
_MAX_LINE: Final = 64 * 1024


@dataclass(frozen=True)
class StudioIncident:
    """One incident: a label of a policy flagged on a stream from ``start_ts`` to ``end_ts``."""

    id: str  # stable: from stream, policy, label and start
    stream_id: str
    source: str | None  # the scanned file or URL, when it came from a scan
    policy: str
    policy_version: int
    label: str
    severity: str
    action: str
    start_ts: float
    end_ts: float | None  # None while open
    peak_ts: float
    peak_score: float
    threshold: float | None
    top_prompt: str | None
    model: str
    origin: Origin = "file"
    event_id: str | None = None  # the flag event's or the backtest's deterministic event id


def read_incidents(path: Path) -> list[StudioIncident]:
    """Every incident in a file of flag events, in the order they opened. Lines that are not
    flag events are refused with their line number (:class:`ConfigError`)."""
    try:
        size = path.stat().st_size
    except OSError as e:
        raise ConfigError(f"cannot read incidents file {path}: {e.strerror or e}") from e
    if size > _MAX_FILE_BYTES:
        raise ConfigError(f"incidents file {path} is over {_MAX_FILE_BYTES} bytes")
    found: dict[str, StudioIncident] = {}
    with path.open(encoding="utf-8", errors="replace") as fh:
        for number, line in enumerate(fh, 1):
            if len(line) > _MAX_LINE:
                raise ConfigError(f"{path}:{number}: line longer than {_MAX_LINE} characters")
            if not line.strip():
                continue
            try:
                event = FlagEvent.model_validate_json(line)
            except ValidationError as e:
                first = e.errors()[0]
                where = ".".join(str(p) for p in first["loc"]) or "(record)"
                raise ConfigError(
                    f"{path}:{number}: not a flag event: {where}: {first['msg']}"
                ) from None
            incident = incident_of(event)
            if incident.id not in found or event.state == "closed":
                found[incident.id] = incident
            if len(found) > MAX_INCIDENTS:
                raise ConfigError(f"{path}: more than {MAX_INCIDENTS} incidents")
    return list(found.values())


def incident_id(stream_id: str, policy: str, label: str, start_ts: float) -> str:
    """The stable id of an incident (16 hex digits): the same for its opening and closing flag
    events, and for the incident a backtest of stored frames finds on the same stream (a live
    stream, or a scanned file: its stream id is the file), whichever policy version found it.
    The start counts to the millisecond, as the flag event's ``event_id`` does."""
    key = f"{stream_id}\0{policy}\0{label}\0{round(start_ts * 1000)}"
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]


def incident_of(e: FlagEvent, origin: Origin = "file") -> StudioIncident:
    """The incident a flag event opens or closes (its id is the same for both events)."""
    return StudioIncident(
        id=incident_id(e.stream_id, e.policy, e.label, e.start_ts),
        stream_id=e.stream_id,
        source=e.source,
        policy=e.policy,
        policy_version=e.policy_version,
        label=e.label,
        severity=e.severity,
        action=e.action,
        start_ts=e.start_ts,
        end_ts=e.end_ts,
        peak_ts=e.peak_ts,
        peak_score=e.peak_score,
        threshold=e.threshold,
        top_prompt=e.top_prompt,
        model=e.model,
        origin=origin,
        event_id=e.event_id,
    )
