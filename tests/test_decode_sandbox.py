"""The decode sandbox, seen from outside real decode processes: their limits read back from
the kernel (/proc/<pid>/limits, /proc/<pid>/status), their environment (/proc/<pid>/environ),
and what happens when one misbehaves on purpose (tests/decode_faults.py): each misdeed fails
its call with a typed error, and the pool goes on decoding good input."""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import decode_faults
import media
import pytest

from pipeline.decode import DecodeOptions, DecodePool, Limits
from pipeline.errors import (
    DecodeCrash,
    DecodeTimeout,
    DecodeUnavailable,
    InputRefused,
    LimitExceeded,
)

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


# ---------------------------------------------------------------------- environment


SECRET = "CLIPGUARD_SASL_PASSWORD"


def test_decode_processes_start_without_the_workers_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(SECRET, "hunter2-secret")
    monkeypatch.setenv("LC_TIME", "C")
    # the control: a process started by multiprocessing's spawn (as decode processes were)
    # shows it
    control = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(30,))
    control.start()
    try:
        assert control.pid is not None
        environ = b""
        deadline = time.monotonic() + 10
        while not environ and time.monotonic() < deadline:  # empty until its exec is done
            environ = Path(f"/proc/{control.pid}/environ").read_bytes()
        assert b"hunter2-secret" in environ
    finally:
        control.kill()
        control.join()
    with DecodePool(2) as pool:
        for pid in pool.pids():
            environ = Path(f"/proc/{pid}/environ").read_bytes()
            assert b"hunter2-secret" not in environ and SECRET.encode() not in environ
            names = {item.split(b"=")[0].decode() for item in environ.split(b"\0") if item}
            assert "LC_TIME" in names and names <= {
                "PATH", "LANG", "LANGUAGE", "TZ", "TMPDIR", "SSL_CERT_FILE", "SSL_CERT_DIR",
                "LD_LIBRARY_PATH", "NUMBA_CACHE_DIR", *(n for n in names if n.startswith("LC_")),
            }  # fmt: skip
            assert faults_env(pool) == environ  # what the process itself reads


def faults_env(pool: DecodePool) -> bytes:
    return pool.submit_call(decode_faults.read_environ).result(timeout=30)  # type: ignore[no-any-return]


_PARENT = """
import json, os, sys
import decode_faults
from pipeline.decode import DecodePool
with DecodePool(1) as pool:
    own = open("/proc/self/environ", "rb").read()
    try:
        got = pool.submit_call(decode_faults.read_environ, os.getpid()).result(timeout=30)
        outcome = "read: " + str(os.environ["CLIPGUARD_SASL_PASSWORD"].encode() in got)
    except Exception as e:
        outcome = f"{type(e).__name__}: {e}"
    print(json.dumps({"own": b"hunter2-secret" in own, "outcome": outcome,
                      "caps": pool.capabilities_dropped}))
"""


def test_a_decode_process_cannot_read_the_workers_proc_environ() -> None:
    # the worker's launch environment holds the secret (/proc/<pid>/environ shows the launch
    # environment, so the worker here is a process started with it)
    env = {**os.environ, SECRET: "hunter2-secret", "PYTHONPATH": os.pathsep.join(sys.path)}
    run = subprocess.run(
        [sys.executable, "-c", _PARENT], env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout.splitlines()[-1])
    assert report["own"] is True  # the secret is there to be found
    assert report["caps"] is True
    assert report["outcome"].startswith("DecodeCrash") and "PermissionError" in report["outcome"]


# ---------------------------------------------------------------------- faults


FAULT_LIMITS = Limits(timeout=10.0, max_cpu=2.0, max_memory=1024**3)


@pytest.fixture
def pool() -> Iterator[DecodePool]:
    with DecodePool(1, limits=FAULT_LIMITS, threads=1) as p:
        assert p.seccomp == "on", p.seccomp
        yield p


def _good(pool: DecodePool) -> None:
    result = pool.decode_bytes(media.encode(12), "video/mp2t", DecodeOptions(size=64))
    assert [media.read_number(f.image) for f in result.frames] == list(range(12))


def _fails_and_is_replaced(
    pool: DecodePool, error: type[Exception], match: str, function: Any, *args: Any
) -> None:
    (before,) = pool.pids()
    with pytest.raises(error, match=match):
        pool.submit_call(function, *args).result(timeout=60)
    _good(pool)
    assert pool.pids() != [before]
    assert pool.available


def test_a_segfault_is_a_crash(pool: DecodePool) -> None:
    _fails_and_is_replaced(pool, DecodeCrash, "SIGSEGV", decode_faults.segfault)


def test_a_cpu_spin_ends_at_the_cpu_budget(pool: DecodePool) -> None:
    # LimitExceeded from SIGXCPU, not DecodeTimeout from the 10 s wall-clock limit
    _fails_and_is_replaced(pool, LimitExceeded, "CPU time limit of 2 s", decode_faults.spin)


