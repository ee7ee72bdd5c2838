"""The offset ledger: per partition, which consumed records are done, what may be committed,
and how far behind the partition is.

A partition's offset is committed up to its first record that is not done: an input is
committed only after every output it caused is acknowledged (at-least-once), whatever order
the records finish in. The ledger holds the caller's item for each record in flight (the
worker's segments), so a revoked partition's work can be found and dropped.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = ["OffsetLedger", "PartitionLedger"]

T = TypeVar("T")
P = TypeVar("P", bound=Hashable)


@dataclass(eq=False)
class PartitionLedger(Generic[T]):
    """One partition's records in flight, in offset order, and its commit point."""

    items: dict[int, T] = field(default_factory=dict)  # offset -> item, in offset order
    done: set[int] = field(default_factory=set)  # offsets of items done
    committed: int | None = None  # the last offset committed by us (the next to read)
    done_to: int | None = None  # every record before this offset is done
    lag: int | None = None  # records not yet done, at the last look (None: not known yet)

    def add(self, offset: int, item: T) -> None:
        self.items[offset] = item

    def finish(self, offset: int) -> None:
        """The record at ``offset`` is done (every output acknowledged)."""
        if offset in self.items:
            self.done.add(offset)

    def in_flight(self) -> int:
        return len(self.items) - len(self.done)

    def pending(self) -> Iterator[T]:
        """The items not done, in offset order."""
        return (item for offset, item in self.items.items() if offset not in self.done)

    def advance(self) -> int | None:
        """Forget the done records at the front; the offset to commit now, if it moved."""
        for offset in list(self.items):
            if offset not in self.done:
                break
            del self.items[offset]
            self.done.discard(offset)
            self.done_to = offset + 1
        if self.done_to is not None and self.done_to != self.committed:
            return self.done_to
        return None

    def measure_lag(self, high: int | None) -> int | None:
        """Records at or after the first one not done, up to the high watermark ``high``."""
        if high is None:
            self.lag = None
            return None
        done = self.done_to if self.done_to is not None else self.committed
        if done is None:
            done = next(iter(self.items), high)
        self.lag = max(0, high - done)
        return self.lag


class OffsetLedger(Generic[P, T]):
    """The ledgers of every partition this consumer owns, keyed by partition."""

    def __init__(self) -> None:
        self.partitions: dict[P, PartitionLedger[T]] = {}

    def assign(self, tp: P) -> PartitionLedger[T]:
        return self.partitions.setdefault(tp, PartitionLedger())

    def revoke(self, tp: P) -> PartitionLedger[T] | None:
        return self.partitions.pop(tp, None)

    def get(self, tp: P) -> PartitionLedger[T] | None:
        return self.partitions.get(tp)

    def __contains__(self, tp: object) -> bool:
        return tp in self.partitions

    def __iter__(self) -> Iterator[P]:
        return iter(self.partitions)

    def in_flight(self) -> int:
        """Records consumed and not done, over every partition."""
        return sum(part.in_flight() for part in self.partitions.values())

    def to_commit(self) -> dict[P, int]:
        """The partitions whose commit point moved, and the offset to commit for each."""
        out: dict[P, int] = {}
        for tp, part in self.partitions.items():
            offset = part.advance()
            if offset is not None:
                out[tp] = offset
        return out

    def committed(self, offsets: dict[P, int]) -> None:
        """Those offsets were committed (partitions revoked meanwhile are ignored)."""
        for tp, offset in offsets.items():
            part = self.partitions.get(tp)
            if part is not None:
                part.committed = offset
