"""Decode and sampling: real codecs, real files, a real HTTP server; every video is generated here.

Generated frames carry their frame number as a barcode (see ``tests/media.py``), so each test
checks that a decoded frame's index and timestamps point at the picture they claim to.
"""

from __future__ import annotations

import ast
import http.server
import importlib
import random
import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import media
import numpy as np
import pytest

from pipeline import decode as decode_module
from pipeline.decode import (
    DecodeOptions,
    DecodeResult,
    Frame,
    Limits,
    RawStreamDecoder,
    Sampler,
    Sampling,
    content_type_for,
    decode_bytes,
    decode_uri,
    normalize_content_type,
    scene_difference,
)
from pipeline.decode import pool as pool_module
from pipeline.decode import sampling as sampling_module
from pipeline.errors import (
    ConfigError,
    LimitExceeded,
    MediaUnavailable,
    UnsupportedMedia,
)

FPS = 25
SMALL = DecodeOptions(64)  # the model input side most tests decode to
CONTAINERS = {
    # name: (encode() arguments, content type, codec name in the result)
    "mpegts-h264": ({"fmt": "mpegts", "bframes": 2}, "video/mp2t", "h264"),
    "mp4-h264": ({"fmt": "mp4", "bframes": 2}, "video/mp4", "h264"),
    "fmp4-h264": (
        {
            "fmt": "mp4",
            "muxer_options": (("movflags", "frag_keyframe+empty_moov+default_base_moof"),),
        },
        "video/mp4",
        "h264",
    ),
    "webm-vp9": ({"fmt": "webm", "codec": "libvpx-vp9"}, "video/webm", "vp9"),
    "mkv-hevc": ({"fmt": "matroska", "codec": "libx265", "bframes": 2}, "video/x-matroska", "hevc"),
    "mp4-av1": ({"fmt": "mp4", "codec": "libsvtav1"}, "video/mp4", "av1"),
}


def _numbers(result: DecodeResult | list[Frame]) -> list[int]:
    frames = result.frames if isinstance(result, DecodeResult) else result
    return [media.read_number(f.image) for f in frames]


def _chunks(data: bytes, seed: int, largest: int = 3000) -> Iterator[bytes]:
    rng = random.Random(seed)
    at = 0
    while at < len(data):
        n = rng.randint(1, largest)
        yield data[at : at + n]
        at += n


# ----------------------------------------------------------------------------- public names


def test_exported_names() -> None:
    assert sorted(decode_module.__all__) == [
        "CONTAINER_TYPES",
        "DEFAULT_SCENE_THRESHOLD",
        "DecodeOptions",
        "DecodePool",
        "DecodeResult",
        "Fit",
        "Frame",
        "IMAGE_TYPES",
        "InputAccess",
        "Interpolation",
        "Limits",
        "RAW_TYPES",
        "RawCodec",
        "RawStreamDecoder",
        "Reason",
        "Sampler",
        "Sampling",
        "SamplingMode",
        "content_type_for",
        "decode_bytes",
        "decode_uri",
        "normalize_content_type",
        "scene_difference",
    ]
    assert sampling_module.__all__ == [
        "DEFAULT_SCENE_THRESHOLD",
        "Reason",
        "Sampler",
        "Sampling",
        "SamplingMode",
        "scene_difference",
    ]
    assert pool_module.__all__ == ["DecodePool"]
    modules = [decode_module] + [
        importlib.import_module(f"pipeline.decode.{path.stem}") for path in _package_modules()
    ]
    for module in modules:
        for name in module.__all__:
            assert hasattr(module, name), f"{module.__name__}.{name}"


def _package_modules() -> list[Path]:
    folder = Path(decode_module.__file__).parent
    return sorted(p for p in folder.glob("*.py") if p.name != "__init__.py")


