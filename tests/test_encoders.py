"""load_encoder: the OpenVINO CPU backend, its accuracy guard and its conversion cache.

Real conversions (OpenVINO, NNCF) of the bundled demo model and of random-weight towers; the
converted cache is a temporary folder shared by the module's tests where they can share it.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import pipeline.models.converted as converted_module
import pipeline.models.encoders as encoders_module
import pipeline.models.guard as guard_module
from pipeline.errors import AccuracyGuardError, ConfigError, ModelError
from pipeline.models import (
    CLIP,
    CLIPConfig,
    GuardSettings,
    RegressionSet,
    TextConfig,
    VisionConfig,
    list_converted,
    load_clip,
    load_encoder,
    save_clip,
)
from pipeline.models.guard import generated_frames
from pipeline.models.openvino_backend import cpu_precisions
from pipeline.policies import load_policies
from pipeline.policies.bundled import DEMO_POLICIES
from pipeline.policies.compile import PolicyCompiler
from pipeline.policies.guard import regression_set

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo() -> CLIP:
    return load_clip("clipguard-demo")


@dataclass(frozen=True)
class FirstStart:
    folder: Path
    encoder: Any
    seconds: float


@pytest.fixture(scope="module")
def first_int8(tmp_path_factory: pytest.TempPathFactory, demo: CLIP) -> FirstStart:
    """The module's one int8 conversion of the demo model into a new cache (the slowest step
    here: NNCF's accuracy control), timed; every test that takes ``cache`` finds it there."""
    folder = tmp_path_factory.mktemp("converted")
    start = time.perf_counter()
    encoder = load_encoder(demo, precision="int8", cache_dir=folder)
    return FirstStart(folder, encoder, time.perf_counter() - start)


@pytest.fixture(scope="module")
def cache(first_int8: FirstStart) -> Path:
    return first_int8.folder


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _tiny_vit(seed: int = 3) -> CLIP:
    cfg = CLIPConfig(
        embed_dim=32,
        vision=VisionConfig(
            kind="vit", image_resolution=32, width=64, layers=2, heads=2, patch_size=8
        ),
        text=TextConfig(context_length=8, vocab_size=64, width=32, heads=1, layers=1),
    )
    model = CLIP(cfg)
    model.init_weights(torch.Generator().manual_seed(seed))
    model.name = f"tiny-vit-{seed}"
    return model.eval().requires_grad_(False)


def test_cpu_offers_int8_bf16_fp32() -> None:
    # the build machines have VNNI and BF16; fp32 is always there and always last
    offered = cpu_precisions()
    assert offered[-1] == "fp32"
    assert set(offered) <= {"int8", "bf16", "fp32"}


def test_demo_model_every_precision_keeps_the_regression_decisions(cache: Path, demo: CLIP) -> None:
    policies = load_policies([DEMO_POLICIES])
    policy_set = PolicyCompiler(demo, cache_dir=cache / "policies").compile(policies)
    reg = regression_set(policy_set, demo.input_resolution)
    assert reg is not None and len(reg.frames) == sum(len(lp.policy.examples) for lp in policies)
    fp32 = load_encoder(demo, precision="fp32", backend="torch")
    want = list(reg.decide(fp32.encode(reg.frames)))
    assert any(want) and not all(want)  # flags and non-flags both among the examples
    for precision in cpu_precisions():
        encoder = load_encoder(demo, precision=precision, regressions=[reg], cache_dir=cache)
        assert (encoder.backend, encoder.precision) == ("openvino", precision)
        got = list(reg.decide(encoder.encode(reg.frames)))
        assert got == want, precision
        if precision != "fp32":
            assert encoder.guard is not None and encoder.guard.changed == ()
            assert encoder.guard.frames == 48 + len(reg.frames)
            g = encoder.guard
            print(f"demo {precision}: cosine mean {g.mean_cosine:.5f} min {g.min_cosine:.5f}")


