"""Infrastructure faults are not bad input: segments whose encoding failed, or that found no
decode process, wait and try again.

An encoder batch that fails twice (a GPU out of memory, a driver reset) says nothing about the
segments in it: dead-lettering and committing them would lose good video to a passing fault.
:class:`EncodeRetries` keeps each such segment, uncommitted, and hands it back for encoding
after a backoff that doubles with every failure in a row (from ``retry_backoff_ms`` to 30 s); the
worker reports not ready while the encoder keeps failing, and its partitions pause once too
much is in flight (backpressure), so nothing is committed past the failing segments. The first
batch that encodes again resets the backoff.

Decoding is judged by :class:`DecodeRecovery`. A decode that crashed or ran out of time is tried
once more, in a fresh decode process; the same input failing a fresh process twice is the
input's fault (the caller dead-letters and commits it), and so is every other decode error
(invalid, unsupported, over a limit: SIGXCPU and a memory blow-up included). A decode that
found no decode process at all (:class:`~pipeline.errors.DecodeUnavailable`: the pool cannot
start one, so the interpreter cannot run or the machine is out of processes or memory) is the
machine's fault: the segment waits, uncommitted, and is decoded again after the same doubling
backoff; the attempt does not count, the worker is not ready and pauses consumption until a
decode succeeds again. No input can cause that error: a process counts as started only once it
has confined itself and said hello, before it is given any input.
"""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING, Any, Final

from consumers.worker.segments import Segment
from pipeline.errors import DecodeCrash, DecodeTimeout, DecodeUnavailable

if TYPE_CHECKING:
    from consumers.worker.decoding import SegmentDecoder

__all__ = ["DecodeRecovery", "EncodeRetries"]

_log = logging.getLogger(__name__)
_MAX_BACKOFF_S: Final = 30.0
_DECODE_ATTEMPTS: Final = 2  # a crash or timeout is tried once more before the DLQ


class EncodeRetries:
    """Segments waiting to be encoded again; see the module docstring."""

    def __init__(self, backoff_s: float, *, stage: str = "encoding") -> None:
        self._stage = stage
        self._first = backoff_s
        self._backoff = backoff_s
        self._waiting: list[tuple[float, Segment]] = []
        self.troubled = False  # the encoder failed and has not encoded since

    def failed(self, seg: Segment, error: BaseException, *, now: float | None = None) -> None:
        """``seg``'s encoding failed: it is encoded again after the current backoff."""
        now = time.monotonic() if now is None else now
        self.troubled = True
        _log.warning(
            "%s failed (%s: %s): trying again in %.1f s, not committed",
            self._stage,
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


class DecodeRecovery:
    """What a failed decode means (see the module docstring); ``retried`` counts retries."""

    def __init__(self, backoff_s: float, retried: Any) -> None:
        self._waiting = EncodeRetries(backoff_s, stage="decoding")
        self._retried = retried  # a prometheus counter child

    @property
    def troubled(self) -> bool:
        """No decode process could be had, and no decode has succeeded since."""
        return self._waiting.troubled

    def failed(self, seg: Segment, error: BaseException, decoder: SegmentDecoder) -> bool:
        """``seg``'s decode failed with ``error``: True when it goes on (decoded again now, or
        after a backoff), False when it is the input's fault (dead-letter it). A failed raw
        chunk closes its stream's decoder (the next chunk starts afresh)."""
        raw = seg.info is not None and seg.info.raw
        if raw:
            decoder.close_raw(seg.stream_id)
        if isinstance(error, DecodeUnavailable):
            seg.attempts -= 1  # not the input's attempt
            self._retried.inc()
            self._waiting.failed(seg, error)
            return True
        crashed = isinstance(error, DecodeCrash | DecodeTimeout)
        if crashed and seg.attempts < _DECODE_ATTEMPTS and not raw:
            self._retried.inc()
            _log.warning("decode failed (%s), trying once more", error, extra=seg.log())
            decoder.decode(seg)
            return True
        return False

    def succeeded(self) -> None:
        """A segment decoded: decode processes work."""
        self._waiting.succeeded()

    def due(self, decoder: SegmentDecoder) -> None:
        """Decode again the segments whose wait is over (all of them once the pool has
        decode processes again)."""
        if not self._waiting:
            if decoder.pool.available:  # nothing waits (dropped with its partition?): over
                self._waiting.succeeded()
            return
        now = math.inf if decoder.pool.available else None
        for seg in self._waiting.due(now=now):
            decoder.decode(seg)

    def __len__(self) -> int:
        return len(self._waiting)