def _private_uses(source: str) -> list[str]:
    """Private names of ``pipeline.decode`` modules that ``source`` imports or reads."""
    tree = ast.parse(source)
    found: list[str] = []
    bound: set[str] = set()  # names bound to what the package's modules export
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (
            node.level or (node.module or "").startswith("pipeline.decode")
        ):
            for alias in node.names:
                if alias.name.startswith("_"):
                    found.append(f"line {node.lineno}: from {node.module} import {alias.name}")
                bound.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("pipeline.decode") and alias.asname:
                    bound.add(alias.asname)
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        ):
            base = ast.unparse(node.value)
            if base in bound or base.startswith("pipeline.decode"):
                found.append(f"line {node.lineno}: {base}.{node.attr}")
    return found


def test_no_module_of_the_package_uses_a_private_name_of_another() -> None:
    """What one module needs of another is public in it (maybe not re-exported)."""
    bad = (
        "import pipeline.decode.frames\n"
        "from pipeline.decode import fit as f\n"
        "from pipeline.decode.media import _EXTENSIONS\n"
        "x = f._SWS_FLAGS, pipeline.decode.frames._x\n"
    )
    assert len(_private_uses(bad)) == 3  # the check sees all three ways in
    modules = [*_package_modules(), Path(decode_module.__file__)]
    assert len(modules) >= 10
    found = {p.name: _private_uses(p.read_text(encoding="utf-8")) for p in modules}
    assert {name: uses for name, uses in found.items() if uses} == {}


# ----------------------------------------------------------------------------- containers


@pytest.mark.parametrize("name", list(CONTAINERS))
def test_container_decodes_every_frame_with_exact_timestamps(name: str) -> None:
    kwargs, content_type, codec = CONTAINERS[name]
    data = media.encode(30, **kwargs)
    result = decode_bytes(data, content_type, DecodeOptions(size=224))
    assert result.codec == codec
    assert result.content_type == content_type
    assert (result.width, result.height) == (media.WIDTH, media.HEIGHT)
    assert result.frames_decoded == 30
    assert result.decode_errors == 0
    assert result.duration == pytest.approx(30 / FPS, abs=0.05)
    assert result.fps == pytest.approx(FPS)
    frames = result.frames
    assert [f.index for f in frames] == list(range(30))
    assert _numbers(result) == list(range(30))  # the right picture behind every index
    assert [f.t for f in frames] == pytest.approx([i / FPS for i in range(30)], abs=1e-3)
    for f in frames:
        assert f.pts - f.t == pytest.approx(result.start_pts, abs=1e-6)
        assert f.image.shape == (224, 224, 3)
        assert f.image.dtype == np.uint8
        assert f.image.flags.c_contiguous
        assert (f.source_width, f.source_height) == (media.WIDTH, media.HEIGHT)
        assert f.reason == "all"
        assert f.tile == 0
    assert frames[0].keyframe


@pytest.mark.parametrize(("fmt", "ct"), [("mpegts", "video/mp2t"), ("mp4", "video/mp4")])
def test_audio_is_ignored(fmt: str, ct: str) -> None:
    result = decode_bytes(media.encode(20, fmt=fmt, audio=True), ct, SMALL)
    assert _numbers(result) == list(range(20))
    assert [f.t for f in result.frames] == pytest.approx([i / FPS for i in range(20)], abs=1e-3)


def test_ten_bit_video() -> None:
    data = media.encode(10, fmt="matroska", codec="libx265", pix_fmt="yuv420p10le")
    result = decode_bytes(data, "video/x-matroska", SMALL)
    assert _numbers(result) == list(range(10))


def test_mpegts_keeps_the_segment_timeline() -> None:
    # muxers start MPEG-TS after a delay: pts is the segment's own, t starts at 0
    result = decode_bytes(media.encode(30), "video/mp2t", SMALL)
    assert result.start_pts > 0
    assert result.frames[0].pts == pytest.approx(result.start_pts)
    assert result.frames[0].t == 0.0
    assert result.frames[10].pts == pytest.approx(result.start_pts + 10 / FPS, abs=1e-6)


