"""The stream worker, one module per responsibility:

- :mod:`~consumers.worker.worker`: start-up, the poll loop, event dispatch, rebalances,
  backpressure (:class:`Worker`);
- :mod:`~consumers.worker.segments`: a record's headers parsed into a typed value, its media
  checked before decoding (the header names are the producers' contract);
- :mod:`~consumers.worker.decoding`: segments to the sandboxed decode pool, raw streams kept
  on one decoder;
- :mod:`~consumers.worker.batching`: the encoder thread, frames of every stream in shared batches;
- :mod:`~consumers.worker.streams`: per-stream ordering, judging, dead letters, stream ends,
  idle close, checkpoints: records to publish, with no Kafka in it;
- :mod:`~consumers.worker.checkpoints`: the state topic's format and reading it back;
- :mod:`~consumers.worker.outbox`: output records sent, acknowledgements tracked, retries;
- :mod:`~consumers.worker.offsets`: what may be committed per partition, and lag;
- :mod:`~consumers.worker.events`: the typed events the other threads hand the main thread.

``from consumers.worker import Worker`` loads the model stack (torch) on first use only, so the
light modules (segment headers for producers) import without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from consumers.worker.segments import END_HEADER, FPS_HEADER, HeaderError

if TYPE_CHECKING:
    from consumers.worker.worker import Worker, WorkerError, encoder_threads

__all__ = ["END_HEADER", "FPS_HEADER", "HeaderError", "Worker", "WorkerError", "encoder_threads"]

_LAZY = frozenset({"Worker", "WorkerError", "encoder_threads"})


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from consumers.worker import worker

        return getattr(worker, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
