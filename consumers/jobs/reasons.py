"""What a failed job's status may say: its error class and a fixed reason per class.

Whoever can write ``clipguard.jobs`` can read ``clipguard.job-status``: a reason that quoted the
decoder's message would tell them whether a path exists, how large a file is, which HTTP status
an internal server answered or whether a port is open. The status carries the error's class and
the generic sentence below; the worker's log has the detail. Job requests that do not validate
keep their own reason: it speaks of the request's fields, never of what a worker found.
"""

from __future__ import annotations

from typing import Final

from pipeline.errors import (
    DecodeCrash,
    DecodeTimeout,
    InputRefused,
    InvalidMedia,
    LimitExceeded,
    MediaUnavailable,
    UnsupportedMedia,
)

__all__ = ["public_reason"]

_REASONS: Final[tuple[tuple[type[BaseException], str], ...]] = (
    (InputRefused, "the input is not one scan jobs may read on this worker"),
    (MediaUnavailable, "the input could not be read"),
    (InvalidMedia, "the input is not valid media of its type"),
    (UnsupportedMedia, "the input is not media this worker decodes (or no video stream)"),
    (LimitExceeded, "the input goes over a decode limit"),
    (DecodeTimeout, "decoding the input took too long"),
    (DecodeCrash, "the decoder failed on the input"),
)
_OTHER: Final = "the job failed on the worker (see its log)"


def public_reason(error: BaseException, *, own_reason: type[BaseException] | None = None) -> str:
    """The reason a job status may publish for ``error``: the error's own message when it is an
    ``own_reason`` (a request that failed validation), else a fixed sentence for its class."""
    if own_reason is not None and isinstance(error, own_reason):
        return str(error)
    for cls, reason in _REASONS:
        if isinstance(error, cls):
            return reason
    return _OTHER
