"""PDQ computed by compiled loops (numba), bit for bit as Meta's reference C++ computes it.

:mod:`pipeline.hashes.pdq` hashes through this module. The reference (``pdq/cpp`` in
facebook/ThreatExchange, behind the ``pdqhash`` bindings that the tests hold this module to)
is plain scalar C++: its column box filter walks the picture one column at a time, a stride of
a whole row between reads, and the bindings form luma with three NumPy temporaries. Here every
step keeps the reference's arithmetic, operation for operation (float32 sums in the same
order, float32 division by the window's pixel count, no fused multiply-add: numba's default,
no ``fastmath``), so the hash and quality are the same bits, but is laid out for the machine:

* luma ``0.299 R + 0.587 G + 0.114 B`` in float64, rounded to float32, as the ``pdqhash``
  bindings form it (NumPy on the uint8 picture);
* each box-filter pass runs along the first axis of a row-major array, so its running sums
  for all the positions across are one vector (SIMD over contiguous memory); a pass along the
  other axis transposes first (in 8 x 8 blocks);
* the second pass along each axis computes only what the 64 x 64 decimation reads: its running
  sums must still cover every pixel (a float running sum depends on all it has seen), but it
  divides only at the sampled columns, and the last pass runs only over the 64 sampled
  columns;
* quality, the 16 x 64 DCT matrix products (sums in the reference's order), the median (the
  128th smallest of the 256 coefficients: what Torben's search returns for 256 values) and
  the bits follow as in the reference.

Why by hand: no library computes PDQ but the reference C++ (``pdqhash``, ``vpdq``), whose cost
is the scalar filter above, and a re-formulation with matrix products (the filter and
decimation are linear) rounds differently and so moves bits.

The compiled code is cached on disk (numba ``cache=True``): :func:`compile_kernels` compiles
it once, so a process started later (a decode process) loads machine code instead of
compiling.
"""

from __future__ import annotations

import functools
import math
import threading

import numba
import numpy as np
import numpy.typing as npt

__all__ = ["MIN_SIDE", "compile_kernels", "dihedral_bytes", "hash_bytes"]

MIN_SIDE = 5  # below this on a side the reference returns the all-zero hash with quality 0
_OUT = 64  # PDQ decimates to 64 x 64
_BLOCK = 8  # transpose block


def _dct_matrix() -> npt.NDArray[np.float32]:
    """The reference's 16 x 64 DCT-II rows 1..16: a float32 scale (sqrt(2 / 64)) times the
    cosine, multiplied in double and rounded to float32 (libm's cos, as the C++)."""
    scale = float(np.float32(math.sqrt(2.0 / 64)))
    d = np.empty((16, 64), dtype=np.float32)
    for i in range(16):
        for j in range(64):
            d[i, j] = scale * math.cos((math.pi / 2.0 / 64) * (i + 1) * (2 * j + 1))
    return d


_DCT = _dct_matrix()
_DCT_T = np.ascontiguousarray(_DCT.T)


@numba.njit(nogil=True, cache=True)  # type: ignore[misc]
def _luma(rgb: npt.NDArray[np.uint8], dst: npt.NDArray[np.float32]) -> None:
    """``dst`` (H, W) = the luma of ``rgb`` (H, W, 3) as the ``pdqhash`` bindings form it (in
    float64, rounded to float32); one flat index (the compiler vectorises it, not the 3-D
    one)."""
    flat = rgb.reshape(rgb.size)
    out = dst.reshape(dst.size)
    for p in range(out.size):
        q = 3 * p
        r = np.float64(flat[q])
        g = np.float64(flat[q + 1])
        b = np.float64(flat[q + 2])
        out[p] = np.float32(r * 0.299 + g * 0.587 + b * 0.114)


