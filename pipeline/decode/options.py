"""How an input is decoded: the model input (size, fit, interpolation), sampling, limits, threads.

:class:`DecodeOptions` is the one value every entry point takes
(:func:`~pipeline.decode.decode_bytes`, :func:`~pipeline.decode.decode_uri`,
:class:`~pipeline.decode.RawStreamDecoder` and the :class:`~pipeline.decode.DecodePool` calls);
it is frozen and validated once, when it is made.
Variants are made with :meth:`DecodeOptions.with_` (``dataclasses.replace``, validated again)::

    options = DecodeOptions(224, sampling=Sampling(mode="fps", fps=2.0))
    tiles = options.with_(fit="tiles")
    hashed = options.with_(hashes="pdq")     # and the PDQ hash of every sampled frame

Two fields may be left to the place the decode runs: ``limits`` (None: ``Limits()`` in this
process, the pool's own limits in a :class:`~pipeline.decode.DecodePool`) and ``threads`` (None:
0, one per core, for :func:`~pipeline.decode.decode_bytes` and
:func:`~pipeline.decode.decode_uri`; 1 for a raw stream; cores / processes in a pool).
:meth:`DecodeOptions.resolve` fills them in, giving the :class:`ResolvedOptions` the decoders read.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, Final, Literal, get_args

from pipeline.decode.sampling import Sampling
from pipeline.errors import ConfigError

__all__ = [
    "DEFAULT_HASH_SIDE",
    "DEFAULT_INTERPOLATION",
    "MAX_SIZE",
    "DecodeOptions",
    "Fit",
    "HashMode",
    "Interpolation",
    "Limits",
    "ResolvedOptions",
    "check_threads",
]

Fit = Literal["pad", "crop", "tiles"]
#: swscale scaling algorithm for the resize to the model input.
Interpolation = Literal["fast_bilinear", "bilinear", "area", "bicubic", "lanczos"]
DEFAULT_INTERPOLATION: Final[Interpolation] = "area"
MAX_SIZE: Final = 4096  # largest model input side accepted
#: Perceptual hashes of sampled frames (:mod:`pipeline.decode.hashing`): none, the PDQ hash
#: and quality, or the PDQ hashes of the frame's eight rotations and mirrors.
HashMode = Literal["none", "pdq", "dihedral"]
#: Long side (pixels) a picture is scaled down to (by a whole factor) before PDQ; the cost and
#: the distance to the full-size hash are measured in ``bench/bench_hashes_decode.py``.
DEFAULT_HASH_SIDE: Final = 640


@dataclass(frozen=True, slots=True)
class Limits:
    """Decode limits. Every one is checked before decoding where the input's header tells,
    and again on every decoded frame; a breach raises :class:`LimitExceeded` (or
    :class:`DecodeTimeout` for ``timeout``). For a :class:`RawStreamDecoder` the frame, duration
    and byte limits apply to each ``feed`` call, so a live stream can run indefinitely."""

    max_pixels: int = 8192 * 4320  # width x height of one frame (8K UHD, about 35 Mpx)
    max_frames: int = 216_000  # frames decoded per input (1 h at 60 fps)
    max_duration: float = 3600.0  # seconds of media per input
    max_input_bytes: int = 2 * 1024**3  # bytes per input (2 GiB)
    timeout: float = 600.0  # wall-clock seconds per input (pool: hard kill; in-process: checked)
    network_timeout: float = 15.0  # seconds to connect, and for any one network read
    max_memory: int = 4 * 1024**3  # address space of a pool decode process; half: output cap
    #: CPU seconds per input, every decoder thread together (pool only: the process is ended)
    max_cpu: float = 600.0

    def __post_init__(self) -> None:
        for name in ("max_pixels", "max_frames", "max_input_bytes", "max_memory"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"Limits.{name} must be a positive integer, not {value!r}")
        for name in ("max_duration", "timeout", "network_timeout", "max_cpu"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not (value > 0) or math.isnan(value):
                raise ConfigError(f"Limits.{name} must be a positive number, not {value!r}")


def check_threads(threads: object) -> int:
    """``threads`` if it is a decoder thread count (0: FFmpeg picks one per core, up to 64)."""
    if not isinstance(threads, int) or isinstance(threads, bool) or not 0 <= threads <= 64:
        raise ConfigError(f"threads must be an integer from 0 (auto) to 64, not {threads!r}")
    return threads


@dataclass(frozen=True, slots=True)
class ResolvedOptions:
    """:class:`DecodeOptions` with ``limits`` and ``threads`` filled in: what a decoder reads."""

    size: int
    fit: Fit
    sampling: Sampling
    limits: Limits
    interpolation: Interpolation
    threads: int
    hashes: HashMode = "none"
    hash_side: int = DEFAULT_HASH_SIDE

    def as_options(self) -> DecodeOptions:
        """The same settings as :class:`DecodeOptions`, with nothing left to a default."""
        return DecodeOptions(
            self.size,
            fit=self.fit,
            sampling=self.sampling,
            limits=self.limits,
            interpolation=self.interpolation,
            threads=self.threads,
            hashes=self.hashes,
            hash_side=self.hash_side,
        )


@dataclass(frozen=True, slots=True)
class DecodeOptions:
    """How to decode an input; see the module docstring. Raises :class:`ConfigError` when a
    field is out of range."""

    size: int  # the model's square input side, pixels (8 to 4096)
    _: KW_ONLY
    fit: Fit = "pad"  # "pad", "crop" or "tiles": see pipeline.decode.fit
    sampling: Sampling = field(default_factory=Sampling)  # which decoded frames to keep
    limits: Limits | None = None  # None: Limits() in this process, a pool's own limits in it
    interpolation: Interpolation = DEFAULT_INTERPOLATION  # swscale scaler for the resize
    threads: int | None = None  # decoder threads, 0: one per core; None: where it runs decides
    hashes: HashMode = "none"  # perceptual hash of each sampled frame: "pdq" or "dihedral"
    hash_side: int = DEFAULT_HASH_SIDE  # hash a downscale to this long side; 0: full size

    def __post_init__(self) -> None:
        size = self.size
        if not isinstance(size, int) or isinstance(size, bool) or not 8 <= size <= MAX_SIZE:
            raise ConfigError(f"size must be an integer from 8 to {MAX_SIZE}, not {size!r}")
        if self.fit not in get_args(Fit):
            raise ConfigError(f"fit must be one of {get_args(Fit)}, not {self.fit!r}")
        if self.interpolation not in get_args(Interpolation):
            raise ConfigError(
                f"interpolation must be one of {get_args(Interpolation)}, "
                f"not {self.interpolation!r}"
            )
        if self.threads is not None:
            check_threads(self.threads)
        if self.hashes not in get_args(HashMode):
            raise ConfigError(f"hashes must be one of {get_args(HashMode)}, not {self.hashes!r}")
        side = self.hash_side
        if (
            not isinstance(side, int)
            or isinstance(side, bool)
            or not (side == 0 or 64 <= side <= 8192)
        ):
            raise ConfigError(f"hash_side must be 0 (full size) or from 64 to 8192, not {side!r}")
        if not isinstance(self.sampling, Sampling):
            raise ConfigError(f"sampling must be a Sampling, not {type(self.sampling).__name__}")
        if self.limits is not None and not isinstance(self.limits, Limits):
            raise ConfigError(f"limits must be a Limits, not {type(self.limits).__name__}")

    def with_(self, **changes: Any) -> DecodeOptions:
        """A copy with ``changes`` applied (``dataclasses.replace``), validated again."""
        return dataclasses.replace(self, **changes)

    def resolve(self, *, limits: Limits, threads: int) -> ResolvedOptions:
        """These options with ``limits`` and ``threads`` taken from the arguments where unset."""
        return ResolvedOptions(
            size=self.size,
            fit=self.fit,
            sampling=self.sampling,
            limits=self.limits if self.limits is not None else limits,
            interpolation=self.interpolation,
            threads=self.threads if self.threads is not None else threads,
            hashes=self.hashes,
            hash_side=self.hash_side,
        )

    @staticmethod
    def check(options: object) -> DecodeOptions:
        """``options`` if it is a :class:`DecodeOptions`, else :class:`ConfigError`."""
        if not isinstance(options, DecodeOptions):
            raise ConfigError(f"options must be a DecodeOptions, not {type(options).__name__}")
        return options
