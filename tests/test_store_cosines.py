"""The chunked, threaded cosine kernel: the plain NumPy path's numbers, chunk for chunk."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from threadpoolctl import threadpool_limits

from pipeline.policies.score import unit_rows
from pipeline.store.cosines import CosineKernel, reference_dots, reference_unit_cosines
from pipeline.store.schema import embeddings_of


def _stored(rng: np.random.Generator, rows: int, dim: int) -> np.ndarray:
    """Unit float16 vectors as a store holds them: a read-only view of an Arrow buffer."""
    emb = unit_rows(rng.normal(size=(rows, dim))).astype(np.float16)
    offsets = np.arange(rows + 1, dtype=np.int32) * (dim * 2)
    column = pa.Array.from_buffers(
        pa.binary(), rows, [None, pa.py_buffer(offsets), pa.py_buffer(emb.tobytes())]
    )
    out = embeddings_of(column)
    assert not out.flags.writeable
    return out


@pytest.mark.parametrize(
    ("rows", "dim", "chunk", "threads"),
    [
        (1, 512, 2048, 2),
        (5000, 512, 2048, 2),  # a short last chunk
        (4096, 512, 1024, 1),
        (3001, 768, 700, 3),  # a chunk not a multiple of the torch copy step
        (257, 64, 16, 2),
        (0, 512, 2048, 2),
    ],
)
def test_the_kernel_equals_the_plain_path_chunk_for_chunk(
    rows: int, dim: int, chunk: int, threads: int
) -> None:
    rng = np.random.default_rng(rows + dim)
    emb = _stored(rng, rows, dim) if rows else np.zeros((0, dim), np.float16)
    # stored vectors are not exactly unit (float16), some are scaled: the norms matter
    if rows > 3:
        emb = emb.copy()
        emb[::3] *= np.float16(0.5)
    matrix_t = np.ascontiguousarray(unit_rows(rng.normal(size=(24, dim))).T)  # (E, R)
    query = unit_rows(rng.normal(size=(1, dim)))[0]
    with CosineKernel(threads=threads, chunk_rows=chunk) as kernel:
        cos = kernel.unit_cosines(emb, matrix_t)
        dots = kernel.dots(emb, query)
    with threadpool_limits(limits=1, user_api="blas"):
        want = [reference_unit_cosines(emb[i : i + chunk], matrix_t) for i in range(0, rows, chunk)]
        want_dots = [reference_dots(emb[i : i + chunk], query) for i in range(0, rows, chunk)]
    assert cos.shape == (rows, 24) and cos.dtype == np.float32
    if rows:
        # bit for bit the plain path on the same chunks (threads, reused buffers and torch's
        # conversion change nothing)
        assert np.array_equal(cos, np.concatenate(want))
        assert np.array_equal(dots, np.concatenate(want_dots))
        # and the plain path on the whole batch up to float32 rounding (OpenBLAS's own result
        # for a row may change in the last bit with the batch's size and its thread count)
        assert np.max(np.abs(cos - reference_unit_cosines(emb, matrix_t))) <= 4e-7
        assert np.max(np.abs(dots - reference_dots(emb, query))) <= 4e-7
    if rows:
        # the reference is the true cosine to float32 accuracy (float64 check)
        x = emb.astype(np.float64)
        exact = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ matrix_t.astype(np.float64)
        assert np.max(np.abs(cos - exact)) < 1e-5


def test_a_zero_vector_scores_zero_and_bad_shapes_are_refused() -> None:
    emb = np.zeros((3, 8), np.float16)
    emb[1, 0] = 1
    matrix_t = np.eye(8, 2, dtype=np.float32)
    with CosineKernel(threads=2, chunk_rows=2) as kernel:
        cos = kernel.unit_cosines(emb, matrix_t)
        assert np.array_equal(cos, reference_unit_cosines(emb, matrix_t))
        assert cos[0].tolist() == [0.0, 0.0] and cos[1].tolist() == [1.0, 0.0]
        with pytest.raises(ValueError, match="8 values for a matrix of 4"):
            kernel.unit_cosines(emb, np.zeros((4, 2), np.float32))
        with pytest.raises(ValueError, match="float16"):
            kernel.unit_cosines(emb.astype(np.float32), matrix_t)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="query of shape"):
            kernel.dots(emb, np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="chunk_rows"):
        CosineKernel(chunk_rows=0)


def test_rows_the_edited_and_stored_sets_share_are_multiplied_once() -> None:
    from pipeline.store.filescan import RowRegistry

    rng = np.random.default_rng(5)
    emb = _stored(rng, 3000, 64)
    shared = unit_rows(rng.normal(size=(6, 64)))
    edited = unit_rows(rng.normal(size=(2, 64)))  # a prompt the edit added
    registry = RowRegistry(64)
    new = registry.add(np.concatenate([shared, edited]))
    old = registry.add(shared)
    assert len(registry) == 8 and new.tolist() == list(range(8)) and old.tolist() == list(range(6))
    with CosineKernel(threads=2) as kernel:
        c = kernel.unit_cosines(emb, registry.matrix(range(8)))
    whole = reference_unit_cosines(emb, np.concatenate([shared, edited, shared]).T)
    np.testing.assert_allclose(c[:, new], whole[:, :8], rtol=0, atol=1e-6)
    np.testing.assert_allclose(c[:, old], whole[:, 8:], rtol=0, atol=1e-6)
    with pytest.raises(Exception, match="prompt rows of shape"):
        registry.add(np.zeros((2, 32), np.float32))


def test_widen_converts_every_float16_exactly() -> None:
    from pipeline.store.halfs import widen

    every = np.arange(1 << 16, dtype=np.uint16).view(np.float16).reshape(256, 256)
    out = np.empty(every.shape, np.float32)
    widen(every, out)
    # bit for bit NumPy's conversion: zeros of both signs, subnormals, infinities, NaNs
    assert np.array_equal(out.view(np.uint32), every.astype(np.float32).view(np.uint32))
    with pytest.raises(ValueError, match="shape"):
        widen(every, np.empty((256, 255), np.float32))
    with pytest.raises(ValueError, match="C-contiguous"):
        widen(every[:, ::2], np.empty((256, 128), np.float32))


def test_half_cosines_give_a_frame_the_same_numbers_in_any_batch() -> None:
    from pipeline.store.halfs import half_cosines

    rng = np.random.default_rng(11)
    emb = _stored(rng, 1003, 512).copy()  # not a multiple of the 4-row block
    emb[::5] *= np.float16(0.5)  # stored vectors are not all unit: the norms matter
    emb[7] = 0  # a zero vector scores 0
    emb[9, 3] = np.float16(np.inf)  # the conversion is exact for any value, infinities too
    matrix = unit_rows(rng.normal(size=(9, 512)))
    whole = np.empty((1003, 9), np.float32)
    half_cosines(emb, matrix, whole)
    assert np.array_equal(whole[7], np.zeros(9, np.float32))
    assert np.isnan(whole[9]).all()  # inf / inf, as the plain path gives
    ok = np.ones(1003, bool)
    ok[9] = False
    with np.errstate(invalid="ignore"):  # the inf row: inf / inf
        plain = reference_unit_cosines(emb, np.ascontiguousarray(matrix.T))
    assert np.array_equal(np.isnan(plain[9]), np.isnan(whole[9]))
    assert np.max(np.abs(whole[ok] - plain[ok])) <= 4e-7  # float32 rounding
    # a frame alone, in another block slot, among other frames, in a column-major output,
    # or through the kernel's threads: bit for bit the same numbers
    picked = np.array([1002, 3, 500, 4, 7, 0, 999])
    some = np.empty((len(picked), 9), np.float32)
    half_cosines(np.ascontiguousarray(emb[picked]), matrix, some)
    assert np.array_equal(some, whole[picked])
    for i in (0, 1, 2, 3, 1000):
        one = np.empty((9, 1), np.float32).T
        half_cosines(emb[i : i + 1], matrix, one)
        assert np.array_equal(one[0], whole[i])
    with CosineKernel(threads=3, chunk_rows=100) as kernel:
        threaded = kernel.half_cosines(emb, matrix)
        assert np.array_equal(threaded, whole, equal_nan=True) and threaded.flags.f_contiguous
        with pytest.raises(ValueError, match="matrix"):
            kernel.half_cosines(emb, np.zeros((2, 64), np.float32))
    with pytest.raises(ValueError, match="C-contiguous"):
        half_cosines(emb[:, ::2], matrix[:, ::2].copy(), np.empty((1003, 9), np.float32))
    with pytest.raises(ValueError, match="a matrix of"):
        half_cosines(emb, matrix.T.copy().T, whole)  # not C-contiguous
    with pytest.raises(ValueError, match="an output of"):
        half_cosines(emb, matrix, np.empty((1003, 8), np.float32))
