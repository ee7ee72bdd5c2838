"""Stream state checkpoints: their format, and reading them back from the state topic.

After each segment a stream's temporal state (and the facts of its open incidents) is
published to the state topic, key = stream id, in the partition of the stream's segments; the
topic is compacted, and a stream's last segment leaves a tombstone. A worker that is assigned a
segments partition reads the same partition of the state topic to its end
(:func:`read_checkpoints`) and continues each stream from its newest checkpoint.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any, Final

from kafka import KafkaConsumer, TopicPartition

from consumers.settings import WorkerSettings
from pipeline.policies.judge import PolicyFacts
from pipeline.policies.snapshot import PolicySet
from pipeline.policies.temporal import StreamTemporalState

__all__ = ["Checkpoint", "encode_checkpoint", "read_checkpoints", "restore_checkpoint"]

_log = logging.getLogger(__name__)
_FORMAT: Final = 1
_READ_TIMEOUT_S: Final = 5.0  # well inside max_poll_interval_ms: it runs on the poll loop

#: A checkpoint as read from the topic (JSON), newest per stream.
Checkpoint = Mapping[str, Any]


def encode_checkpoint(
    state: StreamTemporalState, facts: Mapping[str, PolicyFacts], *, offset: int, seq: int
) -> bytes:
    """The state of a stream after the segment at ``offset``, as the state topic's value."""
    data = {
        "format": _FORMAT,
        "stream_id": state.stream_id,
        "offset": offset,
        "seq": seq,
        "state": state.to_dict(),
        "facts": {k: [f.version, f.severity, f.action] for k, f in facts.items()},
    }
    return json.dumps(data, separators=(",", ":")).encode()


def restore_checkpoint(
    data: Checkpoint, policies: PolicySet
) -> tuple[StreamTemporalState, dict[str, PolicyFacts], int]:
    """(state, incident facts, offset of the last segment in it) from a checkpoint; raises
    ConfigError, KeyError, TypeError or ValueError when it is not a usable one."""
    if data.get("format") != _FORMAT:
        raise ValueError(f"checkpoint format {data.get('format')!r}")
    state = StreamTemporalState.from_dict(data["state"], policies.rules)
    facts = {
        k: PolicyFacts(version=int(v[0]), severity=str(v[1]), action=str(v[2]))
        for k, v in dict(data.get("facts") or {}).items()
    }
    return state, facts, int(data["offset"])


def read_checkpoints(
    settings: WorkerSettings, partitions: Iterable[int]
) -> dict[int, dict[str, Checkpoint]]:
    """Each given partition of the state topic read to its end: per partition, each stream's
    newest checkpoint (a tombstone forgets it)."""
    config = {
        k: v
        for k, v in settings.consumer_config().items()
        if k not in ("group_id", "max_poll_interval_ms", "session_timeout_ms")
    }
    found: dict[int, dict[str, Checkpoint]] = {p: {} for p in partitions}
    reader = KafkaConsumer(**config, group_id=None, client_id="clipguard-worker-state")
    try:
        tps = [TopicPartition(settings.topics.state, p) for p in found]
        reader.assign(tps)
        reader.seek_to_beginning(*tps)
        ends = reader.end_offsets(tps)
        remaining = {tp for tp, end in ends.items() if end > 0}
        deadline = time.monotonic() + _READ_TIMEOUT_S
        count = 0
        while remaining and time.monotonic() < deadline:
            for tp, batch in reader.poll(timeout_ms=200).items():
                for record in batch:
                    count += 1
                    _keep_newest(found[tp.partition], record)
            remaining = {tp for tp in remaining if reader.position(tp) < ends[tp]}
        if remaining:
            _log.warning(
                "state checkpoints of %s not read to the end in %.0f s; streams without one "
                "start afresh",
                ", ".join(f"{tp.topic}[{tp.partition}]" for tp in remaining),
                _READ_TIMEOUT_S,
            )
        _log.info(
            "read %d state checkpoints (%d streams) of partitions %s",
            count,
            sum(len(streams) for streams in found.values()),
            ", ".join(map(str, found)),
        )
    finally:
        reader.close(autocommit=False)
    return found


def _keep_newest(streams: dict[str, Checkpoint], record: Any) -> None:
    stream = record.key.decode(errors="replace") if record.key else ""
    if record.value is None:
        streams.pop(stream, None)
        return
    try:
        data = json.loads(record.value)
    except ValueError:
        return
    if not isinstance(data, dict):
        return
    old = streams.get(stream)
    if old is None or data.get("offset", -1) >= old.get("offset", -1):
        streams[stream] = data
