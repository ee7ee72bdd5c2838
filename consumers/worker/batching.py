"""The encode stage of the worker: frames of every stream share encoder batches.

:class:`BatchEncoder` runs one thread. Decoded segments arrive with :meth:`submit` (from the
decode pool's thread) as :class:`EncodeWork`; the thread fills a batch with their frames, in
arrival order and across segments and streams, up to ``max_batch_size`` frames, waiting at
most ``max_batch_wait_s`` for more, encodes it, and writes each frame's embedding into its
work item. A work item whose frames are all encoded is reported with ``done(work)``; a batch
that fails twice fails every work item in it with ``failed(work, error)`` (their frames still
queued are skipped). A work item marked ``cancelled`` (its partition went away) is skipped.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import numpy as np
import numpy.typing as npt

__all__ = ["BatchEncoder", "EncodeWork", "ImageEncoder"]

_log = logging.getLogger(__name__)
_ATTEMPTS: Final = 2  # a failed batch is tried once more before its work items fail

Image = npt.NDArray[np.uint8]


class ImageEncoder(Protocol):
    """What the stage needs of an encoder: uint8 RGB frames in, one embedding row each out."""

    def encode(self, frames: Sequence[Image]) -> Any: ...


@dataclass(eq=False)
class EncodeWork:
    """One segment's frames to encode; ``embeddings`` fills in as batches finish."""

    owner: Any
    images: list[Image]
    embed_dim: int
    embeddings: npt.NDArray[np.float32] = field(init=False)
    remaining: int = field(init=False)
    failed: bool = False
    cancelled: bool = False  # set by the owner's thread: skip what is left

    def __post_init__(self) -> None:
        self.embeddings = np.zeros((len(self.images), self.embed_dim), dtype=np.float32)
        self.remaining = len(self.images)


class BatchEncoder:
    """The encoder thread; see the module docstring. ``on_batch(seconds, frames)`` and
    ``on_retry()`` are told of every batch encoded and every batch tried again."""

    def __init__(
        self,
        encoder: ImageEncoder,
        *,
        max_batch_size: int,
        max_batch_wait_s: float,
        retry_backoff_s: float,
        done: Callable[[EncodeWork], object],
        failed: Callable[[EncodeWork, BaseException], object],
        on_batch: Callable[[float, int], object] | None = None,
        on_retry: Callable[[], object] | None = None,
    ) -> None:
        self.encoder = encoder
        self.max_batch_size = max_batch_size
        self.max_batch_wait_s = max_batch_wait_s
        self.retry_backoff_s = retry_backoff_s
        self._done, self._failed = done, failed
        self._on_batch, self._on_retry = on_batch, on_retry
        self._queue: queue.SimpleQueue[EncodeWork | None] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="clipguard-encoder", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, work: EncodeWork) -> None:
        """Queue a work item (any thread)."""
        self._queue.put(work)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._queue.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        carry: deque[tuple[EncodeWork, int]] = deque()  # (work, next frame) not yet batched
        while not self._stop.is_set():
            if not carry:
                try:
                    work = self._queue.get(timeout=0.2)
                except queue.Empty:
                    continue
                if work is None:
                    return
                carry.append((work, 0))
            batch = self._fill(carry)
            if batch:
                self._encode(batch)

    def _fill(self, carry: deque[tuple[EncodeWork, int]]) -> list[tuple[EncodeWork, int]]:
        """Take frames from ``carry`` (and the queue, until the wait is over) into a batch."""
        deadline = time.monotonic() + self.max_batch_wait_s
        size = self.max_batch_size
        batch: list[tuple[EncodeWork, int]] = []
        while True:
            while carry and len(batch) < size:
                work, i = carry.popleft()
                if work.cancelled or work.failed:
                    continue
                take = min(len(work.images) - i, size - len(batch))
                batch += [(work, j) for j in range(i, i + take)]
                if i + take < len(work.images):
                    carry.appendleft((work, i + take))
            left = deadline - time.monotonic()
            if len(batch) >= size or left <= 0:
                return batch
            try:
                more = self._queue.get(timeout=left)
            except queue.Empty:
                return batch
            if more is None:
                self._stop.set()
                return batch
            carry.append((more, 0))

    def _encode(self, batch: list[tuple[EncodeWork, int]]) -> None:
        images = [work.images[i] for work, i in batch]
        for attempt in range(1, _ATTEMPTS + 1):
            started = time.monotonic()
            try:
                embeddings = np.asarray(self.encoder.encode(images), dtype=np.float32)
                break
            except Exception as e:  # e.g. the device ran out of memory: once more, then fail
                if attempt < _ATTEMPTS:
                    if self._on_retry is not None:
                        self._on_retry()
                    _log.warning("encoding %d frames failed, trying once more: %s", len(batch), e)
                    time.sleep(self.retry_backoff_s)
                    continue
                _log.exception("encoding a batch of %d frames failed", len(batch))
                for work in {id(work): work for work, _ in batch}.values():
                    work.failed = True  # its frames still queued are skipped
                    self._failed(work, e)
                return
        if self._on_batch is not None:
            self._on_batch(time.monotonic() - started, len(batch))
        finished: list[EncodeWork] = []
        for row, (work, i) in enumerate(batch):
            work.embeddings[i] = embeddings[row]
            work.remaining -= 1
            if work.remaining == 0:
                finished.append(work)
        for work in finished:
            self._done(work)
