"""The decode processes' limits, read back from the kernel (/proc/<pid>/limits) of real
decode processes."""

from __future__ import annotations

import sys
from pathlib import Path

import media
import pytest

from pipeline.decode import DecodeOptions, DecodePool, Limits

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads /proc/<pid>/limits"
)


def _limits(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines()[1:]:
        name, soft = line[:26].strip(), line[26:47].strip()
        out[name] = soft
    return out


def test_decode_processes_run_with_file_core_and_size_limits() -> None:
    limit = 5 << 20
    with DecodePool(1, limits=Limits(max_input_bytes=limit)) as pool:
        assert pool.decode_bytes(media.encode(4), "video/mp2t", DecodeOptions(size=32)).frames
        (pid,) = pool.pids()
        limits = _limits(pid)
    assert limits["Max open files"] == "256"
    assert limits["Max core file size"] == "0"
    assert limits["Max file size"] == str(limit)
