"""Cosines of stored float16 embeddings: the plain NumPy path's numbers, several times faster.

A backtest or a search scores every stored embedding: (N, E) float16 vectors against a few
float32 rows. The plain NumPy expression (:func:`reference_unit_cosines`,
:func:`reference_dots`) is slow on a whole batch: ``astype(float32)`` converts float16 one
value at a time (about 2 ns a value on this project's 2-core build machine) and every step
writes a fresh (N, E) float32 array, twice the size of the input, that is page-faulted in and
streamed through memory several times.

:class:`CosineKernel` runs the same steps chunk by chunk:

- the float16 -> float32 conversion by :func:`pipeline.store.halfs.widen` (one compiled call
  a chunk, exact) into a float32 buffer of a few thousand rows that each thread reuses, so it
  stays in cache;
- then the reference's own NumPy steps on that buffer (``einsum`` norms, ``sqrt``,
  ``maximum``, the ``matmul`` against the same float32 matrix, the division of the (C, R)
  product by the norms: stored vectors are unit length to float16 rounding, so each cosine is
  the dot product over the row's norm, and dividing the R products costs far less than
  dividing the E values of the row);
- chunks shared between threads (NumPy and the conversion release the GIL), each library call
  on one thread: OpenBLAS limited to one thread (threadpoolctl) while the kernel is open. Its
  own thread pool, woken on a busy 2-core machine from threads of ours, was measured to stall
  them for milliseconds a chunk.

:meth:`CosineKernel.half_cosines` shares the chunks between threads the same way for
:func:`pipeline.store.halfs.half_cosines` (conversion and products in one compiled loop; a
row's numbers independent of its batch), which the backtest uses.

Nothing is approximated: each chunk's numbers are bit for bit the reference's on that chunk
(``tests/test_store_cosines.py``). OpenBLAS's result for one row can change in the last bit
with the size of the product it is part of and its thread count, so against the reference
run on a whole batch the cosines agree to float32 rounding (a few 1e-8), as the plain path
already did from one batch size to another. No library offers "float16 rows times a float32
matrix in float32" on the CPU without either the slow conversion or a lower-precision
product (torch's float16/bfloat16 products round the matrix), hence this small driver around
NumPy.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Final

import numpy as np
import numpy.typing as npt
from threadpoolctl import threadpool_limits

from pipeline.store.halfs import half_cosines, widen

__all__ = ["CHUNK_ROWS", "CosineKernel", "reference_dots", "reference_unit_cosines"]

#: Rows converted and scored at a time by one thread (2048 x 512 float32 = 4 MiB).
CHUNK_ROWS: Final = 2048
_F16 = npt.NDArray[np.float16]
_F32 = npt.NDArray[np.float32]
_TINY: Final = np.float32(1e-12)


def reference_unit_cosines(emb: _F16, matrix_t: _F32) -> _F32:
    """(B, E) float16 embeddings, re-normalised in float32, times the (E, R) float32
    ``matrix_t``: (B, R) cosines. The plain path :class:`CosineKernel` reproduces."""
    x = emb.astype(np.float32)
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    out: _F32 = x @ matrix_t
    out /= np.maximum(norms, _TINY)[:, None]
    return out


def reference_dots(emb: _F16, query: _F32) -> _F32:
    """(B, E) float16 embeddings as float32 times the (E,) float32 ``query``: (B,) dot
    products. The plain path :meth:`CosineKernel.dots` reproduces."""
    out: _F32 = emb.astype(np.float32) @ query
    return out


class CosineKernel:
    """Scores float16 embedding batches chunk by chunk on ``threads`` threads (default: the
    CPUs this process may use, at most 4); use as a context manager or :meth:`close` it.
    While open, OpenBLAS (NumPy's matrix products) runs on one thread in the whole process."""

    def __init__(self, *, threads: int | None = None, chunk_rows: int = CHUNK_ROWS) -> None:
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be at least 1, not {chunk_rows}")
        count = threads if threads is not None else min(4, len(os.sched_getaffinity(0)))
        self.threads = max(1, count)
        self.chunk_rows = chunk_rows
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="cosines")
        self._limits = threadpool_limits(limits=1, user_api="blas")

    def close(self) -> None:
        """Stop the threads and give OpenBLAS its threads back."""
        self._pool.shutdown()
        self._limits.restore_original_limits()

    def __enter__(self) -> CosineKernel:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def unit_cosines(self, emb: _F16, matrix_t: _F32) -> _F32:
        """:func:`reference_unit_cosines`, chunk by chunk (see the module docstring)."""
        rows, dim = emb.shape
        if matrix_t.shape[0] != dim:
            raise ValueError(f"embeddings of {dim} values for a matrix of {matrix_t.shape[0]}")
        matrix = np.ascontiguousarray(matrix_t, dtype=np.float32)
        out = np.empty((rows, matrix.shape[1]), dtype=np.float32)
        source = _rows(emb)

        def chunk(lo: int, hi: int) -> None:
            x = self._convert(source, lo, hi, dim)  # (C, E) float32 view of the thread's buffer
            norms = self._norms(hi - lo)
            np.einsum("ij,ij->i", x, x, out=norms)
            np.sqrt(norms, out=norms)
            np.maximum(norms, _TINY, out=norms)
            product = out[lo:hi]
            np.matmul(x, matrix, out=product)
            np.divide(product, norms[:, None], out=product)

        self._run(rows, chunk)
        return out

    def half_cosines(self, emb: _F16, matrix: _F32) -> _F32:
        """:func:`pipeline.store.halfs.half_cosines` of ``emb`` (N, E) with the (R, E)
        ``matrix`` rows, chunk by chunk on the kernel's threads: (N, R) column-major (each
        row's cosines contiguous). A frame's cosines are the same whatever batch it is in."""
        rows, dim = emb.shape
        if matrix.ndim != 2 or matrix.shape[1] != dim:
            raise ValueError(f"embeddings of {dim} values for a matrix of {matrix.shape}")
        m = np.ascontiguousarray(matrix, dtype=np.float32)
        out = np.empty((m.shape[0], rows), dtype=np.float32).T
        source = _rows(emb)
        self._run(rows, lambda lo, hi: half_cosines(source[lo:hi], m, out[lo:hi]))
        return out

    def dots(self, emb: _F16, query: _F32) -> _F32:
        """:func:`reference_dots`, chunk by chunk (see the module docstring)."""
        rows, dim = emb.shape
        if query.shape != (dim,):
            raise ValueError(f"embeddings of {dim} values for a query of shape {query.shape}")
        q = np.ascontiguousarray(query, dtype=np.float32)
        out = np.empty(rows, dtype=np.float32)
        source = _rows(emb)

        def chunk(lo: int, hi: int) -> None:
            np.matmul(self._convert(source, lo, hi, dim), q, out=out[lo:hi])

        self._run(rows, chunk)
        return out

    def map(self, bounds: Sequence[tuple[int, int]], chunk: Callable[[int, int], None]) -> None:
        """Call ``chunk(lo, hi)`` for each of ``bounds`` on the kernel's threads (OpenBLAS on
        one thread each) and wait for all; a chunk's error is raised here."""
        for done in [self._pool.submit(chunk, lo, hi) for lo, hi in bounds]:
            done.result()

    # -- helpers --------------------------------------------------------------------------------

    def _run(self, rows: int, chunk: Callable[[int, int], None]) -> None:
        bounds = [(lo, min(lo + self.chunk_rows, rows)) for lo in range(0, rows, self.chunk_rows)]
        self.map(bounds, chunk)

    def _convert(self, source: _F16, lo: int, hi: int, dim: int) -> _F32:
        """Rows ``lo:hi`` of ``source`` as float32, in this thread's reused buffer."""
        buf: _F32 | None = getattr(self._local, "buf", None)
        if buf is None or buf.shape[1] != dim or buf.shape[0] < self.chunk_rows:
            buf = np.empty((self.chunk_rows, dim), dtype=np.float32)
            self._local.buf = buf
        target = buf[: hi - lo]
        widen(source[lo:hi], target)
        return target

    def _norms(self, count: int) -> _F32:
        norms: _F32 | None = getattr(self._local, "norms", None)
        if norms is None or norms.shape[0] < self.chunk_rows:
            norms = np.empty(self.chunk_rows, dtype=np.float32)
            self._local.norms = norms
        return norms[:count]


def _rows(emb: _F16) -> _F16:
    """``emb`` checked: (rows, values) float16, C-contiguous (stored embeddings are views of
    Arrow buffers, read only: the kernel only reads them)."""
    if emb.dtype != np.float16:
        raise ValueError(f"expected float16 embeddings, not {emb.dtype}")
    if emb.ndim != 2:
        raise ValueError(f"expected (rows, values) embeddings, not shape {emb.shape}")
    return np.ascontiguousarray(emb)
