"""PDQ perceptual hashes (and their quality) of RGB frames, bit for bit as Meta's reference.

PDQ (Meta, 2019; ``hashing.pdf`` in facebook/ThreatExchange) turns a picture into 256 bits:

1. luma ``Y = 0.299 R + 0.587 G + 0.114 B`` as floats, at the picture's full size;
2. a Jarosz filter (two passes of a box filter along rows and columns, window
   ``ceil(size / 128)``, which approximates a tent filter) and a decimation to **64 x 64**:
   this is the downscale PDQ defines, and it is why PDQ wants the decoded picture at its own
   size, not the model's 224-pixel input;
3. the quality: the sum of quantised gradients of the 64 x 64 picture over 90, capped at 100
   (flat or nearly flat pictures score low; ThreatExchange ignores frames under 50);
4. a 2-D DCT of which the 16 x 16 lowest frequencies (except DC) are kept;
5. one bit per coefficient: above the median or not.

The eight dihedral variants (rotations and mirrors) fall out of the 16 x 16 DCT by sign flips
and transposition, so mirrored or rotated copies can be matched without hashing them again.

The hashing is Meta's reference algorithm (the C++ sources of facebook/ThreatExchange
``pdq/cpp``), computed by :mod:`pipeline.hashes.pdq_kernel`: the same float32 arithmetic in the
same order, laid out for SIMD and the cache, so every hash and quality is the one the reference
gives, about ten times sooner. The tests hold it to the ``pdqhash`` package (Python bindings
around that C++, which ThreatExchange's own Python hasher and so HMA call for photos:
``pdqhash.compute`` on the full-size RGB array) on generated pictures, decoded video frames
and odd shapes, and to vPDQ (HMA's video hasher, the same C++ on each full-size RGB24 frame).

Only the reference *command-line* photo hasher differs: it first resizes pictures larger than
512 pixels on a side to 512 x 512 (a speed measure, "the two-pass Jarosz filter is
prohibitively expensive for larger images"). :func:`pdq_hash` hashes the pixels it is given;
a caller that wants that cheaper path passes a picture already scaled down, and the cost and
the distance it adds are measured in ``bench/bench_hashes_robustness.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from pipeline.errors import HashError
from pipeline.hashes import pdq_kernel

__all__ = [
    "DIHEDRAL_NAMES",
    "MAX_PIXELS",
    "MAX_SIDE",
    "MIN_SIDE",
    "DihedralHashes",
    "PdqHash",
    "pdq_dihedral",
    "pdq_hash",
]

MAX_SIDE = 16_384  # a bound on either side of a picture to hash
MAX_PIXELS = 80_000_000  # and on its area (8K UHD is 33 MP)
MIN_SIDE = pdq_kernel.MIN_SIDE  # below this on a side: the all-zero hash, quality 0

# The order of the reference's pdqDihedralHash256es (and of pdqhash.compute_dihedral)
DIHEDRAL_NAMES = (
    "original",
    "rotate90",
    "rotate180",
    "rotate270",
    "flip_x",
    "flip_y",
    "flip_plus1",
    "flip_minus1",
)


@dataclass(frozen=True, slots=True)
class PdqHash:
    """A PDQ hash (32 bytes, ThreatExchange bit order) and its quality (0..100)."""

    hash: bytes
    quality: int

    @property
    def hex(self) -> str:
        return self.hash.hex()

    @property
    def original(self) -> bytes:
        """The hash itself (as :attr:`DihedralHashes.original`)."""
        return self.hash


@dataclass(frozen=True, slots=True)
class DihedralHashes:
    """The hashes of a picture and of its seven rotations and mirrors, in
    :data:`DIHEDRAL_NAMES` order, with the picture's quality (the same for all eight)."""

    hashes: tuple[bytes, ...]
    quality: int

    @property
    def hex(self) -> str:
        """The picture's own hash (``original``) in hex, as :attr:`PdqHash.hex`."""
        return self.hashes[0].hex()

    @property
    def original(self) -> bytes:
        """The picture's own hash (``original``), as :attr:`PdqHash.hash`."""
        return self.hashes[0]

    def named(self) -> dict[str, bytes]:
        return dict(zip(DIHEDRAL_NAMES, self.hashes, strict=True))


def pdq_hash(frame: npt.NDArray[np.uint8]) -> PdqHash:
    """The PDQ hash and quality of an RGB uint8 picture ``(H, W, 3)`` at the size given.

    Pass the decoded frame before any resize to the model's input: PDQ's own 64 x 64
    downscale is part of the hash. Pictures under :data:`MIN_SIDE` pixels on a side get the
    all-zero hash with quality 0, as in the reference.
    """
    _check_frame(frame)
    value, quality = pdq_kernel.hash_bytes(frame)
    return PdqHash(value, quality)


def pdq_dihedral(frame: npt.NDArray[np.uint8]) -> DihedralHashes:
    """The eight dihedral PDQ hashes of an RGB uint8 picture in one pass (see
    :data:`DIHEDRAL_NAMES`); ``hashes[0]`` equals :func:`pdq_hash`'s (for a picture of exactly
    64 x 64 up to rounding: as in the reference, the single hash takes it unfiltered and this
    path runs it through the one-pixel filter)."""
    _check_frame(frame)
    values, quality = pdq_kernel.dihedral_bytes(frame)
    return DihedralHashes(tuple(values), quality)


def _check_frame(frame: Any) -> None:
    if not isinstance(frame, np.ndarray):
        raise HashError(f"a picture to hash is a numpy array, not {type(frame).__name__}")
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise HashError(
            f"a picture to hash is RGB uint8 (H, W, 3), not {frame.dtype} {tuple(frame.shape)}"
        )
    h, w = int(frame.shape[0]), int(frame.shape[1])
    if h < 1 or w < 1:
        raise HashError(f"a picture to hash cannot be empty ({h} x {w})")
    if h > MAX_SIDE or w > MAX_SIDE or h * w > MAX_PIXELS:
        raise HashError(
            f"a {w} x {h} picture is over the hashing limit ({MAX_SIDE} a side, "
            f"{MAX_PIXELS} pixels)"
        )
