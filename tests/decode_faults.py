"""Misbehaviour on purpose, for the sandbox tests: functions a decode process runs through
:meth:`DecodePool.submit_call <pipeline.decode.DecodePool.submit_call>`.

Importing this module switches the test hook on (:func:`pipeline.decode.sandbox.allow_test_calls`)
for pools made afterwards in this process; nothing in clipguard imports it, and a decode
process refuses such calls unless its pool was made with the hook on. Each function stands for
what an exploited decoder might try: crash, spin, allocate, hang, reach the network, run a
program, start a process, read secrets.
"""

from __future__ import annotations

import ctypes
import os
import socket
import time

from pipeline.decode.sandbox import allow_test_calls

allow_test_calls()


def segfault() -> None:
    """Read address 0: SIGSEGV."""
    ctypes.string_at(0)


def spin() -> None:
    """Burn CPU time forever."""
    n = 0
    while True:
        n += 1


def blow_up() -> None:
    """Allocate (and touch) 64 MiB chunks without end."""
    chunks = []
    while True:
        chunks.append(bytearray(64 << 20))


def hang() -> None:
    time.sleep(3600)


def connect(host: str, port: int) -> str:
    """Open a TCP connection to ``host:port`` (the test listens there)."""
    with socket.create_connection((host, port), timeout=5) as conn:
        conn.sendall(b"stolen")
    return "connected"


def unix_socket() -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM):
        return "opened"


def run_program(path: str) -> str:
    """exec another program (it would write ``path`` if it ran)."""
    os.execv("/bin/sh", ["sh", "-c", f"echo ran > {path}"])


def start_process() -> str:
    """fork: a child process that reports back (it would exit at once)."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return "forked"


def read_environ(pid: int | str = "self") -> bytes:
    """The environment ``/proc/<pid>/environ`` shows (the parent's: pass its pid)."""
    with open(f"/proc/{pid}/environ", "rb") as f:
        return f.read()


def parent_pid() -> int:
    return os.getppid()


class Shell:
    """Unpickled freely, runs a shell command that writes ``path`` (a forged reply's payload)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"echo ran > {self.path}",))


def forge_reply(path: str) -> None:
    """Send the pool, on this process's own pipe, a reply that runs :class:`Shell` if the pool
    unpickles it freely."""
    import gc
    from multiprocessing.connection import Connection

    conn = next(o for o in gc.get_objects() if isinstance(o, Connection))
    conn.send(("ok", 0, Shell(path), False))


def loaded(*modules: str) -> list[str]:
    """Which of ``modules`` this process has imported (not misbehaviour: what it loaded)."""
    import sys

    return sorted(m for m in modules if m in sys.modules)
