"""float16 -> float32, exactly, one compiled loop per call.

NumPy converts float16 one value at a time (about 2 ns a value on this project's 2-core build
machine); torch's vectorised copy is fast but runs a copy of more than 32k values on its own
thread pool, which stalls the scan's threads, so the cosine kernel had to call it once per 63
rows of 512 values (16 thousand Python calls per million stored frames). :func:`widen` does a
whole chunk in one call, releasing the GIL, at torch's speed: the float16 bits are moved into
the float32 layout and multiplied by 2**112, which rescales the exponent and normalises
subnormals in one rounding-free step; infinities and NaNs (whose exponent the multiply would
not carry) are set by a mask. ``tests/test_store_cosines.py`` checks all 65 536 float16 values
against NumPy's conversion, bit for bit. :func:`half_dots` does the same conversion inside a
dot product with one float32 query (a search), so the float32 rows are never written out;
:func:`half_cosines` with a few float32 rows at once (a backtest's prompt rows): four stored
rows converted into a small buffer, then each prompt row's four sums in one pass, so a prompt
value is loaded once for four frames, and the row's norm summed alongside. Their sums do not
depend on the batch a row is in (unlike a BLAS product's), so a backtest may score some frames
apart from the others and get the same numbers.
NumPy offers no faster conversion and numba's float16 support is GPU only, hence these few lines.
"""

from __future__ import annotations

from typing import Final

import numba
import numpy as np
import numpy.typing as npt

__all__ = ["half_cosines", "half_dots", "widen"]

_SCALE: Final = np.float32(2.0**112)


@numba.njit(nogil=True, cache=True)  # type: ignore[misc]
def _widen(src: npt.NDArray[np.uint16], dst: npt.NDArray[np.uint32], scale: np.float32) -> None:
    for i in range(src.shape[0]):
        h = np.uint32(src[i])
        magnitude = np.uint32((h & np.uint32(0x7FFF)) << np.uint32(13))
        bits = np.float32(magnitude.view(np.float32) * scale).view(np.uint32)
        special = np.uint32(0) - np.uint32(magnitude >= np.uint32(0x0F800000))  # inf, NaN
        bits = np.uint32((bits & ~special) | ((magnitude | np.uint32(0x7F800000)) & special))
        dst[i] = np.uint32(bits | np.uint32((h & np.uint32(0x8000)) << np.uint32(16)))


def widen(src: npt.NDArray[np.float16], out: npt.NDArray[np.float32]) -> None:
    """Write ``src`` (C-contiguous float16) into ``out`` (float32 of the same shape)."""
    if src.shape != out.shape:
        raise ValueError(f"float16 of shape {src.shape} into float32 of shape {out.shape}")
    if src.dtype != np.float16 or out.dtype != np.float32:
        raise ValueError(f"expected float16 into float32, not {src.dtype} into {out.dtype}")
    if not (src.flags.c_contiguous and out.flags.c_contiguous):
        raise ValueError("widen takes C-contiguous arrays")
    _widen(src.reshape(-1).view(np.uint16), out.reshape(-1).view(np.uint32), _SCALE)


@numba.njit(inline="always")  # type: ignore[misc]
def _half(h: np.uint16, scale: np.float32) -> np.float32:
    """One float16 (its bits) as float32: the steps of :func:`_widen`."""
    bits16 = np.uint32(h)
    magnitude = np.uint32((bits16 & np.uint32(0x7FFF)) << np.uint32(13))
    bits = np.float32(magnitude.view(np.float32) * scale).view(np.uint32)
    special = np.uint32(0) - np.uint32(magnitude >= np.uint32(0x0F800000))
    bits = np.uint32((bits & ~special) | ((magnitude | np.uint32(0x7F800000)) & special))
    return np.uint32(bits | np.uint32((bits16 & np.uint32(0x8000)) << np.uint32(16))).view(
        np.float32
    )


@numba.njit(nogil=True, cache=True, fastmath={"reassoc", "nsz", "contract"})  # type: ignore[misc]
def _half_dots(
    src: npt.NDArray[np.uint16],
    q: npt.NDArray[np.float32],
    out: npt.NDArray[np.float32],
    scale: np.float32,
) -> None:
    rows, dim = src.shape
    for r in range(rows):
        total = np.float32(0)
        for j in range(dim):  # the conversion of _widen, then the product
            total += _half(src[r, j], scale) * q[j]
        out[r] = total


