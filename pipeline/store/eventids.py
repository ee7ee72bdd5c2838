"""Incident event ids for many incidents at once, equal to
:func:`pipeline.policies.temporal.incident_event_id` character for character.

A backtest names every incident it finds (about ten thousand a million frames on busy
streams) with the live judge's event id: a uuid5 of the JSON list ``[stream, policy, version,
label, start in ms]``. Built one at a time, the JSON encoder and the :class:`uuid.UUID` object
cost more than the SHA-1 itself. :class:`EventIds` keeps the JSON of each (stream, policy,
version, label) it has seen, appends the start's milliseconds (an integer, which JSON writes as
Python does), hashes with :mod:`hashlib` as :func:`uuid.uuid5` does, and sets the version and
variant digits as :class:`uuid.UUID` does. ``tests/test_store_temporal.py`` checks it against
``incident_event_id``.
"""

from __future__ import annotations

import hashlib
import json
from typing import Final

from pipeline.policies.temporal import EVENT_NAMESPACE

__all__ = ["EventIds"]

_NAMESPACE: Final = EVENT_NAMESPACE.bytes
# the RFC 4122 variant: the top two bits of this digit are 10
_VARIANT: Final = {f"{d:x}": f"{(d & 0x3) | 0x8:x}" for d in range(16)}


class EventIds:
    """``ids(stream_id, policy, version, label, start_ts)``: the incident's event id."""

    def __init__(self) -> None:
        self._prefixes: dict[tuple[str, str, int, str], bytes] = {}

    def __call__(
        self, stream_id: str, policy: str, policy_version: int, label: str, start_ts: float
    ) -> str:
        key = (stream_id, policy, policy_version, label)
        prefix = self._prefixes.get(key)
        if prefix is None:
            head = json.dumps([stream_id, policy, policy_version, label], separators=(",", ":"))
            prefix = self._prefixes[key] = _NAMESPACE + head[:-1].encode() + b","
        name = prefix + str(round(start_ts * 1000)).encode() + b"]"
        h = hashlib.sha1(name).hexdigest()  # noqa: S324 - uuid5 is SHA-1 by definition
        return f"{h[:8]}-{h[8:12]}-5{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:32]}"
