"""PDQ and MD5 hashing: agreement with the reference, dihedral variants, bounds and errors."""

from __future__ import annotations

import hashlib
import io
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from pdq_numpy import pdq_numpy
from vpdq_ref import need_vpdq

from pipeline.demo import scenes as synthetic
from pipeline.errors import HashError
from pipeline.hashes.files import hash_image_file, hash_video_file, md5_of_file
from pipeline.hashes.md5 import md5_chunks, md5_file, md5_stream
from pipeline.hashes.pdq import DIHEDRAL_NAMES, MAX_SIDE, pdq_dihedral, pdq_hash
from pipeline.hashes.signals import hamming


def _generated_images() -> list[np.ndarray]:
    """Synthetic scenes at several sizes, noise, gradients, stripes, flat and tiny pictures."""
    rng = np.random.default_rng(2026)
    images: list[np.ndarray] = []
    scenes, _, _ = synthetic.generate_batch(11, 24, size=96)
    images.extend(scenes)
    for size in (64, 127, 200, 333):
        spec = synthetic.sample_spec(rng, split="train")
        images.append(synthetic.render(spec, size))
    for h, w in ((64, 64), (90, 160), (241, 97), (5, 5), (5, 300)):
        images.append(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    y, x = np.mgrid[0:150, 0:220]
    images.append(np.stack([x % 256, y % 256, (x + y) % 256], axis=2).astype(np.uint8))
    stripes = np.where((x // 7 + y // 11) % 2 == 0, 230, 20).astype(np.uint8)
    images.append(np.repeat(stripes[..., None], 3, axis=2))
    images.append(np.full((80, 120, 3), 128, np.uint8))  # flat: quality 0
    images.append(np.zeros((3, 40, 3), np.uint8))  # under 5 pixels a side
    return [np.ascontiguousarray(i) for i in images]


IMAGES = _generated_images()


def test_pdq_equals_independent_numpy_implementation_bit_for_bit() -> None:
    mismatches = []
    for i, image in enumerate(IMAGES):
        ours = pdq_hash(image)
        ref_hash, ref_quality = pdq_numpy(image)
        if ours.hash != ref_hash or ours.quality != ref_quality:
            mismatches.append((i, image.shape, hamming(ours.hash, ref_hash), ours.quality))
    assert mismatches == [], mismatches
    # the set is not degenerate: it has good and poor quality pictures and distinct hashes
    qualities = [pdq_hash(i).quality for i in IMAGES]
    assert min(qualities) == 0 and max(qualities) == 100
    assert len({pdq_hash(i).hash for i in IMAGES}) >= len(IMAGES) - 2


def test_float32_luma_gives_the_same_hashes() -> None:
    """vPDQ's C++ forms luma in float32, the Python bindings in float64: same bits here."""
    for image in IMAGES:
        assert pdq_numpy(image, luma="float32") == pdq_numpy(image, luma="numpy")


def _write_lossless(path: Path, frames: list[np.ndarray], fps: int = 5) -> None:
    h, w = frames[0].shape[:2]
    with av.open(str(path), "w") as out:
        stream = out.add_stream("ffv1", rate=fps)
        stream.width, stream.height = w, h
        stream.pix_fmt = "bgr0"
        for i, f in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(f, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            for p in stream.encode(frame):
                out.mux(p)
        for p in stream.encode(None):
            out.mux(p)


def _same_size_frames(n: int, h: int, w: int) -> list[np.ndarray]:
    import cv2

    scenes, _, _ = synthetic.generate_batch(29, n, size=128)
    rng = np.random.default_rng(5)
    frames = [cv2.resize(s, (w, h), interpolation=cv2.INTER_LINEAR) for s in scenes]
    frames[-1] = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return [np.ascontiguousarray(f) for f in frames]


def test_pdq_equals_vpdq_reference_hasher_on_the_same_frames(tmp_path: Path) -> None:
    """vPDQ (Meta's C++ hasher, fed by FFmpeg) on a lossless RGB video, against our hash of
    the very same pixels: every frame's hash and quality identical."""
    vpdq = need_vpdq()
    frames = _same_size_frames(30, 180, 320)
    video = tmp_path / "lossless.mkv"
    _write_lossless(video, frames)
    with av.open(str(video)) as c:
        decoded = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert all(np.array_equal(a, b) for a, b in zip(frames, decoded, strict=True))
    features = vpdq.computeHash(str(video), seconds_per_hash=0)
    assert len(features) == len(frames)
    for feature, frame in zip(features, frames, strict=True):
        ours = pdq_hash(frame)
        assert (ours.hex, ours.quality) == (feature.hex, feature.quality)
    ours_video = hash_video_file(video, every_s=0)
    assert [f.pdq.hex() for f in ours_video] == [f.hex for f in features]


def test_threatexchange_hex_form_matches_ours() -> None:
    """ThreatExchange's photo hasher turns the same library's bits into hex: same text."""
    pdq_hasher = pytest.importorskip("threatexchange.signal_type.pdq.pdq_hasher")
    for image in IMAGES[:8]:
        hex_str, quality = pdq_hasher._pdq_from_numpy_array(image)
        ours = pdq_hash(image)
        assert (ours.hex, ours.quality) == (hex_str, quality)


def test_dihedral_variants_match_transformed_pictures() -> None:
    image = IMAGES[0]
    variants = pdq_dihedral(image)
    assert variants.hashes[0] == pdq_hash(image).hash
    assert variants.quality == pdq_hash(image).quality
    assert len(variants.hashes) == len(DIHEDRAL_NAMES) == 8
    named = variants.named()
    # transposition maps the sampling grid onto itself: exact
    assert pdq_hash(np.ascontiguousarray(image.transpose(1, 0, 2))).hash == named["flip_plus1"]
    transforms = {
        "rotate90": lambda a: np.rot90(a, 1),
        "rotate180": lambda a: np.rot90(a, 2),
        "rotate270": lambda a: np.rot90(a, -1),
        "flip_x": np.flipud,
        "flip_y": np.fliplr,
        "flip_minus1": lambda a: np.rot90(a, 2).transpose(1, 0, 2),
    }
    for name, f in transforms.items():
        h = pdq_hash(np.ascontiguousarray(f(image))).hash
        nearest = min(named, key=lambda n: hamming(h, named[n]))
        assert nearest == name
        assert hamming(h, named[name]) < hamming(h, named["original"])


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ([[1, 2, 3]], "numpy array"),
        (np.zeros((10, 10), np.uint8), "RGB uint8"),
        (np.zeros((10, 10, 4), np.uint8), "RGB uint8"),
        (np.zeros((10, 10, 3), np.float32), "RGB uint8"),
        (np.zeros((0, 10, 3), np.uint8), "empty"),
    ],
)
def test_bad_pictures_are_refused(bad: object, message: str) -> None:
    with pytest.raises(HashError, match=message):
        pdq_hash(bad)  # type: ignore[arg-type]
    with pytest.raises(HashError, match=message):
        pdq_dihedral(bad)  # type: ignore[arg-type]


def test_oversized_picture_is_refused_without_hashing() -> None:
    # a broadcast view: no memory behind it, but its shape is over the limit
    huge = np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (MAX_SIDE + 1, 8, 3))
    with pytest.raises(HashError, match="over the hashing limit"):
        pdq_hash(huge)


def test_non_contiguous_views_hash_like_copies() -> None:
    image = IMAGES[3]
    view = image[::2, ::-1]
    assert pdq_hash(view) == pdq_hash(np.ascontiguousarray(view))


def test_image_file_is_hashed_as_rgb(tmp_path: Path) -> None:
    import cv2

    image = IMAGES[2]
    path = tmp_path / "known.png"
    cv2.imwrite(str(path), image[:, :, ::-1])  # OpenCV writes BGR
    assert hash_image_file(path) == pdq_hash(image)
    (tmp_path / "junk.png").write_bytes(b"not a picture")
    with pytest.raises(HashError, match="not a picture"):
        hash_image_file(tmp_path / "junk.png")


def test_md5_of_files_streams_in_chunks(tmp_path: Path) -> None:
    data = np.random.default_rng(1).integers(0, 256, 3_000_001, dtype=np.uint8).tobytes()
    path = tmp_path / "clip.bin"
    path.write_bytes(data)
    expected = hashlib.md5(data).digest()
    assert md5_file(path) == expected == md5_of_file(path)
    assert md5_file(path, chunk_size=4096) == expected
    assert md5_chunks([data[:10], data[10:]]) == expected

    reads: list[int] = []

    class Recording(io.BytesIO):
        def read(self, n: int | None = -1) -> bytes:
            reads.append(-1 if n is None else n)
            return super().read(n)

    assert md5_stream(Recording(data), chunk_size=65536) == expected
    assert max(reads) == 65536  # never the whole file at once


def test_md5_limits_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "big.bin"
    path.write_bytes(b"x" * 5000)
    with pytest.raises(HashError, match="over the 4096-byte limit"):
        md5_file(path, max_bytes=4096, chunk_size=1000)
    assert md5_file(path, max_bytes=5000) == hashlib.md5(b"x" * 5000).digest()
    with pytest.raises(HashError, match="cannot read"):
        md5_file(tmp_path / "missing.bin")
    with pytest.raises(HashError, match="chunk_size"):
        md5_stream(io.BytesIO(b""), chunk_size=0)


def test_video_files_that_cannot_be_hashed(tmp_path: Path) -> None:
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(200))
    with pytest.raises(HashError, match=r"junk\.mp4"):
        hash_video_file(junk)
    with pytest.raises(HashError, match="cannot read"):
        hash_video_file(tmp_path / "missing.mp4")
    frames = _same_size_frames(6, 64, 96)
    video = tmp_path / "six.mkv"
    _write_lossless(video, frames, fps=2)  # 3 s
    assert [f.timestamp for f in hash_video_file(video)] == [0.0, 1.0, 2.0]
    assert len(hash_video_file(video, every_s=0)) == 6
    with pytest.raises(HashError, match="over 2 hashed frames"):
        hash_video_file(video, max_frames=2)
    with pytest.raises(HashError, match="every_s"):
        hash_video_file(video, every_s=-1)
