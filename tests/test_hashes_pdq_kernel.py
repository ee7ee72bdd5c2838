"""The compiled PDQ (pipeline.hashes.pdq_kernel) against Meta's reference C++ (the ``pdqhash``
bindings): every bit and quality, on decoded video frames, hostile shapes, several threads, and
in decode processes that load it as they start."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import av
import decode_faults  # switches the test hook on for the pools made here
import knownclips
import numpy as np
import pdqhash
import pytest
from av.video.reformatter import Interpolation

from pipeline.decode import DecodeOptions, DecodePool, Sampling, decode_bytes
from pipeline.decode.hashing import FrameHasher
from pipeline.decode.launch import minimal_environment
from pipeline.hashes import pdq_kernel
from pipeline.hashes.pdq import DihedralHashes, PdqHash, pdq_dihedral, pdq_hash
from pipeline.hashes.signals import hamming


def _reference(picture: np.ndarray) -> tuple[bytes, int]:
    bits, quality = pdqhash.compute(picture)
    return np.packbits(np.asarray(bits, np.uint8)).tobytes(), int(quality)


def _reference_dihedral(picture: np.ndarray) -> tuple[tuple[bytes, ...], int]:
    vectors, quality = pdqhash.compute_dihedral(picture)
    return tuple(np.packbits(np.asarray(v, np.uint8)).tobytes() for v in vectors), int(quality)


def _agrees(picture: np.ndarray) -> bool:
    """Our hashes of ``picture`` are the reference's of the same pixels (row-major: the
    bindings read a column-major array's memory as rows)."""
    ours, ours_all = pdq_hash(picture), pdq_dihedral(picture)
    rows = np.ascontiguousarray(picture)
    return (ours.hash, ours.quality) == _reference(rows) and (
        ours_all.hashes,
        ours_all.quality,
    ) == _reference_dihedral(rows)


def _shapes() -> list[tuple[int, int]]:
    """Sides at and around every edge of the filter: under the minimum, the minimum, windows of
    1 and 2 pixels, 64 x 64 (the reference takes it unfiltered for one hash, filters it for
    the eight), odd sizes, extreme aspect ratios, and a 4K frame (over the kept work memory)."""
    return [
        (1, 1), (1, 700), (4, 4), (5, 5), (5, 6), (6, 5), (7, 3000), (3000, 7), (5, 16384),
        (63, 64), (64, 64), (64, 65), (65, 65), (127, 129), (128, 128), (129, 257),
        (255, 256), (256, 257), (333, 200), (360, 640), (720, 1280), (2160, 3840),
    ]  # fmt: skip


@pytest.mark.parametrize(("h", "w"), _shapes())
def test_every_shape_hashes_as_the_reference(h: int, w: int) -> None:
    rng = np.random.default_rng(h * 100_003 + w)
    noise = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    y, x = np.mgrid[0:h, 0:w]
    smooth = np.stack([(x * 3 + y) % 256, (y * 5) % 256, (x * x + y) // 7 % 256], axis=2)
    for picture in (noise, np.ascontiguousarray(smooth.astype(np.uint8))):
        assert _agrees(picture), (h, w)
    if min(h, w) < pdq_kernel.MIN_SIDE:
        assert pdq_hash(noise) == PdqHash(bytes(32), 0)


def test_extreme_pixel_values_hash_as_the_reference() -> None:
    """Black, white, a single bright pixel, saturated stripes: sums at the ends of the range."""
    pictures = [np.zeros((90, 160, 3), np.uint8), np.full((90, 160, 3), 255, np.uint8)]
    dot = np.zeros((200, 300, 3), np.uint8)
    dot[123, 45] = 255
    pictures.append(dot)
    stripes = np.zeros((128, 256, 3), np.uint8)
    stripes[:, ::2] = 255
    pictures += [stripes, np.ascontiguousarray(stripes.transpose(1, 0, 2))]
    for picture in pictures:
        assert _agrees(picture)
    assert pdq_hash(pictures[0]).quality == 0  # flat


def _decoded(path: Path) -> list[av.VideoFrame]:
    with av.open(str(path)) as container:
        return list(container.decode(video=0))


def test_decoded_frames_hash_as_the_reference(tmp_path: Path) -> None:
    """Real H.264 frames, at full size (RGB24) and as the decode stage hashes them (an area
    downscale in swscale): the same bits as the reference, frame for frame, and the decode
    stage's hashes are those of the same pixels."""
    base = knownclips.texture(7, 1280, 720)
    pictures = [np.ascontiguousarray(np.roll(base, 23 * i, axis=i % 2)) for i in range(6)]
    path = knownclips.write(tmp_path / "hd.mp4", pictures, fps=2)
    hasher, dihedral = FrameHasher("pdq", 640), FrameHasher("dihedral", 640)
    frames = _decoded(path)
    assert len(frames) == 6
    for frame in frames:
        full = frame.to_ndarray(format="rgb24")
        assert _agrees(full)
        picture = frame.reformat(640, 360, "rgb24", interpolation=Interpolation.AREA).to_ndarray()
        assert _agrees(np.ascontiguousarray(picture))
        assert hasher(frame) == pdq_hash(np.ascontiguousarray(picture))
        both = dihedral(frame)
        assert isinstance(both, DihedralHashes)
        assert both.hashes == _reference_dihedral(np.ascontiguousarray(picture))[0]
    result = decode_bytes(path.read_bytes(), "video/mp4", DecodeOptions(64, hashes="pdq"))
    assert [f.pdq for f in result.frames] == [hasher(f) for f in frames]


def test_one_compiled_signature_for_every_picture() -> None:
    """Read-only, strided and differently sized pictures run the machine code compiled (or
    loaded from the cache) at start: a new signature would compile for seconds in a decode
    process."""
    pdq_kernel.compile_kernels()
    rng = np.random.default_rng(6)
    picture = rng.integers(0, 256, (120, 200, 3), dtype=np.uint8)
    frozen = picture.copy()
    frozen.flags.writeable = False
    for p in (frozen, picture[::2, ::3], picture[:, ::-1], np.asfortranarray(picture)):
        assert _agrees(p)
    assert len(pdq_kernel._hash.signatures) == 1


def test_threads_hash_at_once_with_their_own_memory() -> None:
    """nogil code and per-thread work memory: four threads hashing pictures of different
    sizes at once get each picture's own hash."""
    rng = np.random.default_rng(3)
    pictures = [
        rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        for h, w in ((90, 160), (360, 640), (241, 97), (720, 1280)) * 3
    ]
    expected = [_reference(p) for p in pictures]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda p: pdq_hash(p), pictures * 3))
    assert [(g.hash, g.quality) for g in got] == expected * 3
    assert len({g.hash for g in got}) == len(pictures)  # distinct pictures, distinct hashes