@numba.njit(nogil=True, cache=True)  # type: ignore[misc]
def _transpose(src: npt.NDArray[np.float32], dst: npt.NDArray[np.float32]) -> None:
    """``dst`` = ``src`` transposed, in 8 x 8 blocks (loops of constant length: the compiler
    unrolls them, about three times faster than tiles of any size)."""
    h, w = src.shape
    hb, wb = h - h % _BLOCK, w - w % _BLOCK
    for i0 in range(0, hb, _BLOCK):
        for j0 in range(0, wb, _BLOCK):
            for jj in range(_BLOCK):
                for ii in range(_BLOCK):
                    dst[j0 + jj, i0 + ii] = src[i0 + ii, j0 + jj]
        for i in range(i0, i0 + _BLOCK):
            for j in range(wb, w):
                dst[j, i] = src[i, j]
    for i in range(hb, h):
        for j in range(w):
            dst[j, i] = src[i, j]


@numba.njit(nogil=True, cache=True)  # type: ignore[misc]
def _box(
    src: npt.NDArray[np.float32],
    dst: npt.NDArray[np.float32],
    window: int,
    need: npt.NDArray[np.bool_],
    acc: npt.NDArray[np.float32],
) -> None:
    """The reference's 1-D box filter (``box1DFloat``) down every column of ``src`` at once:
    output row ``k`` is the running sum over the clipped window divided by its pixel count.
    Rows with ``need[k]`` False are not written (their sums still advance)."""
    n, m = src.shape
    half = (window + 2) // 2
    for x in range(m):
        acc[x] = np.float32(0.0)
    ri = 0
    for _ in range(half - 1):  # the first half window: sums only
        for x in range(m):
            acc[x] = acc[x] + src[ri, x]
        ri += 1
    count = half - 1
    k = 0
    for _ in range(window - half + 1):  # growing window
        count += 1
        c = np.float32(count)
        for x in range(m):
            acc[x] = acc[x] + src[ri, x]
        if need[k]:
            for x in range(m):
                dst[k, x] = acc[x] / c
        ri += 1
        k += 1
    c = np.float32(count)
    li = 0
    for _ in range(n - window):  # full window
        if need[k]:
            for x in range(m):
                a = acc[x] + src[ri, x]
                a = a - src[li, x]
                acc[x] = a
                dst[k, x] = a / c
        else:
            for x in range(m):
                a = acc[x] + src[ri, x]
                acc[x] = a - src[li, x]
        ri += 1
        li += 1
        k += 1
    for _ in range(half - 1):  # shrinking window
        count -= 1
        c = np.float32(count)
        for x in range(m):
            acc[x] = acc[x] - src[li, x]
        if need[k]:
            for x in range(m):
                dst[k, x] = acc[x] / c
        li += 1
        k += 1


@numba.njit(nogil=True, cache=True)  # type: ignore[misc]
def _downscale(
    luma: npt.NDArray[np.float32],
    work_t: npt.NDArray[np.float32],
    work_t2: npt.NDArray[np.float32],
    work_n2: npt.NDArray[np.float32],
    rows: npt.NDArray[np.int64],
    cols: npt.NDArray[np.int64],
    shortcut: bool,
) -> npt.NDArray[np.float32]:
    """The reference's Jarosz filter (two passes along rows, then columns) and decimation to
    64 x 64 (``jaroszFilterFloat``, ``decimateFloat``) of ``luma`` (H, W; overwritten), with
    work arrays of (W, H), (W, H) and (H, W) floats, the last two sharing memory.
    ``shortcut``: a 64 x 64 picture is taken as it is (the reference's single-hash path; its
    dihedral path filters it)."""
    h, w = luma.shape
    out = np.empty((_OUT, _OUT), dtype=np.float32)
    if shortcut and h == _OUT and w == _OUT:
        out[:, :] = luma
        return out
    w_rows = (w + 2 * _OUT - 1) // (2 * _OUT)  # window along each row
    w_cols = (h + 2 * _OUT - 1) // (2 * _OUT)  # along each column
    acc = np.empty(max(h, w, _OUT), dtype=np.float32)
    every_row = np.ones(h, dtype=np.bool_)
    every_col = np.ones(w, dtype=np.bool_)
    sampled_col = np.zeros(w, dtype=np.bool_)
    sampled_row = np.zeros(h, dtype=np.bool_)
    for k in range(_OUT):
        sampled_col[cols[k]] = True
        sampled_row[rows[k]] = True
    _transpose(luma, work_t)
    _box(work_t, work_t2, w_rows, every_col, acc)  # along rows, 1st
    _transpose(work_t2, luma)
    _box(luma, work_n2, w_cols, every_row, acc)  # along columns, 1st
    _transpose(work_n2, work_t)
    _box(work_t, work_t2, w_rows, sampled_col, acc)  # along rows, 2nd: sampled columns
    down = np.empty((h, _OUT), dtype=np.float32)
    for i in range(h):
        for c in range(_OUT):
            down[i, c] = work_t2[cols[c], i]
    last = np.empty((h, _OUT), dtype=np.float32)
    _box(down, last, w_cols, sampled_row, acc)  # along columns, 2nd: sampled rows only
    for r in range(_OUT):
        out[r, :] = last[rows[r], :]
    return out


