"""FFmpeg's error log as a counter of failed and refused picture allocations.

Under a decode process's ``RLIMIT_AS`` a decoder that cannot allocate a picture does not always
say ENOMEM: H.264's reports invalid data. Its log line (``get_buffer() failed``) is what tells a
memory blow-up from a corrupt packet, and ``max pixel count`` a picture refused for going over
``Limits.max_pixels``. :func:`watch_allocations` routes PyAV's ``libav`` logger to a counter;
the frame sink compares the counts before and after a decode error
(:meth:`~pipeline.decode.frames.FrameSink.check_memory`). Decode processes turn the watch on;
in other processes the counts stay 0.
"""

from __future__ import annotations

import logging

import av

__all__ = ["allocation_failures", "oversized_pictures", "watch_allocations"]


class _AllocationWatch(logging.Handler):
    """Counts picture allocations FFmpeg reports as failed for want of memory (under the pool's
    ``RLIMIT_AS`` a decoder like H.264's then reports invalid data, not ENOMEM)."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.failures = 0
        self.oversized = 0  # pictures refused for going over max_pixels
        self._refused = False  # the last get_buffer() failure was a size check, not memory

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "get_buffer() failed" in message:
            if not self._refused:
                self.failures += 1
            self._refused = False
        elif "max pixel count" in message:
            self.oversized += 1
            self._refused = True
        elif "image parameters invalid" in message:
            self._refused = True
        elif "Cannot allocate memory" in message:
            self.failures += 1


_allocation_watch: _AllocationWatch | None = None


def watch_allocations() -> None:
    """Route FFmpeg's error log to a counter (and nowhere else). Decode processes call this;
    it changes PyAV's process-wide log level, so it is not done on import."""
    global _allocation_watch
    if _allocation_watch is not None:
        return
    _allocation_watch = _AllocationWatch()
    logger = logging.getLogger("libav")
    logger.propagate = False
    logger.addHandler(_allocation_watch)
    av.logging.set_level(av.logging.ERROR)


def allocation_failures() -> int:
    """Picture allocations FFmpeg failed for want of memory, so far (0 when not watched)."""
    return _allocation_watch.failures if _allocation_watch is not None else 0


def oversized_pictures() -> int:
    """Pictures FFmpeg refused for going over ``max_pixels``, so far (0 when not watched)."""
    return _allocation_watch.oversized if _allocation_watch is not None else 0