def test_work_memory_kept_is_bounded() -> None:
    """A thread keeps its work memory for pictures up to 1080p, not for a larger one."""
    rng = np.random.default_rng(4)
    pdq_hash(rng.integers(0, 256, (1080, 1920, 3), dtype=np.uint8))
    kept = pdq_kernel._kept.buf.size
    assert kept == pdq_kernel.KEPT_WORK
    huge = rng.integers(0, 256, (2400, 4000, 3), dtype=np.uint8)
    assert _agrees(huge)
    assert pdq_kernel._kept.buf.size == kept


def test_hashes_stay_near_under_small_changes() -> None:
    """A sanity check that the bits mean something: a picture and a slightly brighter copy are
    a few bits apart, another picture about half the bits away."""
    a, b = knownclips.texture(1, 640, 360), knownclips.texture(2, 640, 360)
    brighter = np.clip(a.astype(np.int16) + 6, 0, 255).astype(np.uint8)
    assert hamming(pdq_hash(a).hash, pdq_hash(brighter).hash) <= 16
    assert 80 <= hamming(pdq_hash(a).hash, pdq_hash(b).hash) <= 176


_HASHING = ("numba", "pipeline.hashes.pdq_kernel")


def test_decode_processes_load_the_compiled_code_as_they_start(tmp_path: Path) -> None:
    """A pool told that frames will be hashed has its processes load the code (from numba's
    disk cache) before their first task; a pool not told loads nothing of it until a task
    hashes; both hash as the reference does."""
    pictures = [knownclips.texture(9 + i) for i in range(3)]
    data = knownclips.write(tmp_path / "three.mp4", pictures, fps=1).read_bytes()
    options = DecodeOptions(64, sampling=Sampling(mode="all"), hashes="pdq")
    expected = [f.pdq for f in decode_bytes(data, "video/mp4", options).frames]
    with DecodePool(1, hashing=True, wait=False) as pool:
        assert pool.wait_started(60)
        assert pool.submit_call(decode_faults.loaded, *_HASHING).result(timeout=60) == list(
            _HASHING
        )
        assert [f.pdq for f in pool.decode_bytes(data, "video/mp4", options).frames] == expected
    with DecodePool(1) as pool:
        assert pool.submit_call(decode_faults.loaded, *_HASHING).result(timeout=60) == []
        assert [f.pdq for f in pool.decode_bytes(data, "video/mp4", options).frames] == expected
        assert pool.submit_call(decode_faults.loaded, *_HASHING).result(timeout=60) == list(
            _HASHING
        )


def test_decode_processes_look_for_compiled_code_where_the_parent_put_it() -> None:
    """A numba cache folder set for the worker is passed on (a process compiling the code
    again would take seconds); nothing else of the environment is."""
    given = {"NUMBA_CACHE_DIR": "/var/cache/numba", "CLIPGUARD_SASL_PASSWORD": "x", "HOME": "/h"}
    assert minimal_environment(given) == {"NUMBA_CACHE_DIR": "/var/cache/numba"}
