"""Typed events the worker's other threads hand to its main thread.

The decode pool's thread, the encoder thread and kafka-python's IO thread never touch the
worker's state: each posts one of these to the main thread's queue, and the main thread acts on
them in order. An encoder failure is its own event (a decode failure may be retried; a batch
that failed twice is not).
"""

from __future__ import annotations

from dataclasses import dataclass

from consumers.worker.outbox import Acked
from consumers.worker.segments import Segment

__all__ = ["Acked", "DecodeFailed", "EncodeFailed", "Encoded", "Event"]


@dataclass(frozen=True, eq=False)
class Encoded:
    """Every frame of ``segment`` is encoded (or it had none): it may be judged."""

    segment: Segment


@dataclass(frozen=True, eq=False)
class DecodeFailed:
    """Decoding ``segment`` failed with ``error`` (a crash or timeout may be tried again)."""

    segment: Segment
    error: BaseException


@dataclass(frozen=True, eq=False)
class EncodeFailed:
    """Encoding ``segment``'s frames failed twice with ``error``."""

    segment: Segment
    error: BaseException


Event = Encoded | DecodeFailed | EncodeFailed | Acked
