"""The demo policies ship inside the package, like the demo model, and every command finds them
from any working directory: the worker, scans, the policy tools and a wheel installed elsewhere."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from pipeline.errors import ConfigError
from pipeline.policies import load_policies
from pipeline.policies.bundled import DEMO_POLICIES, POLICIES_FOLDER, default_policies
from tests import media
from tests.streaming import free_port

ROOT = Path(__file__).resolve().parent.parent
CLIPGUARD = Path(sys.executable).parent / "clipguard"
# the bundled files, as paths inside the package (the wheel's member names)
BUNDLED = sorted(str(p.relative_to(ROOT)) for p in DEMO_POLICIES.rglob("*") if p.is_file())


def _run(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CLIPGUARD), *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_demo_policies_live_in_the_package() -> None:
    assert DEMO_POLICIES.is_relative_to(ROOT / "pipeline")
    assert {lp.policy.id for lp in load_policies([DEMO_POLICIES])} == {"red-triangle", "spam-text"}
    examples = [e for lp in load_policies([DEMO_POLICIES]) for e in lp.policy.examples]
    assert examples and all((DEMO_POLICIES / e.path).is_file() for e in examples)
    assert not (ROOT / "policies" / "demo").exists()  # one copy, the package's


def test_the_default_is_the_bundled_set_for_the_demo_model_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert default_policies(demo=True) == DEMO_POLICIES
    # another model: policies/ of the current folder, else the checkout's starting points
    assert default_policies(demo=False) == ROOT / POLICIES_FOLDER
    (tmp_path / "policies").mkdir()
    assert default_policies(demo=False) == Path.cwd() / POLICIES_FOLDER


def test_a_missing_bundle_is_a_config_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    from pipeline.policies import bundled

    monkeypatch.setattr(bundled, "DEMO_POLICIES", tmp_path / "gone")
    with pytest.raises(ConfigError, match="bundled demo policies are missing"):
        bundled.default_policies(demo=True)


def test_worker_settings_from_another_folder(tmp_path: Path) -> None:
    proc = _run("worker", "--print-settings", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["policies"] == [str(DEMO_POLICIES)]


def test_worker_loads_the_demo_policies_from_another_folder(tmp_path: Path) -> None:
    """The worker loads its model and policies before it connects: from an empty folder, with
    no broker listening, it gets as far as the connection."""
    port = free_port()  # nothing listens there
    proc = _run(
        "worker",
        "--bootstrap-servers",
        f"127.0.0.1:{port}",
        "--metrics-port",
        "0",
        "--set",
        "connect_timeout_s=2",
        cwd=tmp_path,
    )
    assert proc.returncode == 1
    assert "no such policy file or folder" not in proc.stderr
    assert f"cannot connect to Kafka at 127.0.0.1:{port}" in proc.stderr, proc.stderr[-3000:]


def test_scan_with_the_defaults_from_another_folder(tmp_path: Path) -> None:
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(media.encode(6, fmt="mp4", width=96, height=64, fps=3))
    proc = _run("scan", str(clip), "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"policies from {DEMO_POLICIES}" in proc.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["files"][0]["frames_scored"] == 2  # 2 s at 1 frame a second


def test_an_installed_wheel_carries_and_finds_the_demo_policies(tmp_path: Path) -> None:
    """A wheel built from the sources holds every bundled file; installed in a folder of its own
    and run from another, its policy tools default to the policies inside it."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    for package in ("pipeline", "consumers"):
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        shutil.copytree(ROOT / package, src / package, ignore=ignore)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    build = [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist")]
    subprocess.run([*build, str(src)], check=True, timeout=300, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("clipguard-*.whl")
    with zipfile.ZipFile(wheel) as z:
        members = set(z.namelist())
    assert set(BUNDLED) <= members, sorted(set(BUNDLED) - members)

    site = tmp_path / "site"
    install = [*pip, "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)]
    subprocess.run(install, check=True, timeout=300, capture_output=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = (
        "import pipeline\n"
        "from consumers.cli import main\n"
        "from pipeline.policies.bundled import DEMO_POLICIES\n"
        "print(pipeline.__file__)\n"
        "print(DEMO_POLICIES)\n"
        "raise SystemExit(main(['policy', 'lint']))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=elsewhere,
        env={**os.environ, "PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    module, bundle, verdict = proc.stdout.splitlines()[:3]
    assert Path(module).is_relative_to(site)  # the installed copy, not the checkout
    assert Path(bundle) == site / "pipeline" / "policies" / "data" / "demo"
    assert verdict == "ok: 2 policies"
