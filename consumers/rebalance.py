"""A rebalance listener for kafka-python 3 that only reports.

kafka-python 3 runs rebalance listeners on its IO thread: committing there, or waiting for
the consumer's own thread, would stall the group. :func:`reporting_listener` puts
``("revoked" | "assigned" | "lost", partitions)`` on a queue for the consumer's loop to act
on (the stream worker and the scan job runner both use it).
"""

from __future__ import annotations

import queue
from collections.abc import Iterable
from typing import Any

__all__ = ["RebalanceEvents", "reporting_listener"]

RebalanceEvents = queue.SimpleQueue[tuple[str, set[Any]]]


def reporting_listener(events: RebalanceEvents) -> Any:
    """A ``kafka.ConsumerRebalanceListener`` that reports each change to ``events``."""
    from kafka import ConsumerRebalanceListener

    class Listener(ConsumerRebalanceListener):  # type: ignore[misc]
        def on_partitions_revoked(self, revoked: Iterable[Any]) -> None:
            events.put(("revoked", set(revoked)))

        def on_partitions_assigned(self, assigned: Iterable[Any]) -> None:
            events.put(("assigned", set(assigned)))

        def on_partitions_lost(self, lost: Iterable[Any]) -> None:
            events.put(("lost", set(lost)))

    return Listener()
