"""Starting a decode process with nothing of the worker's environment in it.

:class:`DecodeProcess` runs ``python -I -c <bootstrap>`` with an environment built from an
allow-list (:func:`minimal_environment`: ``PATH``, ``LANG``, ``LANGUAGE``, ``LC_*``, ``TZ``,
``TMPDIR``, ``SSL_CERT_FILE``, ``SSL_CERT_DIR``, ``LD_LIBRARY_PATH``, ``NUMBA_CACHE_DIR``), so
the process never holds the worker's secrets (``CLIPGUARD_SASL_PASSWORD`` and the like): not
in ``os.environ``, and not in ``/proc/<pid>/environ``, which the kernel fills from the
environment an ``execve`` passed and which no later change in the process removes. ``-I``
(isolated) also ignores ``PYTHON*`` variables and the user's site folder.

Why not :mod:`multiprocessing`'s ``spawn``: it starts children with the parent's whole
environment, and its one knob (``set_executable``) is global to the parent process, so a pool
could not give its children another environment without changing every other ``spawn`` in
the process. The launch here does what ``spawn`` does, with :class:`subprocess.Popen` and an
explicit ``env``: the child gets one end of a socket pair as a
:class:`multiprocessing.connection.Connection` (the same pipe API the pool used with
``spawn``), receives the parent's ``sys.path`` first (so it imports the same ``pipeline``),
then its :class:`~pipeline.decode.sandbox.SandboxSettings`, and runs
:func:`pipeline.decode.pool_child.child_main`. Before any of that the process drops every
capability (``capset``), and the pool makes the worker non-dumpable
(:func:`hide_from_decoders`): a decode process cannot read the worker's environment or memory
through ``/proc/<worker pid>/`` either, even when both run as root. Like ``spawn``'s, the
process's ``sentinel`` is the read end of a pipe whose write end only the child holds: it turns
readable when the child is gone. The tests read ``/proc/<pid>/environ`` of a real decode
process, and have one try to read the worker's (``tests/test_decode_sandbox.py``).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Mapping
from multiprocessing.connection import Connection
from typing import Any, Final

__all__ = ["DecodeProcess", "hide_from_decoders", "minimal_environment"]

_KEPT: Final = frozenset(
    {
        "PATH",
        "LANG",
        "LANGUAGE",
        "TZ",
        "TMPDIR",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "LD_LIBRARY_PATH",
        "NUMBA_CACHE_DIR",  # where the parent compiled the hashing code: the process loads it
    }
)
# First (capabilities are per thread, so before any import starts one) the process gives up
# every capability: root keeps CAP_SYS_PTRACE otherwise, and could read the worker's
# /proc/<pid>/environ and memory whatever the worker's dumpable flag (hide_from_decoders).
_BOOTSTRAP: Final = """\
import ctypes, sys
try:  # capset(_LINUX_CAPABILITY_VERSION_3 for this thread, nothing effective/permitted)
    _dropped = ctypes.CDLL(None).capset((ctypes.c_uint32 * 2)(0x20080522, 0),
                                        (ctypes.c_uint32 * 6)()) == 0
except (AttributeError, OSError):
    _dropped = False
from multiprocessing.connection import Connection
conn = Connection(int(sys.argv[1]))
sys.path[:] = conn.recv()
from pipeline.decode.pool_child import child_main
child_main(conn, conn.recv(), capabilities_dropped=_dropped)
"""
_PR_SET_DUMPABLE: Final = 4


def hide_from_decoders() -> bool:
    """Make this process non-dumpable (``prctl(PR_SET_DUMPABLE, 0)``): a process of the same
    user without ``CAP_SYS_PTRACE`` (a decode process: it drops every capability) can then
    not read its ``/proc/<pid>/environ``, ``mem`` or ``maps``. It also writes no core file.
    False where not possible (not Linux)."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        return int(ctypes.CDLL(None).prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)) == 0
    except (AttributeError, OSError):
        return False


def minimal_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The variables of ``environ`` a decode process is given: locale, time zone, search
    path, temporary folder, TLS trust store and numba's cache folder; nothing else (no
    credentials, no ``PYTHON*``, no ``LD_PRELOAD``)."""
    return {k: v for k, v in environ.items() if k in _KEPT or k.startswith("LC_")}


class DecodeProcess:
    """One decode process, started at once with a minimal environment; see the module
    docstring. ``conn`` is the parent's end of the process's pipe. Raises :class:`OSError`
    when the process cannot be started (the executable missing, out of processes)."""

    def __init__(self, settings: Any, *, executable: str | None = None, name: str = "") -> None:
        self.name = name
        parent_sock, child_sock = socket.socketpair()
        sentinel_r, sentinel_w = os.pipe()
        try:
            self._popen = subprocess.Popen(  # noqa: S603 - our interpreter, a fixed program
                [executable or sys.executable, "-I", "-c", _BOOTSTRAP, str(child_sock.fileno())],
                env=minimal_environment(os.environ),
                stdin=subprocess.DEVNULL,
                pass_fds=(child_sock.fileno(), sentinel_w),
                close_fds=True,
            )
        except BaseException:
            parent_sock.close()
            os.close(sentinel_r)
            raise
        finally:
            child_sock.close()
            os.close(sentinel_w)
        self.conn = Connection(parent_sock.detach())
        self.sentinel = sentinel_r
        self.pid: int = self._popen.pid
        try:
            self.conn.send(list(sys.path))
            self.conn.send(settings)
        except OSError:
            pass  # it died at once: its sentinel says so

    @property
    def exitcode(self) -> int | None:
        """None while running; else the exit status, or minus the signal that ended it."""
        return self._popen.poll()

    def is_alive(self) -> bool:
        return self._popen.poll() is None

    def join(self, timeout: float | None = None) -> None:
        """Wait up to ``timeout`` seconds for the process to end (and reap it)."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._popen.wait(timeout)

    def kill(self) -> None:
        """SIGKILL (nothing if already gone)."""
        if self._popen.poll() is None:
            self._popen.kill()

    def close(self) -> None:
        """Let go of the sentinel (the process must be gone); the pool closes ``conn``."""
        if self.sentinel >= 0:
            os.close(self.sentinel)
            self.sentinel = -1
