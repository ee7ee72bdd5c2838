"""An independent NumPy implementation of PDQ, to cross-check the C++ library the product uses.

Written from the algorithm as published (Meta's ``hashing.pdf``): float luma, a Jarosz filter
(two passes of running-sum box filters along rows then columns, window ``ceil(n / 128)``),
decimation to 64 x 64 at pixel centres, the gradient quality metric, a 16 x 16 DCT taken as
``D A D^T`` with ``D`` the 16 x 64 DCT-II basis, and one bit per coefficient above the median.
Every step runs in float32 with the same association of sums as a sequential loop, so that
rounding, and therefore every bit, can agree with a float32 C++ implementation.

Slow (Python loops over pixel positions); for tests only.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

__all__ = ["luma_float32", "luma_numpy", "pdq_numpy"]

_F = np.float32


def luma_numpy(rgb: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    """Luma as the ``pdqhash`` bindings form it: in float64, then rounded to float32."""
    x = rgb.astype(np.float64)
    return (x[:, :, 0] * 0.299 + x[:, :, 1] * 0.587 + x[:, :, 2] * 0.114).astype(_F)


def luma_float32(rgb: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    """Luma in float32 arithmetic throughout (``0.299f * r + 0.587f * g + 0.114f * b``)."""
    x = rgb.astype(_F)
    r = _F(0.299) * x[:, :, 0]
    g = _F(0.587) * x[:, :, 1]
    b = _F(0.114) * x[:, :, 2]
    return (r + g) + b


def _box_along_axis0(a: npt.NDArray[np.float32], window: int) -> npt.NDArray[np.float32]:
    """Running-mean box filter along axis 0 of (L, M), the window clipped at both ends:
    output k averages inputs ``k - (window - half) .. k + half - 1`` with
    ``half = (window + 2) // 2``, summed incrementally (add the new, subtract the old)."""
    n = a.shape[0]
    half = (window + 2) // 2
    out = np.empty_like(a)
    acc = np.zeros(a.shape[1], dtype=_F)
    count = 0
    right = 0
    for _ in range(half - 1):  # fill the leading half window
        acc = acc + a[right]
        right += 1
        count += 1
    k = 0
    for _ in range(window - half + 1):  # growing window
        acc = acc + a[right]
        right += 1
        count += 1
        out[k] = acc / _F(count)
        k += 1
    left = 0
    for _ in range(n - window):  # full window slides
        acc = acc + a[right]
        acc = acc - a[left]
        right += 1
        left += 1
        out[k] = acc / _F(count)
        k += 1
    for _ in range(half - 1):  # shrinking window at the end
        acc = acc - a[left]
        left += 1
        count -= 1
        out[k] = acc / _F(count)
        k += 1
    return out


def _downscale_64(luma: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    rows, cols = luma.shape
    if (rows, cols) == (64, 64):
        return luma.copy()
    w_rows = (cols + 128 - 1) // 128  # window along each row (over columns)
    w_cols = (rows + 128 - 1) // 128
    x = luma
    for _ in range(2):
        x = _box_along_axis0(x.T, w_rows).T  # along rows: filter the columns axis
        x = _box_along_axis0(x, w_cols)
    ri = [int(((i + 0.5) * rows) / 64) for i in range(64)]
    ci = [int(((j + 0.5) * cols) / 64) for j in range(64)]
    return np.ascontiguousarray(x[np.ix_(ri, ci)])


def _quality(a: npt.NDArray[np.float32]) -> int:
    def part(d: npt.NDArray[np.float32]) -> int:
        # C: int d = ((u - v) * 100) / 255 in float, truncated toward zero
        q = (d * _F(100)) / _F(255)
        return int(np.abs(np.trunc(q).astype(np.int64)).sum())

    total = part(a[:-1, :] - a[1:, :]) + part(a[:, :-1] - a[:, 1:])
    return min(total // 90, 100)


def _dct_matrix() -> npt.NDArray[np.float32]:
    scale = float(_F(math.sqrt(2.0 / 64)))
    d = np.empty((16, 64), dtype=_F)
    for i in range(16):
        for j in range(64):
            d[i, j] = _F(scale * math.cos((math.pi / 2.0 / 64) * (i + 1) * (2 * j + 1)))
    return d


def _dct16(a: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    d = _dct_matrix()
    t = np.zeros((16, 64), dtype=_F)
    for k in range(64):  # T = D A, summed over k in order
        t = t + d[:, k : k + 1] * a[k : k + 1, :]
    b = np.zeros((16, 16), dtype=_F)
    for k in range(64):  # B = T D^T, summed over k in order
        b = b + t[:, k : k + 1] * d[:, k][None, :]
    return b


def pdq_numpy(rgb: npt.NDArray[np.uint8], *, luma: str = "numpy") -> tuple[bytes, int]:
    """(32-byte hash in ThreatExchange order, quality) of an RGB uint8 picture."""
    y = luma_numpy(rgb) if luma == "numpy" else luma_float32(rgb)
    if y.shape[0] < 5 or y.shape[1] < 5:
        return bytes(32), 0
    a = _downscale_64(y)
    quality = _quality(a)
    b = _dct16(a)
    median = np.sort(b.ravel())[127]  # the 128th smallest of 256
    bits = (b > median).ravel()  # bit k = coefficient (k // 16, k % 16)
    value = sum(1 << k for k in np.flatnonzero(bits).tolist())
    return value.to_bytes(32, "big"), quality
