"""bench/gpu_check.py: the reduced CPU run answers every section; without CUDA it refuses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "gpu_check.py"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        check=False,
    )


def test_reduced_cpu_run_fills_every_row_of_the_table() -> None:
    done = _run("--device", "cpu", "--budget-s", "120")
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    checks = [r.split("|")[1].strip() for r in rows[1:]]
    assert checks == [
        "encoder parity",
        "encoder parity",
        "decode",
        "images/s",
        "end to end",
    ]
    parity, default, decode, speed, e2e = rows[1:]
    assert "tiny bf16 vs fp32 on cpu" in parity and parity.rstrip().endswith("| yes |")
    assert "load_encoder default" in default
    assert "| bf16, guard mean cosine" in default or "| fp32 |" in default
    assert "frames 12/12, timestamps equal, PSNR min inf dB" in decode
    assert "b4: " in speed and "b8: " in speed and "skipped" not in speed
    assert "12 frames" in e2e and e2e.rstrip().endswith("| yes |")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_without_cuda_it_says_so_and_fails() -> None:
    done = _run()
    assert done.returncode == 2
    assert "no CUDA device" in done.stdout