def half_dots(
    src: npt.NDArray[np.float16] | npt.NDArray[np.uint16],
    query: npt.NDArray[np.float32],
    out: npt.NDArray[np.float32],
) -> None:
    """Write into ``out`` (rows,) each row of ``src`` ((rows, E) float16, or its raw bits as
    uint16; C-contiguous) as float32 dotted with ``query`` (E,) float32. The float16 values
    are converted exactly; the sum is float32 in an order the compiled loop chooses (vector
    lanes), the same for a row wherever it is stored, so equal rows give equal results; it
    differs from NumPy's product by float32 rounding (about 1e-7 for unit vectors)."""
    if src.ndim != 2 or src.dtype not in (np.float16, np.uint16) or not src.flags.c_contiguous:
        raise ValueError(
            f"expected C-contiguous (rows, values) float16, not {src.dtype}{src.shape}"
        )
    if query.shape != (src.shape[1],) or query.dtype != np.float32:
        raise ValueError(f"a query of {query.dtype}{query.shape} for rows of {src.shape[1]}")
    if out.shape != (src.shape[0],) or out.dtype != np.float32:
        raise ValueError(f"an output of {out.dtype}{out.shape} for {src.shape[0]} rows")
    _half_dots(src.view(np.uint16), np.ascontiguousarray(query), out, _SCALE)


_BLOCK: Final = 4  # stored rows converted, then multiplied with each prompt row, at a time


@numba.njit(nogil=True, cache=True, fastmath={"reassoc", "nsz", "contract"})  # type: ignore[misc]
def _half_cosines(
    src: npt.NDArray[np.uint16],
    matrix: npt.NDArray[np.float32],
    out: npt.NDArray[np.float32],
    scale: np.float32,
) -> None:
    rows, dim = src.shape
    x = np.zeros((_BLOCK, dim), np.float32)  # the block's rows as float32, in L1
    norms = np.zeros(_BLOCK, np.float32)
    for first in range(0, rows, _BLOCK):
        held = min(_BLOCK, rows - first)
        for a in range(_BLOCK):  # a short last block: zero rows, scored and dropped
            total = np.float32(0)
            for j in range(dim):
                v = _half(src[first + a, j], scale) if a < held else np.float32(0)
                x[a, j] = v
                total += v * v
            norms[a] = max(np.float32(np.sqrt(total)), np.float32(1e-12))
        for p in range(matrix.shape[0]):
            # four sums in one loop: each prompt value is loaded once for the four rows; each
            # sum has the same vector lanes whichever slot its row takes
            s0 = s1 = s2 = s3 = np.float32(0)
            for j in range(dim):
                m = matrix[p, j]
                s0 += x[0, j] * m
                s1 += x[1, j] * m
                s2 += x[2, j] * m
                s3 += x[3, j] * m
            sums = (s0, s1, s2, s3)
            for a in range(held):
                out[first + a, p] = sums[a] / norms[a]


def half_cosines(
    src: npt.NDArray[np.float16] | npt.NDArray[np.uint16],
    matrix: npt.NDArray[np.float32],
    out: npt.NDArray[np.float32],
) -> None:
    """Write into ``out`` (rows, R) the cosines of each row of ``src`` ((rows, E) float16 or
    its raw bits, C-contiguous; re-normalised in float32) with each row of ``matrix`` ((R, E)
    float32, C-contiguous; unit rows): the float16 values converted exactly, the row's norm
    and its R dot products summed in float32 in an order the compiled loop chooses, the same
    for a row wherever it is stored and whichever other rows are scored with it, so a frame's
    cosines do not depend on the batch it was read in (a backtest scores some rows of a row
    group apart from the others). They differ from :func:`~pipeline.store.cosines.
    reference_unit_cosines` by float32 rounding (about 1e-7 for unit vectors); a zero row
    scores 0. ``out`` may have any layout (a column-major one keeps each prompt row's
    cosines contiguous)."""
    if src.ndim != 2 or src.dtype not in (np.float16, np.uint16) or not src.flags.c_contiguous:
        raise ValueError(
            f"expected C-contiguous (rows, values) float16, not {src.dtype}{src.shape}"
        )
    if (
        matrix.ndim != 2
        or matrix.shape[1] != src.shape[1]
        or matrix.dtype != np.float32
        or not matrix.flags.c_contiguous
    ):
        raise ValueError(f"a matrix of {matrix.dtype}{matrix.shape} for rows of {src.shape[1]}")
    if out.shape != (src.shape[0], matrix.shape[0]) or out.dtype != np.float32:
        raise ValueError(f"an output of {out.dtype}{out.shape} for {src.shape[0]} rows")
    _half_cosines(src.view(np.uint16), matrix, out, _SCALE)
