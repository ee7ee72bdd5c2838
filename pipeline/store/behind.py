"""Cache entries written after the answer: a writer thread that starts when told.

A first search or backtest fills a cache beside the store (the matrix cache, the cosine
cache). Writing beside the scan shares the two cores with it and waits for the disk (measured:
a first search twice as slow), so the entries are handed to a :class:`WriteBehind`, which holds
them (at most ``max_bytes``: an entry beyond that is left out, for a later run to write) and
writes them on a thread of its own once :meth:`WriteBehind.flush` says the answer is out. The
thread is not a daemon: a process ends once what it was given is written. The standard
library's executors start work at once and hold any amount, hence this small class.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["WriteBehind"]

_log = logging.getLogger(__name__)


class WriteBehind:
    """Holds items for ``write`` (called on the writer thread, one item at a time; an
    ``OSError`` or ``ValueError`` leaves that item out), then calls ``done`` (a trim)."""

    def __init__(
        self, name: str, write: Callable[[Any], object], done: Callable[[], object]
    ) -> None:
        self.name = name
        self._write = write
        self._done = done
        self._lock = threading.Lock()
        self._bytes = 0
        self._queue: queue.SimpleQueue[tuple[Any, int] | None] = queue.SimpleQueue()
        self._go = threading.Event()
        self._writer: threading.Thread | None = None
        self._ending: list[threading.Thread] = []  # told to end once their queue is written

    def offer(self, item: Any, nbytes: int, max_bytes: int) -> bool:
        """Hold ``item`` (``nbytes`` of memory) for the writer, unless more than ``max_bytes``
        would then wait: False (left out)."""
        with self._lock:
            if self._bytes + nbytes > max_bytes:
                return False
            self._bytes += nbytes
            if self._writer is None:  # each writer has a queue and a start signal of its own
                self._queue, self._go = queue.SimpleQueue(), threading.Event()
                self._writer = threading.Thread(
                    target=self._run, args=(self._queue, self._go), name=self.name
                )
                self._writer.start()
            self._queue.put((item, nbytes))
        return True

    def _run(self, todo: queue.SimpleQueue[tuple[Any, int] | None], go: threading.Event) -> None:
        go.wait()  # written once the answer is out
        while (entry := todo.get()) is not None:
            item, nbytes = entry
            try:
                self._write(item)
            except (OSError, ValueError) as e:  # a bad entry is left out, the rest written
                _log.warning("%s: an entry was not written: %s", self.name, e)
            finally:
                with self._lock:
                    self._bytes -= nbytes
        self._done()

    @property
    def busy(self) -> bool:
        """Whether items wait to be written, or are being written."""
        with self._lock:
            return self._writer is not None or any(t.is_alive() for t in self._ending)

    def flush(self, *, wait: bool = True) -> None:
        """Let the writer thread write what it holds, then end (and call ``done``); ``wait``:
        return only then."""
        with self._lock:
            writer, self._writer = self._writer, None
            if writer is not None:
                self._go.set()
                self._queue.put(None)
                self._ending.append(writer)
            ending = list(self._ending)
        if wait:
            for thread in ending:
                thread.join()
            with self._lock:
                self._ending = [t for t in self._ending if t.is_alive()]