def test_auto_takes_the_fastest_precision_that_passes(cache: Path, demo: CLIP) -> None:
    encoder = load_encoder(demo, cache_dir=cache)
    assert encoder.backend == "openvino"
    assert encoder.precision == cpu_precisions()[0]
    assert encoder.guard is not None and encoder.guard.mean_cosine >= 0.995
    assert encoder.describe() == {
        "name": "clipguard-demo",
        "weights_sha256": demo.fingerprint(),
        "precision": encoder.precision,
        "backend": "openvino",
        "runtime": encoder.runtime,
    }
    frames = generated_frames(demo.input_resolution, 8, seed=9)
    out = encoder.encode(frames)
    assert out.shape == (8, demo.embed_dim) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    # chunks of batch_size give the same as one batch, and a list of frames as an array
    small = load_encoder(demo, cache_dir=cache, batch_size=3)
    np.testing.assert_allclose(small.encode(list(frames)), out, atol=2e-3)
    assert encoder.encode(np.zeros((0, 64, 64, 3), np.uint8)).shape == (0, demo.embed_dim)
    assert encoder.encode([]).shape == (0, demo.embed_dim)


def test_models_list_shows_the_converted_models_and_their_guard_figures(
    cache: Path, demo: CLIP
) -> None:
    encoder = load_encoder(demo, precision="int8", cache_dir=cache)
    assert encoder.guard is not None
    env = {**os.environ, "CLIPGUARD_CONVERTED_DIR": str(cache)}
    cli = [sys.executable, "-m", "consumers", "models", "list"]
    raw = subprocess.run([*cli, "--json", "--converted"], env=env, capture_output=True, check=True)
    listed = json.loads(raw.stdout)["converted"]
    row = next(r for r in listed if r["precision"] == "int8")
    assert row["name"] == "clipguard-demo" and row["backend"] == "openvino"
    assert row["weights_sha256"] == demo.fingerprint()
    # the list shows the newest guard verdict stored with the conversion (the module's other
    # tests check it on other validation sets too); this start's verdict is among them
    (entry,) = [e for e in list_converted(cache) if e.precision == "int8"]
    assert encoder.guard.mean_cosine in [c.mean_cosine for c in entry.checks]
    newest = entry.checks[-1]
    assert row["mean_cosine"] == pytest.approx(newest.mean_cosine)
    assert row["changed"] == 0
    table = subprocess.run(cli, env=env, capture_output=True, text=True, check=True).stdout
    line = next(x for x in table.splitlines() if "clipguard-demo" in x and " int8 " in x)
    assert f"{newest.mean_cosine:.5f}" in line
    empty = {**env, "CLIPGUARD_CONVERTED_DIR": str(cache / "nothing-here")}
    table = subprocess.run(cli, env=empty, capture_output=True, text=True, check=True).stdout
    assert "converted models: none yet" in table


def test_forced_guard_failure_falls_back_and_says_so(
    cache: Path, demo: CLIP, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="pipeline.models.encoders"):
        encoder = load_encoder(demo, cache_dir=cache, guard=GuardSettings(min_mean_cosine=1.01))
    assert encoder.precision == "fp32" and encoder.guard is None
    offered = cpu_precisions()
    assert len(encoder.refused) == len(offered) - 1
    for refused, nxt in itertools.pairwise(offered):
        line = f"clipguard-demo: {refused} refused by the accuracy guard: mean cosine to fp32"
        assert any(line in r.message and f"trying {nxt}" in r.message for r in caplog.records)
    with pytest.raises(AccuracyGuardError, match=r"int8 refused .* < 1\.01000"):
        load_encoder(
            demo, precision="int8", cache_dir=cache, guard=GuardSettings(min_mean_cosine=1.01)
        )


def test_auto_passes_over_a_precision_measured_slower_than_fp32(demo: CLIP) -> None:
    # torch on the CPU offers bf16 where the CPU has it; whether it pays off is measured
    encoder = load_encoder(demo, backend="torch")
    if encoder.precision == "bf16":
        assert encoder.guard is not None and not encoder.guard.slower_than_fp32()
    else:
        assert encoder.precision == "fp32"
        assert all("slower than fp32" in r or "refused" in r for r in encoder.refused)
    fast = guard_module.GuardReport("bf16", 1.0, 1.0, 8, images_per_s=30.0, fp32_images_per_s=20)
    slow = guard_module.GuardReport("bf16", 1.0, 1.0, 8, images_per_s=15.0, fp32_images_per_s=20)
    unknown = guard_module.GuardReport("bf16", 1.0, 1.0, 8)  # figures stored without timings
    assert [r.slower_than_fp32() for r in (fast, slow, unknown)] == [False, True, False]
    assert guard_module.GuardReport.from_json(slow.to_json()) == slow


