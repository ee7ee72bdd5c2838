"""The clipguard exception tree.

Every error clipguard raises on purpose derives from :class:`ClipguardError`, and where a
builtin fits, from that builtin too, so callers can catch either::

    ClipguardError
    ├── ConfigError(ClipguardError, ValueError)       bad settings or arguments
    └── ModelError(ClipguardError)                    anything about CLIP weights
        ├── WeightsNotFound(ModelError, FileNotFoundError)
        ├── WeightsFormatError(ModelError, ValueError)
        ├── StateDictMismatch(ModelError, KeyError)
        ├── ChecksumMismatch(ModelError, ValueError)
        ├── DownloadError(ModelError, OSError)
        └── TokenizerError(ModelError, ValueError)
"""

from __future__ import annotations

__all__ = [
    "ChecksumMismatch",
    "ClipguardError",
    "ConfigError",
    "DownloadError",
    "ModelError",
    "StateDictMismatch",
    "TokenizerError",
    "WeightsFormatError",
    "WeightsNotFound",
]


class ClipguardError(Exception):
    """Base class of every error clipguard raises on purpose."""


class ConfigError(ClipguardError, ValueError):
    """A setting or argument is invalid."""


class ModelError(ClipguardError):
    """A problem with CLIP weights: finding, fetching, reading or fitting them."""


class WeightsNotFound(ModelError, FileNotFoundError):
    """The weights are not on disk where they were looked for."""


class WeightsFormatError(ModelError, ValueError):
    """A weights file is not in any format clipguard can read."""


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
