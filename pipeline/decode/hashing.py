"""PDQ hashes of sampled frames, computed in the decode process from the decoded picture.

PDQ (:mod:`pipeline.hashes.pdq`) is defined on the picture at a size of its own choosing: it
filters and decimates whatever it is given to 64 x 64. So the hash is taken from the decoded
frame, not from the model's fitted square (224 pixels, padded or cropped, would be another
picture), in the frame's coded orientation and with PyAV's default RGB24 conversion: the
pixels vPDQ's reference hasher and ``clipguard banks add`` hash, so a bank built from the same
file matches.

Before hashing, a frame larger than ``hash_side`` on its long side is scaled down to it inside
swscale (area averaging, aspect kept, one reusable converter a stream). PDQ's Jarosz filter
costs in proportion to the pixels: on a 1080p frame about 9 ms (compiled,
:mod:`pipeline.hashes.pdq_kernel`; the reference C++ about 50), on a 640 x 360 downscale under
1 ms; and area averaging followed by PDQ's own box filters is close to
PDQ's filters alone, so the hash moves little. The cost and the distance to the full-size hash
are measured in ``bench/bench_hashes_decode.py`` (the figures are in the README); ``hash_side
= 0`` hashes the full frame, bit for bit as the reference does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import av
import numpy as np
from av.video.reformatter import Interpolation as _SwsInterpolation
from av.video.reformatter import VideoReformatter

from pipeline.decode.options import HashMode

if TYPE_CHECKING:
    from pipeline.hashes.pdq import DihedralHashes, PdqHash

__all__ = ["FrameHasher", "hash_size", "prepare_hashing"]

_prepared = False


def prepare_hashing() -> None:
    """Compile the PDQ code (or load it from numba's disk cache) in this process, once. The
    decode pool calls it before it sends the first task that hashes, so that its decode
    processes load the machine code from the cache instead of compiling it (seconds) on their
    first hashed frame."""
    global _prepared
    if not _prepared:
        from pipeline.hashes import pdq_kernel

        pdq_kernel.compile_kernels()
        _prepared = True


def hash_size(width: int, height: int, side: int) -> tuple[int, int]:
    """The (width, height) a ``width`` x ``height`` picture is hashed at: divided by the
    smallest whole factor that brings its long side to at most ``side`` (0: not scaled).

    A whole factor keeps PDQ's filter windows (``ceil(size / 128)`` pixels a dimension) in the
    same proportion to the picture as at full size (1920 x 1080: 15 x 9; divided by 3: 5 x 3)
    and makes area averaging an exact box over whole pixels; an arbitrary size (512 x 288:
    4 x 3) widens one window against the other and moves the hash further (measured in
    ``bench/bench_hashes_decode.py``)."""
    long_side = max(width, height)
    if side == 0 or long_side <= side:
        return width, height
    factor = -(-long_side // side)  # ceil
    return max(1, round(width / factor)), max(1, round(height / factor))


class FrameHasher:
    """PDQ (or its eight dihedral variants) of decoded frames; see the module docstring."""

    def __init__(self, mode: HashMode, side: int) -> None:
        if mode == "none":
            raise ValueError("a FrameHasher hashes: mode 'pdq' or 'dihedral'")
        from pipeline.hashes import pdq  # the PDQ library loads only where frames are hashed

        self._hash = pdq.pdq_dihedral if mode == "dihedral" else pdq.pdq_hash
        self._side = side
        self._rgb = VideoReformatter()

    def __call__(self, frame: av.VideoFrame) -> PdqHash | DihedralHashes:
        """The hash of ``frame`` as decoded (see the module docstring)."""
        w, h = hash_size(frame.width, frame.height, self._side)
        if (w, h) == (frame.width, frame.height):
            rgb = frame.to_ndarray(format="rgb24")  # as vPDQ and `banks add` convert it
        else:
            small = self._rgb.reformat(
                frame, w, h, "rgb24", interpolation=_SwsInterpolation.AREA, threads=1
            )
            rgb = small.to_ndarray()
        return self._hash(np.ascontiguousarray(rgb, dtype=np.uint8))