def test_a_changed_regression_decision_refuses_the_precision(cache: Path, demo: CLIP) -> None:
    # a decision that any change of the embedding flips: the rounded embedding itself
    frames = generated_frames(demo.input_resolution, 4, seed=11)
    strict = RegressionSet(
        name="exact",
        frames=frames,
        decide=lambda emb: [tuple(np.round(e, 4)) for e in emb],
        fingerprint="exact-v1",
    )
    encoder = load_encoder(demo, cache_dir=cache, regressions=[strict])
    assert encoder.precision == "fp32"
    assert all("regression decisions changed: exact[0]" in r for r in encoder.refused)
    # bf16 where the CPU has it; int8 (which every CPU runs) otherwise
    lower = "bf16" if "bf16" in cpu_precisions() else "int8"
    with pytest.raises(AccuracyGuardError, match="4 regression decisions changed"):
        load_encoder(demo, precision=lower, cache_dir=cache, regressions=[strict])


def test_conversion_is_reused_on_the_second_start(
    cache: Path, demo: CLIP, first_int8: FirstStart
) -> None:
    first, first_s = first_int8.encoder, first_int8.seconds
    start = time.perf_counter()
    second = load_encoder(demo, precision="int8", cache_dir=cache)
    second_s = time.perf_counter() - start
    print(f"first start {first_s:.2f} s (converted), second start {second_s:.2f} s")
    assert first.converted_now and not second.converted_now
    assert second_s < first_s
    assert second.guard == first.guard  # the stored figures, not measured again
    (entry,) = [e for e in list_converted(cache) if e.precision == "int8"]
    assert (entry.backend, entry.name) == ("openvino", "clipguard-demo")
    assert entry.weights_sha256 == demo.fingerprint() and entry.conversion_s > 0
    assert first.guard.mean_cosine in [c.mean_cosine for c in entry.checks]
    frames = generated_frames(demo.input_resolution, 4, seed=3)
    np.testing.assert_array_equal(first.encode(frames), second.encode(frames))


def test_unreadable_or_half_written_cache_entries_are_converted_again(
    tmp_path: Path, demo: CLIP
) -> None:
    first = load_encoder(demo, precision="fp32", cache_dir=tmp_path)
    folder = first.converted.path  # type: ignore[attr-defined]
    (folder / "figures.json").write_text("{not json")
    stale = tmp_path / f".{folder.name}.crashed.tmp"
    stale.mkdir()
    again = load_encoder(demo, precision="fp32", cache_dir=tmp_path)
    assert again.converted_now  # type: ignore[attr-defined]
    assert not stale.exists()
    (folder / "figures.json").write_text(" " * (2 << 20))  # oversized: not read
    assert list_converted(tmp_path) == []


def test_an_unwritable_cache_is_a_clear_error(tmp_path: Path, demo: CLIP) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    with pytest.raises(ModelError, match=r"cannot write the converted-model cache .*CLIPGUARD_"):
        load_encoder(demo, precision="fp32", cache_dir=blocker / "converted")


