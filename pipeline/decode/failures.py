"""Errors from PyAV, FFmpeg and reading an input, as clipguard's typed decode errors.

==========================================================  ==============================
raised while opening, demuxing, decoding or fetching         becomes
==========================================================  ==============================
a :class:`~pipeline.errors.DecodeError` already              itself
``MemoryError`` (``av.error.MemoryError`` is one)            :class:`LimitExceeded`
FFmpeg's exit or timeout, ``TimeoutError``                   :class:`DecodeTimeout`
no decoder, FFmpeg's "patch welcome"                         :class:`UnsupportedMedia`
an HTTP error or ``OSError`` while fetching over a network   :class:`MediaUnavailable`
any other FFmpeg error, ``OSError`` or ``EOFError``          :class:`InvalidMedia`
==========================================================  ==============================
"""

from __future__ import annotations

import av
import av.error

from pipeline.errors import (
    DecodeError,
    DecodeTimeout,
    InvalidMedia,
    LimitExceeded,
    MediaUnavailable,
    UnsupportedMedia,
)

__all__ = ["describe_error", "map_error"]


def describe_error(error: BaseException) -> str:
    """A short message for an error: FFmpeg's own text where it has one."""
    if isinstance(error, av.error.FFmpegError) and error.strerror:
        return str(error.strerror)
    return str(error) or type(error).__name__


def map_error(error: BaseException, label: str, *, network: bool = False) -> DecodeError:
    """A typed clipguard error for an error raised by PyAV or by reading the input."""
    if isinstance(error, DecodeError):
        return error
    what = describe_error(error)
    if isinstance(error, MemoryError):  # av.error.MemoryError is one too
        return LimitExceeded(f"{label}: out of memory while decoding ({what})")
    if isinstance(error, av.error.ExitError | av.error.TimeoutError | TimeoutError):
        return DecodeTimeout(f"{label}: timed out ({what})")
    if isinstance(error, av.error.DecoderNotFoundError | av.error.PatchWelcomeError):
        return UnsupportedMedia(f"{label}: no decoder for this input ({what})")
    if network and isinstance(error, av.error.HTTPError | av.error.HTTPClientError | OSError):
        return MediaUnavailable(f"{label}: cannot fetch ({what})")
    if isinstance(error, av.error.FFmpegError | OSError | EOFError):
        return InvalidMedia(f"{label}: not a valid input ({what})")
    return InvalidMedia(f"{label}: {type(error).__name__}: {what}")