def test_a_memory_blow_up_is_a_limit(pool: DecodePool) -> None:
    _fails_and_is_replaced(pool, LimitExceeded, "out of memory", decode_faults.blow_up)


def test_a_hang_is_a_timeout(pool: DecodePool) -> None:
    _fails_and_is_replaced(pool, DecodeTimeout, "killed", decode_faults.hang)


def test_running_a_program_kills_the_process(pool: DecodePool, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    _fails_and_is_replaced(pool, DecodeCrash, "SIGSYS", decode_faults.run_program, str(marker))
    assert not marker.exists()


def test_starting_a_process_kills_the_process(pool: DecodePool) -> None:
    # RLIMIT_NPROC would not hold for root (as here): the filter does, for root too
    _fails_and_is_replaced(pool, DecodeCrash, "SIGSYS", decode_faults.start_process)


def test_a_forged_reply_runs_nothing_in_the_worker(pool: DecodePool, tmp_path: Path) -> None:
    # the control: unpickled freely, the payload runs
    pickle.loads(pickle.dumps(decode_faults.Shell(str(tmp_path / "control"))))
    assert (tmp_path / "control").exists()
    marker = tmp_path / "ran"
    _fails_and_is_replaced(pool, DecodeCrash, "refuses", decode_faults.forge_reply, str(marker))
    assert not marker.exists()


class _Listener:
    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.5)
        self.port = self.sock.getsockname()[1]

    def accepted(self) -> bool:
        try:
            conn, _ = self.sock.accept()
        except TimeoutError:
            return False
        conn.close()
        return True


def test_a_segment_pool_has_no_network(pool: DecodePool) -> None:
    listener = _Listener()
    with pytest.raises(DecodeCrash, match="PermissionError"):
        pool.submit_call(decode_faults.connect, "127.0.0.1", listener.port).result(timeout=30)
    with pytest.raises(DecodeCrash, match="PermissionError"):
        pool.submit_call(decode_faults.unix_socket).result(timeout=30)
    assert not listener.accepted()
    _good(pool)  # the process is intact: it keeps its pipe to the pool
    with pytest.raises(InputRefused, match="no network"):
        pool.decode_uri(f"http://127.0.0.1:{listener.port}/clip.ts", DecodeOptions(size=32))
    # the control: a pool that fetches URLs keeps sockets, and the same call connects
    with DecodePool(1, limits=FAULT_LIMITS, network=True) as net:
        call = net.submit_call(decode_faults.connect, "127.0.0.1", listener.port)
        assert call.result(timeout=30) == "connected"
    assert listener.accepted()
    listener.sock.close()


def test_the_cpu_budget_is_set_per_call(pool: DecodePool) -> None:
    _good(pool)
    (pid,) = pool.pids()
    soft = _limits(pid)["Max cpu time"]
    assert soft != "unlimited" and 2 <= int(soft) <= 2 + 60
    assert sandbox_filter(pid) == 2


def sandbox_filter(pid: int) -> int | None:
    from pipeline.decode.sandbox import filter_mode

    return filter_mode(pid)


_NO_HOOK = """
import os
from concurrent.futures import Future
from pipeline.decode import DecodePool
from pipeline.errors import ConfigError
with DecodePool(1) as pool:
    try:
        pool.submit_call(os.getpid)
        print("parent ran it")
    except ConfigError as e:
        print("parent refused:", e)
    # past the parent's check, straight to a decode process
    future = pool._submit("call", (os.getpid, ()), None, Future(), pool._limits, "a call")
    try:
        print("child ran it", future.result(timeout=30))
    except ConfigError as e:
        print("child refused:", e)
"""


def test_calls_are_refused_where_the_test_hook_is_off() -> None:
    # a process that never imported decode_faults: no call runs, in the pool or its children
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    run = subprocess.run(
        [sys.executable, "-c", _NO_HOOK], env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [
        "parent refused: this decode pool runs no calls (the test hook is off)",
        "child refused: this decode process runs no calls (test hook off)",
    ]


# ---------------------------------------------------------------------- the machine's faults


def test_a_pool_that_cannot_start_processes_is_unavailable_then_recovers(tmp_path: Path) -> None:
    python = tmp_path / "python"
    python.symlink_to(sys.executable)
    with DecodePool(1, limits=FAULT_LIMITS, executable=str(python)) as pool:
        _good(pool)
        python.unlink()  # the interpreter is gone: no new process can start
        (pid,) = pool.pids()
        with pytest.raises(DecodeCrash, match="SIGSEGV"):  # the input's fault: a crash
            pool.submit_call(decode_faults.segfault).result(timeout=30)
        deadline = time.monotonic() + 30
        while pool.available and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not pool.available
        with pytest.raises(DecodeUnavailable, match="cannot start a decode process"):
            pool.decode_bytes(media.encode(4), "video/mp2t", DecodeOptions(size=32))
        python.symlink_to(sys.executable)  # the machine recovers: so does the pool
        deadline = time.monotonic() + 30
        while not pool.available and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pool.available
        _good(pool)
        assert pool.pids() != [pid]
