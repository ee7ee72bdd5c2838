"""The clipguard exception tree.

Every error clipguard raises on purpose derives from :class:`ClipguardError`, and where a
builtin fits, from that builtin too, so callers can catch either::

    ClipguardError
    ├── ConfigError(ClipguardError, ValueError)       bad settings or arguments
    ├── PolicyError(ClipguardError, ValueError)       a policy file is invalid (file:line:col)
    ├── StoreError(ClipguardError, ValueError)        a frame store, its files or records are bad
    ├── HashError(ClipguardError, ValueError)         a hash or a picture to hash is invalid
    │   └── BankError(HashError)                      a hash bank file is invalid (file:line)
    ├── DecodeError(ClipguardError, ValueError)       an input could not be turned into frames
    │   ├── InvalidMedia(DecodeError)                 not valid media of the declared type
    │   ├── UnsupportedMedia(DecodeError)             valid, but not something clipguard decodes
    │   ├── LimitExceeded(DecodeError)                over a configured decode limit
    │   ├── DecodeTimeout(DecodeError)                over the wall-clock limit (or a network stall)
    │   ├── DecodeCrash(DecodeError)                  the decode process died
    │   ├── MediaUnavailable(DecodeError)             the input could not be read (missing, HTTP)
    │   └── InputRefused(DecodeError)                 the input is outside what may be read
    └── ModelError(ClipguardError)                    anything about CLIP weights
        ├── WeightsNotFound(ModelError, FileNotFoundError)
        ├── WeightsFormatError(ModelError, ValueError)
        │   └── UntrustedWeights(WeightsFormatError)  an archive that would run unknown code
        ├── StateDictMismatch(ModelError, KeyError)
        ├── ChecksumMismatch(ModelError, ValueError)
        ├── DownloadError(ModelError, OSError)
        ├── TokenizerError(ModelError, ValueError)
        └── LicenseNotAccepted(ModelError, PermissionError)
        └── AccuracyGuardError(ModelError, ValueError)  a precision fails the accuracy guard
"""

from __future__ import annotations

__all__ = [
    "AccuracyGuardError",
    "BankError",
    "ChecksumMismatch",
    "ClipguardError",
    "ConfigError",
    "DecodeCrash",
    "DecodeError",
    "DecodeTimeout",
    "DownloadError",
    "HashError",
    "InputRefused",
    "InvalidMedia",
    "LicenseNotAccepted",
    "LimitExceeded",
    "MediaUnavailable",
    "ModelError",
    "PolicyError",
    "StateDictMismatch",
    "StoreError",
    "TokenizerError",
    "UnsupportedMedia",
    "UntrustedWeights",
    "WeightsFormatError",
    "WeightsNotFound",
]


class ClipguardError(Exception):
    """Base class of every error clipguard raises on purpose."""


class ConfigError(ClipguardError, ValueError):
    """A setting or argument is invalid."""


class PolicyError(ClipguardError, ValueError):
    """A policy file cannot be read or is invalid; the message names file, line and column."""


class StoreError(ClipguardError, ValueError):
    """A frame store cannot be used as asked: an unreadable or malformed file or record, a
    store written by another model than the one asked for, a refused backtest."""


class HashError(ClipguardError, ValueError):
    """A perceptual or file hash is malformed, or a picture cannot be hashed."""


class BankError(HashError):
    """A hash bank cannot be read or is invalid; the message names the file and line."""


class DecodeError(ClipguardError, ValueError):
    """A media input could not be decoded into frames; the message says which input and why."""


class InvalidMedia(DecodeError):
    """The bytes are not valid media of the declared type: empty, truncated before any frame,
    corrupt, random, or another format than the content type says."""


class UnsupportedMedia(DecodeError):
    """The input may be well-formed but clipguard does not decode it: an unknown content type,
    a playlist, a URL scheme other than file and http(s), no video stream, no decoder."""


class LimitExceeded(DecodeError):
    """The input goes over a configured decode limit (pixels, frames, duration, bytes, memory)."""


class DecodeTimeout(DecodeError):
    """Decoding took longer than the wall-clock limit, or a network read stalled."""


class DecodeCrash(DecodeError):
    """The decode process died (a signal such as SIGSEGV, or an exit) or failed unexpectedly;
    a raw stream pinned to that process lost its decoder state and must be reopened."""


class MediaUnavailable(DecodeError):
    """The input could not be read at all: a missing file, an HTTP error, a refused connection."""


class InputRefused(DecodeError):
    """The input reference names something it may not reach: a file outside the allowed roots,
    a URL host not allowed, an address that is not public (loopback, private, link-local,
    metadata), too many redirects (:mod:`pipeline.decode.access`)."""


class ModelError(ClipguardError):
    """A problem with CLIP weights: finding, fetching, reading or fitting them."""


class WeightsNotFound(ModelError, FileNotFoundError):
    """The weights are not on disk where they were looked for."""


class WeightsFormatError(ModelError, ValueError):
    """A weights file is not in any format clipguard can read."""


class UntrustedWeights(WeightsFormatError):
    """A weights file that can only be read by running code it carries (a TorchScript
    archive) and whose SHA-256 is not one the registry publishes."""


class StateDictMismatch(ModelError, KeyError):
    """A state dict does not fit the architecture read off its shapes."""

    def __init__(self, message: str, *, missing: list[str], unexpected: list[str]) -> None:
        super().__init__(message)
        self.missing = missing
        self.unexpected = unexpected

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class ChecksumMismatch(ModelError, ValueError):
    """A downloaded file's SHA-256 is not the one its registry entry names."""


class DownloadError(ModelError, OSError):
    """Fetching weights over the network failed."""


class TokenizerError(ModelError, ValueError):
    """Text cannot be tokenized as asked (too long without truncation, bad vocabulary)."""


class LicenseNotAccepted(ModelError, PermissionError):
    """A model's weights are under a non-commercial or research-only licence that the operator
    has not accepted by name (``CLIPGUARD_ACCEPT_LICENSES``)."""


class AccuracyGuardError(ModelError, ValueError):
    """A precision asked for explicitly fails the accuracy guard against fp32 (the message has
    the measured figures)."""