@pytest.mark.parametrize("fmt", ["matroska", "mp4"])
def test_variable_frame_rate_uses_each_frames_timestamp(fmt: str) -> None:
    gaps = [40, 40, 120, 40, 260, 40, 40, 420, 40, 40, 80, 40]
    pts_ms = tuple(np.concatenate([[0], np.cumsum(gaps)]).tolist())
    data = media.encode(len(pts_ms), fmt=fmt, pts_ms=pts_ms)
    ct = "video/x-matroska" if fmt == "matroska" else "video/mp4"
    result = decode_bytes(data, ct, SMALL)
    assert [f.t for f in result.frames] == pytest.approx([ms / 1000 for ms in pts_ms], abs=1e-3)
    assert _numbers(result) == list(range(len(pts_ms)))
    sampled = decode_bytes(data, ct, SMALL.with_(sampling=Sampling(mode="fps", fps=2)))
    expected, bucket = [], -1
    for i, ms in enumerate(pts_ms):  # first frame in each half second
        if ms // 500 > bucket:
            bucket = ms // 500
            expected.append(i)
    assert [f.index for f in sampled.frames] == expected
    assert _numbers(sampled) == expected


# ----------------------------------------------------------------------------- sampling


def test_fps_sampling_picks_by_timestamp() -> None:
    result = decode_bytes(media.encode(50), "video/mp2t", SMALL.with_(sampling=Sampling("fps", 2)))
    # 25 fps, 2 per second: first frame at or after 0, 0.5, 1.0 and 1.5 s
    assert [f.index for f in result.frames] == [0, 13, 25, 38]
    assert _numbers(result) == [0, 13, 25, 38]
    assert {f.reason for f in result.frames} == {"fps"}
    assert result.frames_decoded == 50


@pytest.mark.parametrize(
    ("kwargs", "content_type"),
    [
        ({"fmt": "mpegts", "bframes": 2}, "video/mp2t"),
        ({"fmt": "mp4"}, "video/mp4"),
        ({"fmt": "webm", "codec": "libvpx-vp9"}, "video/webm"),
        (
            {"fmt": "matroska", "codec": "libx265", "bframes": 3, "open_gop": True},
            "video/x-matroska",
        ),
    ],
)
def test_keyframes_mode_decodes_only_keyframes(kwargs: dict, content_type: str) -> None:
    data = media.encode(48, gop=12, **kwargs)
    result = decode_bytes(data, content_type, SMALL.with_(sampling=Sampling(mode="keyframes")))
    assert [f.index for f in result.frames] == [0, 12, 24, 36]
    assert _numbers(result) == [0, 12, 24, 36]
    assert result.frames_decoded == 4  # the other 44 frames were never decoded
    assert all(f.keyframe and f.reason == "keyframe" for f in result.frames)
    assert [f.t for f in result.frames] == pytest.approx([0, 12 / FPS, 24 / FPS, 36 / FPS])
    assert result.duration == pytest.approx(48 / FPS, abs=0.05)


def test_scene_sampling_picks_cuts_not_motion() -> None:
    data = media.encode(45, scenes=(15, 30))  # a moving square throughout, cuts at 15 and 30
    result = decode_bytes(
        data,
        "video/mp2t",
        SMALL.with_(sampling=Sampling(mode="scene", scene_threshold=0.25)),
    )
    assert [f.index for f in result.frames] == [0, 15, 30]
    assert _numbers(result) == [0, 15, 30]
    assert {f.reason for f in result.frames} == {"scene"}


def test_max_frames_caps_an_input_and_stops_decoding() -> None:
    result = decode_bytes(
        media.encode(50), "video/mp2t", SMALL.with_(sampling=Sampling(max_frames=5))
    )
    assert [f.index for f in result.frames] == [0, 1, 2, 3, 4]
    assert result.frames_decoded < 50
    capped = decode_bytes(
        media.encode(50),
        "video/mp2t",
        SMALL.with_(sampling=Sampling("fps", 2, max_frames=2)),
    )
    assert [f.index for f in capped.frames] == [0, 13]


