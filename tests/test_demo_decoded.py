"""Training frames through the real video path (pipeline.demo.decoded) and procedural texture
negatives (that a render process draws them into the same weights as this process does:
tests/test_demo_variety.py)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.demo import scenes
from pipeline.errors import ConfigError

pytest.importorskip("skimage")  # photographs: the train extra (in the test extra too)

from pipeline.demo import decoded, variety


def test_pool_frames_are_decoded_fitted_and_seeded():
    images, specs = decoded.decoded_pool(np.random.default_rng(3), 60, 64)
    assert images.shape == (60, 64, 64, 3) and images.dtype == np.uint8
    assert len(specs) == 60
    again, specs_again = decoded.decoded_pool(np.random.default_rng(3), 60, 64)
    assert np.array_equal(images, again) and specs == specs_again  # x264 on one thread
    # the decode stage's default fit pads frames that are not square with black bars
    letterboxed = [img for img in images if img[:4].max() == 0 and img[-4:].max() == 0]
    assert letterboxed, "no 16:9 or 4:3 frame in the pool"
    assert any(s.objects for s in specs) and any(not s.objects for s in specs)


def test_coding_loses_more_at_a_lower_quality():
    # what the pool's frames go through: libx264 at a constant quality, then the decode stage
    from pipeline.decode import DecodeOptions, decode_bytes

    rng = np.random.default_rng(11)
    frames = [variety.photo_canvas(rng, 160, 120) for _ in range(6)]
    errors = []
    for crf in (18, 40):
        data = decoded._encode(frames, crf, 160, 120)
        out = decode_bytes(data, "video/mp4", DecodeOptions(160))
        assert len(out.frames) == 6
        got = np.stack([f.image[20:140] for f in out.frames]).astype(float)
        errors.append(np.abs(got - np.stack(frames)).mean())
    assert 0 < errors[0] < errors[1] < 40, errors


def test_pool_size_is_bounded():
    for n in (0, -1, 100_001):
        with pytest.raises(ConfigError):
            decoded.decoded_pool(np.random.default_rng(0), n, 64)


def test_texture_negatives_are_textured_and_captioned_as_empty():
    rng = np.random.default_rng(4)
    for _ in range(8):
        img, spec = variety.texture_negative(rng, 64)
        assert img.shape == (64, 64, 3) and img.dtype == np.uint8
        assert spec.objects == () and img.std() > 3
        assert "background" in scenes.caption(spec, rng)
    canvas = variety.texture_canvas(rng, 96, 40)
    assert canvas.shape == (40, 96, 3)
    photo = variety.photo_canvas(rng, 90, 50)
    assert photo.shape == (50, 90, 3) and photo.std() > 3


@pytest.mark.parametrize(
    "bad",
    [
        {"decoded": -0.1},
        {"textures": 1.5},
        {"variety": 0.7, "decoded": 0.4},
        {"render_workers": -1},
        {"render_workers": 64},
    ],
)
def test_training_shares_and_workers_are_bounded(bad):
    from pipeline.demo.training import TrainConfig
    from pipeline.models.registry import DEMO_MODEL, get_model_info

    config = get_model_info(DEMO_MODEL).config
    with pytest.raises(ConfigError):
        TrainConfig(model=config, **bad)  # type: ignore[arg-type]


def test_the_same_frames_encode_alike_whatever_the_process_freed_before():
    # the encoder reads memory it has not written: what earlier work left in the heap must
    # not change the stream
    rng = np.random.default_rng(5)
    frames = [variety.photo_canvas(rng, 192, 108) for _ in range(12)]
    streams = set()
    for _ in range(16):
        litter = [rng.bytes(int(n)) for n in rng.integers(1_000, 200_000, 40)]
        del litter  # freed: the heap holds random bytes where the encoder allocates next
        streams.add(decoded._encode(frames, 24, 192, 108))
    assert len(streams) == 1