@numba.njit(nogil=True, cache=True)  # type: ignore[misc]
def _quality(a: npt.NDArray[np.float32]) -> int:
    """The reference's gradient quality: sum of |trunc((u - v) * 100 / 255)| over vertical
    and horizontal neighbours, over 90, capped at 100."""
    total = 0
    for i in range(_OUT - 1):
        for j in range(_OUT):
            d = ((a[i, j] - a[i + 1, j]) * np.float32(100.0)) / np.float32(255.0)
            total += abs(int(d))
    for i in range(_OUT):
        for j in range(_OUT - 1):
            d = ((a[i, j] - a[i, j + 1]) * np.float32(100.0)) / np.float32(255.0)
            total += abs(int(d))
    return min(total // 90, 100)


@numba.njit(nogil=True, cache=True)  # type: ignore[misc]
def _dct16(
    a: npt.NDArray[np.float32], d: npt.NDArray[np.float32], d_t: npt.NDArray[np.float32]
) -> npt.NDArray[np.float32]:
    """B = D A D^T (16 x 16), every sum over k in increasing order from 0 as the reference."""
    t = np.zeros((16, _OUT), dtype=np.float32)
    for i in range(16):
        for k in range(_OUT):
            dik = d[i, k]
            for j in range(_OUT):
                t[i, j] = t[i, j] + dik * a[k, j]
    b = np.zeros((16, 16), dtype=np.float32)
    for i in range(16):
        for k in range(_OUT):
            tik = t[i, k]
            for j in range(16):
                b[i, j] = b[i, j] + tik * d_t[k, j]
    return b


@numba.njit(nogil=True, cache=True)  # type: ignore[misc]
def _bits(b: npt.NDArray[np.float32], out: npt.NDArray[np.uint8]) -> None:
    """One bit per coefficient above the median (the 128th smallest), ThreatExchange order:
    coefficient ``k`` (row-major) is bit ``k`` of the 256-bit big-endian number."""
    median = np.sort(b.ravel())[127]
    for x in range(32):
        out[x] = 0
    for i in range(16):
        for j in range(16):
            if b[i, j] > median:
                k = i * 16 + j
                out[31 - (k >> 3)] |= np.uint8(1 << (k & 7))


@numba.njit(nogil=True, cache=True)  # type: ignore[misc]
def _dihedral(b: npt.NDArray[np.float32], which: int) -> npt.NDArray[np.float32]:
    """The DCT of a rotated or mirrored picture from the original's (the reference's
    ``dct16OriginalTo*``: sign flips of odd rows or columns, and transposition)."""
    out = np.empty((16, 16), dtype=np.float32)
    for i in range(16):
        for j in range(16):
            v = b[i, j]
            if which == 1:  # rotate90
                out[j, i] = v if j & 1 else -v
            elif which == 2:  # rotate180
                out[i, j] = -v if (i + j) & 1 else v
            elif which == 3:  # rotate270
                out[j, i] = v if i & 1 else -v
            elif which == 4:  # flip_x
                out[i, j] = v if i & 1 else -v
            elif which == 5:  # flip_y
                out[i, j] = v if j & 1 else -v
            elif which == 6:  # flip_plus1
                out[j, i] = v
            elif which == 7:  # flip_minus1
                out[j, i] = -v if (i + j) & 1 else v
            else:
                out[i, j] = v
    return out


@numba.njit(nogil=True, cache=True)  # type: ignore[misc]
def _hash(
    rgb: npt.NDArray[np.uint8],
    work: tuple[npt.NDArray[np.float32], ...],
    rows: npt.NDArray[np.int64],
    cols: npt.NDArray[np.int64],
    variants: int,
    d: npt.NDArray[np.float32],
    d_t: npt.NDArray[np.float32],
) -> tuple[npt.NDArray[np.uint8], int]:
    h, w = rgb.shape[0], rgb.shape[1]
    out = np.zeros((variants, 32), dtype=np.uint8)
    if h < MIN_SIDE or w < MIN_SIDE:
        return out, 0
    luma, work_t, work_t2, work_n2 = work
    _luma(rgb, luma)
    a = _downscale(luma, work_t, work_t2, work_n2, rows, cols, variants == 1)
    quality = _quality(a)
    b = _dct16(a, d, d_t)
    for v in range(variants):
        _bits(b if v == 0 else _dihedral(b, v), out[v])
    return out, quality


#: Work memory (float32 values) a thread keeps between pictures: three times 1920 x 1080, about
#: 24 MiB. Touching fresh pages costs more than the filter itself, so a thread hashing frames
#: of up to 1080p reuses its memory; a larger picture gets its own, given back after it.
KEPT_WORK = 3 * 1920 * 1080
_kept = threading.local()


def _work(h: int, w: int) -> tuple[npt.NDArray[np.float32], ...]:
    """(H, W), (W, H), (W, H) and (H, W) float32 arrays, the last two over the same memory."""
    n = h * w
    buf: npt.NDArray[np.float32] | None = getattr(_kept, "buf", None)
    if buf is None or buf.size < 3 * n:
        buf = np.empty(3 * n, dtype=np.float32)
        if buf.size <= KEPT_WORK:
            _kept.buf = buf
    return (
        buf[:n].reshape(h, w),
        buf[n : 2 * n].reshape(w, h),
        buf[2 * n : 3 * n].reshape(w, h),
        buf[2 * n : 3 * n].reshape(h, w),
    )


@functools.lru_cache(maxsize=64)
def _decimation(dim: int) -> npt.NDArray[np.int64]:
    """The 64 pixel positions the reference samples along a dimension (pixel centres)."""
    picks = np.array([int(((i + 0.5) * dim) / _OUT) for i in range(_OUT)], dtype=np.int64)
    picks.flags.writeable = False
    return picks


def _run(rgb: npt.NDArray[np.uint8], variants: int) -> tuple[npt.NDArray[np.uint8], int]:
    h, w = int(rgb.shape[0]), int(rgb.shape[1])
    picture = np.ascontiguousarray(rgb, dtype=np.uint8)
    if not picture.flags.writeable:  # a read-only array is another type: compiled again
        picture = picture.copy()
    work = _work(h, w) if h >= MIN_SIDE and w >= MIN_SIDE else _work(MIN_SIDE, MIN_SIDE)
    out, quality = _hash(picture, work, _decimation(h), _decimation(w), variants, _DCT, _DCT_T)
    return out, int(quality)


def hash_bytes(rgb: npt.NDArray[np.uint8]) -> tuple[bytes, int]:
    """(32-byte hash in ThreatExchange order, quality) of an RGB uint8 ``(H, W, 3)`` picture,
    as the reference's ``pdqHash256FromFloatLuma``; the caller checks the picture."""
    out, quality = _run(rgb, 1)
    return out[0].tobytes(), quality


def dihedral_bytes(rgb: npt.NDArray[np.uint8]) -> tuple[list[bytes], int]:
    """The eight dihedral hashes (the reference's ``pdqDihedralHash256esFromFloatLuma`` order)
    and the quality of an RGB uint8 picture."""
    out, quality = _run(rgb, 8)
    return [row.tobytes() for row in out], quality


def compile_kernels() -> None:
    """Compile (or load from numba's disk cache) the hashing code now: a process that hashes
    later, or a decode process started afterwards, finds it ready."""
    tiny = np.zeros((MIN_SIDE, MIN_SIDE, 3), dtype=np.uint8)
    hash_bytes(tiny)
    dihedral_bytes(tiny)