def test_sampler_rules() -> None:
    fps = Sampler(Sampling(mode="fps", fps=2.0))
    assert [fps.pick(t, keyframe=False) for t in (0.0, 0.2, 0.4999999999, 0.9, 1.0, 3.0)] == [
        "fps",
        None,
        "fps",  # a rounding hair before the grid point counts as on it
        None,
        "fps",
        "fps",
    ]
    calls = []

    def thumb() -> np.ndarray:
        calls.append(1)
        return np.zeros((4, 4), np.uint8)

    every = Sampler(Sampling(max_frames=2))
    assert [every.pick(0.0, keyframe=False, thumbnail=thumb) for _ in range(3)] == [
        "all",
        "all",
        None,
    ]
    assert every.done and not calls  # thumbnails only in scene mode
    keys = Sampler(Sampling(mode="keyframes"))
    assert [keys.pick(0.0, keyframe=k) for k in (True, False, True)] == [
        "keyframe",
        None,
        "keyframe",
    ]
    scene = Sampler(Sampling(mode="scene", scene_threshold=0.5))
    dark, light = np.zeros((4, 4), np.uint8), np.full((4, 4), 255, np.uint8)
    picks = [scene.pick(0, keyframe=False, thumbnail=lambda t=t: t) for t in (dark, dark, light)]
    assert picks == ["scene", None, "scene"]
    assert scene_difference(dark, light) == 1.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mode": "sometimes"},
        {"fps": 0},
        {"fps": float("nan")},
        {"scene_threshold": 1.5},
        {"max_frames": 0},
        {"max_frames": True},
    ],
)
def test_invalid_sampling_is_a_config_error(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        Sampling(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"size": 0},
        {"size": 10_000},
        {"fit": "stretch"},
        {"interpolation": "magic"},
        {"threads": -1},
    ],
)
def test_invalid_options_are_config_errors(kwargs: dict) -> None:
    args = {"size": 224, **kwargs}
    with pytest.raises(ConfigError):
        decode_bytes(media.encode(10), "video/mp2t", DecodeOptions(**args))


def test_decode_options_vary_with_with_and_fill_defaults_by_resolve() -> None:
    options = DecodeOptions(224, sampling=Sampling(mode="fps", fps=2.0))
    tiles = options.with_(fit="tiles")
    assert (tiles.size, tiles.fit, tiles.sampling) == (224, "tiles", options.sampling)
    assert options.fit == "pad"  # frozen: a variant is a new value
    with pytest.raises(ConfigError):
        options.with_(size=3)  # validated again
    with pytest.raises(ConfigError):
        decode_bytes(media.encode(2), "video/mp2t", {"size": 224})  # type: ignore[arg-type]
    unset = DecodeOptions(64).resolve(limits=Limits(max_frames=5), threads=3)
    assert (unset.limits.max_frames, unset.threads) == (5, 3)
    explicit = DecodeOptions(64, limits=Limits(), threads=0)
    resolved = explicit.resolve(limits=Limits(max_frames=5), threads=3)
    assert (resolved.limits.max_frames, resolved.threads) == (Limits().max_frames, 0)
    assert resolved.as_options() == explicit