_WORKER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from pipeline.models import load_encoder
    from pipeline.models.guard import generated_frames
    weights, cache, me = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    (cache.parent / f"ready-{me}").touch()
    while not (cache.parent / "go").exists():
        time.sleep(0.005)
    # fp32: what is proven here is one conversion for two processes; a tiny random tower's
    # int8 can fail the accuracy guard on CPUs without AVX-512 VNNI (mean cosine 0.994 < 0.995
    # measured on an AVX2-only EPYC)
    enc = load_encoder(weights, precision="fp32", cache_dir=cache)
    out = enc.encode(generated_frames(enc.input_resolution, 2, seed=4))
    print(json.dumps({"converted": enc.converted_now, "out": out.tolist()}))
    """
)


def test_two_processes_starting_together_convert_once(tmp_path: Path) -> None:
    weights = save_clip(_tiny_vit(), tmp_path / "tiny.safetensors")
    cache = tmp_path / "converted"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(weights), str(cache), str(i)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(2)
    ]
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready-{i}").exists() for i in range(2)):
        assert time.monotonic() < deadline, "worker processes did not start"
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        time.sleep(0.01)
    (tmp_path / "go").touch()
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert sorted(r["converted"] for r in results) == [False, True]
    assert results[0]["out"] == results[1]["out"]
    assert len(list_converted(cache)) == 1
    assert not [p for p in cache.iterdir() if p.name.endswith(".tmp")]


# A full-size tower (random ViT-B/32) in every precision is a slow proof (about a minute):
# bench/proof_precisions.py. The demo model's every-precision test above runs here.


def test_clear_errors_for_what_the_device_does_not_offer(cache: Path, demo: CLIP) -> None:
    with pytest.raises(ConfigError, match=r"fp16 is not available from OpenVINO on this CPU"):
        load_encoder(demo, precision="fp16", cache_dir=cache)
    with pytest.raises(ConfigError, match=r"int8 is not available from torch on cpu"):
        load_encoder(demo, precision="int8", backend="torch")
    with pytest.raises(ConfigError, match="precision must be one of"):
        load_encoder(demo, precision="fp8")
    with pytest.raises(ConfigError, match="backend must be one of"):
        load_encoder(demo, backend="tensorrt")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device"):
            load_encoder(demo, device="cuda")
    with pytest.raises(ConfigError, match="fp32 on cpu"):
        load_encoder(_half(demo))
    encoder = load_encoder(demo, precision="fp32", backend="torch")
    with pytest.raises(ConfigError, match=r"uint8 RGB \[B, 64, 64, 3\]"):
        encoder.encode(np.zeros((1, 32, 32, 3), np.uint8))
    with pytest.raises(ConfigError, match="uint8 RGB"):
        encoder.encode(np.zeros((1, 64, 64, 3), np.float32))  # type: ignore[arg-type]


def _half(model: CLIP) -> CLIP:
    import copy

    return copy.deepcopy(model).to(torch.bfloat16)


def test_guard_settings_and_folders_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cosine"):
        GuardSettings(min_mean_cosine=7.0)
    with pytest.raises(ConfigError, match="generated"):
        GuardSettings(generated=0)
    with pytest.raises(ConfigError, match="not a directory"):
        guard_module.folder_frames(tmp_path / "missing", 64)
    with pytest.raises(ConfigError, match="no png, jpeg or webp"):
        guard_module.folder_frames(tmp_path, 64)
    import cv2

    img = np.zeros((40, 80, 3), np.uint8)
    img[:, :40] = (255, 0, 0)
    cv2.imwrite(str(tmp_path / "a.png"), img)
    (tmp_path / "notes.txt").write_text("not an image")
    frames = guard_module.folder_frames(tmp_path, 64)
    assert frames.shape == (1, 64, 64, 3) and frames.dtype == np.uint8
    (tmp_path / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))
    with pytest.raises(ValueError, match=r"b\.png"):
        guard_module.folder_frames(tmp_path, 64)


def test_generated_frames_are_deterministic_and_varied() -> None:
    a = generated_frames(64, 12)
    assert a.shape == (12, 64, 64, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, generated_frames(64, 12))
    assert not np.array_equal(a, generated_frames(64, 12, seed=1))
    assert len({f.tobytes() for f in a}) == 12
    assert a.std() > 30


def test_exported_names() -> None:
    assert set(encoders_module.__all__) == {
        "Backend",
        "ImageEncoder",
        "OpenVINOImageEncoder",
        "Precision",
        "TorchImageEncoder",
        "load_encoder",
        "reference_encoder",
    }
    assert set(converted_module.__all__) == {
        "ConvertedModel",
        "converted_dir",
        "ensure_converted",
        "entry_name",
        "find_converted",
        "list_converted",
        "locked",
        "record_check",
    }
    for module in (encoders_module, converted_module, guard_module):
        for name in module.__all__:
            assert hasattr(module, name), name


def test_the_guard_times_a_tower_warm_at_the_timed_shape(demo: CLIP) -> None:
    """A runtime that prepares its kernels on the first call at each input shape (OpenVINO
    does) is timed after that set-up, not through it: timed cold, an int8 tower that runs
    several times faster than fp32 was measured slower and passed over."""
    from pipeline.models.guard import check_tower

    reference = load_encoder(demo, precision="fp32", backend="torch").encode
    frames = generated_frames(demo.input_resolution, 48, seed=5)
    answers = {len(frames): reference(frames), 2: reference(frames[:2])}
    shapes: set[tuple[int, ...]] = set()

    def candidate(batch: np.ndarray) -> np.ndarray:  # warm: far faster than the reference
        if batch.shape not in shapes:  # first call at this shape: set-up
            shapes.add(batch.shape)
            time.sleep(1.0)
        return answers[len(batch)]

    report = check_tower("int8", reference, candidate, frames)
    assert report.mean_cosine == pytest.approx(1.0)
    assert not report.slower_than_fp32(), (report.images_per_s, report.fp32_images_per_s)
