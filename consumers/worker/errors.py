"""The worker's own error."""

from __future__ import annotations

from pipeline.errors import ClipguardError

__all__ = ["WorkerError"]


class WorkerError(ClipguardError, RuntimeError):
    """The worker cannot start or keep running (broker unreachable, topics missing...)."""
