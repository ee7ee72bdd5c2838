"""Infrastructure faults are not bad input: segments whose encoding failed wait and try again.

An encoder batch that fails twice (a GPU out of memory, a driver reset) says nothing about the
segments in it: dead-lettering and committing them would lose good video to a passing fault.
:class:`EncodeRetries` keeps each such segment, uncommitted, and hands it back for encoding
after a backoff that doubles with every failure in a row (from ``retry_backoff_ms`` to 30 s); the
worker reports not ready while the encoder keeps failing, and its partitions pause once too
much is in flight (backpressure), so nothing is committed past the failing segments. The first
batch that encodes again resets the backoff.
"""

from __future__ import annotations

import logging
import time
from typing import Final

from consumers.worker.segments import Segment

__all__ = ["EncodeRetries"]

_log = logging.getLogger(__name__)
_MAX_BACKOFF_S: Final = 30.0


class EncodeRetries:
    """Segments waiting to be encoded again; see the module docstring."""

    def __init__(self, backoff_s: float) -> None:
        self._first = backoff_s
        self._backoff = backoff_s
        self._waiting: list[tuple[float, Segment]] = []
        self.troubled = False  # the encoder failed and has not encoded since

    def failed(self, seg: Segment, error: BaseException, *, now: float | None = None) -> None:
        """``seg``'s encoding failed: it is encoded again after the current backoff."""
        now = time.monotonic() if now is None else now
        self.troubled = True
        _log.warning(
            "encoding failed (%s: %s): trying again in %.1f s, not committed",
            type(error).__name__,
            error,
            self._backoff,
            extra=seg.log(),
        )
        self._waiting.append((now + self._backoff, seg))
        self._backoff = min(self._backoff * 2, _MAX_BACKOFF_S)

    def succeeded(self) -> None:
        """A batch encoded: the encoder works again."""
        self.troubled = False
        self._backoff = self._first

    def due(self, *, now: float | None = None) -> list[Segment]:
        """The segments whose wait is over (cancelled ones are dropped)."""
        now = time.monotonic() if now is None else now
        ready = [seg for at, seg in self._waiting if at <= now and not seg.cancelled]
        self._waiting = [(at, seg) for at, seg in self._waiting if at > now and not seg.cancelled]
        return ready

    def __len__(self) -> int:
        return len(self._waiting)