@pytest.mark.parametrize(
    "kwargs", [{"max_pixels": 0}, {"timeout": -1.0}, {"max_frames": 1.5}, {"timeout": float("nan")}]
)
def test_invalid_limits_are_config_errors(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        Limits(**kwargs)


# ----------------------------------------------------------------------------- fitting


def _fit(width: int, height: int, fit: str, size: int = 224) -> list[Frame]:
    data = media.still("png", media.marked_image(width, height))
    result = decode_bytes(data, "image/png", DecodeOptions(size=size, fit=fit))  # type: ignore[arg-type]
    assert (result.width, result.height) == (width, height)
    return list(result.frames)


RED, BLUE, GREEN, YELLOW, WHITE, GREY, BLACK = (
    (255, 0, 0),
    (0, 0, 255),
    (0, 255, 0),
    (255, 255, 0),
    (255, 255, 255),
    (128, 128, 128),
    (0, 0, 0),
)


def _is(pixel: np.ndarray, colour: tuple[int, int, int], tol: int = 12) -> bool:
    return bool(np.all(np.abs(pixel.astype(int) - colour) <= tol))


def test_pad_letterboxes_and_keeps_every_edge() -> None:
    (wide,) = _fit(640, 240, "pad")  # scaled to 224 x 84, 70 black rows above and below
    img = wide.image
    assert _is(img[5, 112], BLACK) and _is(img[218, 112], BLACK)
    assert _is(img[112, 1], RED) and _is(img[112, 222], BLUE)
    assert _is(img[73, 112], GREEN) and _is(img[150, 112], YELLOW)
    assert _is(img[112, 112], WHITE)
    (tall,) = _fit(240, 640, "pad")
    img = tall.image
    assert _is(img[112, 5], BLACK) and _is(img[112, 218], BLACK)
    assert _is(img[1, 112], GREEN) and _is(img[222, 112], YELLOW)
    assert _is(img[112, 73], RED) and _is(img[112, 150], BLUE)


def test_crop_keeps_the_centre_square() -> None:
    (frame,) = _fit(640, 240, "crop")
    img = frame.image
    assert _is(img[112, 1], GREY) and _is(img[112, 222], GREY)  # the side edges are cut off
    assert _is(img[1, 112], GREEN) and _is(img[222, 112], YELLOW)
    assert _is(img[112, 112], WHITE)


@pytest.mark.parametrize(
    ("width", "height", "tiles"),
    [(640, 240, 3), (426, 240, 2), (320, 240, 2), (240, 240, 1), (1200, 100, 3)],
)
def test_tiles_cover_a_wide_frame(width: int, height: int, tiles: int) -> None:
    frames = _fit(width, height, "tiles")
    assert [f.tile for f in frames] == list(range(tiles))
    assert len({(f.pts, f.index) for f in frames}) == 1
    first, last = frames[0].image, frames[-1].image
    middle = 112
    if tiles == 1:  # square: one padded tile
        assert _is(first[middle, 1], RED) and _is(first[middle, 222], BLUE)
        return
    band = slice(0, 224) if width / height <= 3 else slice(100, 124)  # very wide: padded rows
    assert _is(first[band][len(range(224)[band]) // 2, 1], RED)
    assert _is(last[band][len(range(224)[band]) // 2, 222], BLUE)
    if width / height > 3:
        assert _is(first[2, middle], BLACK)  # padded above and below
    else:
        assert _is(first[1, middle], GREEN) and _is(first[222, middle], YELLOW)
    for f in frames[1:-1]:
        assert not _is(f.image[middle, 1], RED) and not _is(f.image[middle, 222], BLUE)


def test_tiles_run_down_a_tall_frame() -> None:
    frames = _fit(240, 640, "tiles")
    assert len(frames) == 3
    assert _is(frames[0].image[1, 112], GREEN)
    assert _is(frames[-1].image[222, 112], YELLOW)
    assert _is(frames[1].image[112, 1], RED) and _is(frames[1].image[112, 222], BLUE)


@pytest.mark.parametrize("rotation", [90, -90, 180])
def test_rotation_metadata_is_honoured(rotation: int) -> None:
    plain = decode_bytes(media.encode(5, fmt="mp4"), "video/mp4", DecodeOptions(size=224))
    turned = decode_bytes(
        media.encode(5, fmt="mp4", rotation=rotation), "video/mp4", DecodeOptions(size=224)
    )
    k = rotation // 90
    for a, b in zip(plain.frames, turned.frames, strict=True):
        assert np.array_equal(b.image, np.rot90(a.image, k))
    sideways = rotation % 180 == 90
    expected = (media.HEIGHT, media.WIDTH) if sideways else (media.WIDTH, media.HEIGHT)
    assert (turned.width, turned.height) == expected
    assert (turned.frames[0].source_width, turned.frames[0].source_height) == expected


def test_jpeg_exif_orientation_is_honoured() -> None:
    jpeg = media.still("jpeg", media.marked_image(160, 120))
    plain = decode_bytes(jpeg, "image/jpeg", DecodeOptions(size=224)).frames[0]
    turned = decode_bytes(
        media.with_exif_orientation(jpeg, 6), "image/jpeg", DecodeOptions(size=224)
    )
    # orientation 6: the picture is shown turned 90 degrees clockwise
    assert np.array_equal(turned.frames[0].image, np.rot90(plain.image, -1))
    assert (turned.width, turned.height) == (120, 160)


@pytest.mark.parametrize("kind", ["png", "jpeg", "webp"])
def test_still_images_are_one_frame_inputs(kind: str) -> None:
    result = decode_bytes(
        media.still(kind, media.marked_image(300, 200)), f"image/{kind}", DecodeOptions(size=96)
    )
    (frame,) = result.frames
    assert (frame.reason, frame.index, frame.pts, frame.t, frame.keyframe) == (
        "image",
        0,
        0.0,
        0.0,
        True,
    )
    assert (result.width, result.height) == (300, 200)
    assert frame.image.shape == (96, 96, 3)
    assert _is(frame.image[48, 48], WHITE, tol=20)


# ----------------------------------------------------------------------------- raw streams


@pytest.mark.parametrize(
    ("fmt", "codec", "encoder"), [("h264", "h264", "libx264"), ("hevc", "hevc", "libx265")]
)
def test_raw_stream_in_arbitrary_chunks(fmt: str, codec: str, encoder: str) -> None:
    raw = media.encode(40, fmt=fmt, codec=encoder, bframes=2)
    decoder = RawStreamDecoder(codec, SMALL)  # type: ignore[arg-type]
    frames: list[Frame] = []
    early, fed = 0, 0
    for chunk in _chunks(raw, seed=3, largest=500):
        frames += decoder.feed(chunk)
        fed += len(chunk)
        if not early and fed > len(raw) // 2:
            early = len(frames)
    frames += decoder.flush()
    assert early > 0  # frames come out while the stream is still arriving
    assert [f.index for f in frames] == list(range(40))
    assert _numbers(frames) == list(range(40))
    # x264 and x265 write VUI timing: the stream says 25 fps
    assert decoder.fps == pytest.approx(FPS)
    assert [f.t for f in frames] == pytest.approx([i / FPS for i in range(40)])
    assert all(f.pts == f.t for f in frames)
    assert decoder.flush() == []
    with pytest.raises(ConfigError):
        decoder.feed(b"\x00\x00\x01")


def test_raw_stream_frame_rate_from_sps_or_argument() -> None:
    raw = media.encode(10, fmt="h264", fps=30)
    decoder = RawStreamDecoder("h264", DecodeOptions(size=32))
    frames = decoder.feed(raw) + decoder.flush()
    assert frames[3].t == pytest.approx(3 / 30)
    fixed = RawStreamDecoder("h264", DecodeOptions(size=32), fps=10)
    frames = fixed.feed(raw) + fixed.flush()
    assert frames[3].t == pytest.approx(0.3)


@pytest.mark.parametrize(
    ("fmt", "encoder", "open_gop"),
    [
        ("h264", "libx264", False),
        ("h264", "libx264", True),
        ("hevc", "libx265", False),
        ("hevc", "libx265", True),
    ],
)
def test_raw_stream_keyframes_have_presentation_indices(
    fmt: str, encoder: str, open_gop: bool
) -> None:
    raw = media.encode(48, fmt=fmt, codec=encoder, gop=12, bframes=3, open_gop=open_gop)
    decoder = RawStreamDecoder(fmt, SMALL.with_(sampling=Sampling(mode="keyframes")))  # type: ignore[arg-type]
    frames = [f for chunk in _chunks(raw, seed=5) for f in decoder.feed(chunk)] + decoder.flush()
    assert [f.index for f in frames] == [0, 12, 24, 36]
    assert _numbers(frames) == [0, 12, 24, 36]
    assert decoder.frames_decoded == 4


def test_raw_stream_sampling_cap_applies_per_chunk() -> None:
    raw = media.encode(40, fmt="h264")
    decoder = RawStreamDecoder(
        "h264", DecodeOptions(size=32, sampling=Sampling(mode="fps", fps=5, max_frames=2))
    )
    half = len(raw) // 2
    first = decoder.feed(raw[:half])
    second = decoder.feed(raw[half:])
    last = decoder.flush()  # a call of its own: frames the decoder still held
    assert [f.index for f in first] == [0, 5]  # capped at two, decoding goes on
    assert len(second) == 2 and second[0].index >= 10
    assert len(last) <= 2
    buckets = [f.index // 5 for f in first + second + last]  # at most one per 1/5 s
    assert buckets == sorted(set(buckets))


def test_raw_stream_limits_apply_per_chunk() -> None:
    raw = media.encode(30, fmt="h264")
    strict = DecodeOptions(32, limits=Limits(max_frames=10))
    with pytest.raises(LimitExceeded, match="more than 10 frames"):
        RawStreamDecoder("h264", strict).feed(raw)
    live = RawStreamDecoder("h264", strict)  # a live stream: small chunks pass
    frames = [f for chunk in _chunks(raw, seed=1, largest=200) for f in live.feed(chunk)]
    assert len(frames + live.flush()) == 30
    small_chunks = DecodeOptions(32, limits=Limits(max_input_bytes=100))
    with pytest.raises(LimitExceeded):
        RawStreamDecoder("h264", small_chunks).feed(raw)


@pytest.mark.parametrize(("fmt", "ct"), [("h264", "video/h264"), ("hevc", "video/h265")])
def test_raw_stream_as_one_input(fmt: str, ct: str) -> None:
    codec = "libx265" if fmt == "hevc" else "libx264"
    result = decode_bytes(media.encode(20, fmt=fmt, codec=codec), ct, SMALL)
    assert _numbers(result) == list(range(20))
    assert result.duration == pytest.approx(20 / FPS)
    assert result.codec == fmt


# ----------------------------------------------------------------------------- files and URLs


def test_content_types() -> None:
    assert normalize_content_type("Video/MP4; codecs=avc1.64001f") == "video/mp4"
    assert content_type_for("a/b/clip.TS") == "video/mp2t"
    assert content_type_for("x.mkv") == "video/x-matroska"
    assert content_type_for("x.265") == "video/h265"
    for bad in ("list.m3u8", "x.mpd", "x.txt", "noext"):
        with pytest.raises(UnsupportedMedia):
            content_type_for(bad)
    with pytest.raises(UnsupportedMedia, match="not a supported"):
        decode_bytes(b"data", "application/octet-stream", DecodeOptions(size=32))


@pytest.mark.parametrize(
    ("name", "data_args"),
    [
        ("clip.ts", {}),
        ("clip.mp4", {"fmt": "mp4"}),
        ("clip.webm", {"fmt": "webm", "codec": "libvpx-vp9"}),
        ("clip.h264", {"fmt": "h264"}),
    ],
)
def test_local_files_by_path_and_file_url(tmp_path: Path, name: str, data_args: dict) -> None:
    path = tmp_path / name
    path.write_bytes(media.encode(12, **data_args))
    for uri in (path, str(path), path.as_uri()):
        result = decode_uri(uri, SMALL)
        assert _numbers(result) == list(range(12))


def test_local_file_content_type_override_and_images(tmp_path: Path) -> None:
    path = tmp_path / "segment.bin"
    path.write_bytes(media.encode(12))
    with pytest.raises(UnsupportedMedia):
        decode_uri(path, SMALL)
    assert len(decode_uri(path, SMALL, content_type="video/mp2t").frames) == 12
    image = tmp_path / "still.png"
    image.write_bytes(media.still("png", media.marked_image(64, 48)))
    assert decode_uri(image, SMALL).frames[0].reason == "image"
    with pytest.raises(MediaUnavailable):
        decode_uri(tmp_path / "missing.mp4", SMALL)
    with pytest.raises(LimitExceeded):
        decode_uri(
            path,
            SMALL.with_(limits=Limits(max_input_bytes=100)),
            content_type="video/mp2t",
        )


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves ``files`` with Range support (FFmpeg seeks in MP4 over HTTP)."""

    files: ClassVar[dict[str, bytes]] = {}
    requests: ClassVar[list[str]] = []

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.requests.append(self.path)
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start, end = 0, len(body) - 1
        ranged = self.headers.get("Range", "")
        if ranged.startswith("bytes="):
            first, _, last = ranged[6:].partition("-")
            start, end = int(first), int(last) if last else len(body) - 1
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(body)}")
        else:
            self.send_response(200)
        part = body[start : end + 1]
        self.send_header("Content-Length", str(len(part)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        self.wfile.write(part)


@pytest.fixture(scope="module")
def http_base() -> Iterator[str]:
    _Handler.files = {
        "/clip.mp4": media.encode(12, fmt="mp4"),
        "/clip.ts": media.encode(12),
        "/still.png": media.still("png", media.marked_image(64, 48)),
        "/raw.h264": media.encode(12, fmt="h264"),
    }
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.mark.parametrize("path", ["/clip.mp4", "/clip.ts", "/raw.h264"])
def test_http_inputs(http_base: str, path: str) -> None:
    result = decode_uri(http_base + path, SMALL)
    assert _numbers(result) == list(range(12))


def test_http_image_and_errors(http_base: str) -> None:
    assert decode_uri(http_base + "/still.png", SMALL).frames[0].reason == "image"
    with pytest.raises(MediaUnavailable, match="404"):
        decode_uri(http_base + "/missing.mp4", SMALL)
    with pytest.raises(MediaUnavailable):
        decode_uri("http://127.0.0.1:9/clip.ts", SMALL)  # nothing listens on the discard port
    with pytest.raises(LimitExceeded):
        decode_uri(http_base + "/clip.ts", SMALL.with_(limits=Limits(max_input_bytes=1000)))
    with pytest.raises(LimitExceeded):
        decode_uri(http_base + "/raw.h264", SMALL.with_(limits=Limits(max_input_bytes=1000)))


@pytest.fixture(scope="module")
def https_base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """An HTTPS server on 127.0.0.1 with a self-signed certificate (made by the openssl tool)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            *(openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )
    _Handler.files = {**_Handler.files, "/clip.ts": media.encode(12)}
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_address[1]}", cert
    server.shutdown()
    server.server_close()
    thread.join()


def test_https_checks_the_server_certificate(https_base: tuple[str, Path]) -> None:
    base, cert = https_base
    with pytest.raises(MediaUnavailable):  # self-signed: not trusted by the system bundle
        decode_uri(base + "/clip.ts", SMALL)
    result = decode_uri(base + "/clip.ts", SMALL, ca_file=str(cert))
    assert _numbers(result) == list(range(12))


@pytest.mark.parametrize("fmt", ["mpegts", "mp4"])
def test_sparse_fps_sampling_skips_b_frames(fmt: str) -> None:
    # 25 fps with 2 B-frames between references (keyframe every 12): sampled at 2 fps, a
    # quarter of the stream rate or less, with skip_b_frames the decoder skips the B-frames
    data = media.encode(50, fmt=fmt, gop=12, bframes=2)
    ct = "video/mp2t" if fmt == "mpegts" else "video/mp4"
    every = decode_bytes(data, ct, SMALL)
    assert every.frames_decoded == 50
    assert decode_bytes(data, ct, SMALL.with_(sampling=Sampling("fps", 2))).frames_decoded == 50
    sparse = decode_bytes(data, ct, SMALL.with_(sampling=Sampling("fps", 2, skip_b_frames=True)))
    # references only: I and P frames (the B-frames are two thirds of each group but its end)
    assert sparse.frames_decoded <= 25
    picked = [f.index for f in sparse.frames]
    assert len(picked) == 4
    for wanted, index in zip((0, 13, 25, 38), picked, strict=True):
        assert 0 <= index - wanted <= 2  # the next reference frame: at most two frames late
    assert _numbers(sparse) == picked  # the picture shown is the frame the index names
    assert [f.t for f in sparse.frames] == pytest.approx([i / FPS for i in picked], abs=1e-3)
    # 10 fps is more than a quarter of 25: every frame is decoded
    dense = decode_bytes(data, ct, SMALL.with_(sampling=Sampling("fps", 10, skip_b_frames=True)))
    assert dense.frames_decoded == 50
