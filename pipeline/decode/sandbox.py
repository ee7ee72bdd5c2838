"""What a decode process may do: its resource limits and its system-call filter.

A decode process parses media an adversary chose, so it is built to be taken over without the
worker being taken with it. Besides the environment it starts with (:mod:`.launch`: no
secrets), :func:`enter` sets, before the process reads its first task:

- ``RLIMIT_AS`` (``Limits.max_memory``): a memory blow-up fails an allocation;
- ``RLIMIT_CORE`` 0, ``RLIMIT_NOFILE`` 256, ``RLIMIT_FSIZE`` (``Limits.max_input_bytes``: only
  a fetched job URL is spooled to disk);
- a seccomp filter (libseccomp, through the ``pyseccomp`` binding): ``execve``, ``execveat``,
  ``fork``, ``vfork``, a ``clone`` that is not a new thread, ``ptrace``,
  ``process_vm_readv``/``writev`` and the ``io_uring_*`` calls kill the process (SIGSYS: the
  pool reports a crash and starts a fresh one); ``clone3`` fails with ``ENOSYS`` so that C
  libraries create threads with ``clone``, whose flags the filter can read. In a pool that
  decodes segments (``network`` False) ``socket`` and ``socketpair`` fail with ``EPERM``: the
  process keeps the one socket it was started with, to the worker, and can open no other (no
  network, no local Unix socket); a library probing for one gets an error, not a dead process.
  A pool that fetches job URLs keeps sockets.

:func:`cpu_budget` then caps each call's CPU time (``Limits.max_cpu``, every thread of the
process together): ``RLIMIT_CPU``'s soft limit is set to the CPU time used so far plus the
budget, and a process over it is ended by the kernel with SIGXCPU, which the pool reports as
:class:`~pipeline.errors.LimitExceeded`.

Process count: the filter above, not ``RLIMIT_NPROC``. ``RLIMIT_NPROC`` counts every process
and thread of the user (the worker's own threads, the other decode processes), so no value
for one decode process is both tight and safe, and the kernel does not enforce it for root
(or with ``CAP_SYS_RESOURCE``); the filter stops a decode process from starting any process,
root or not. A deployment caps the whole container with the cgroup's ``pids`` limit.

Where seccomp cannot be had (not Linux, no ``libseccomp``, a kernel or container that refuses
filters) the process runs without it and says so: :func:`enter` returns the reason, the pool
logs a warning once and shows it in :attr:`DecodePool.sandbox
<pipeline.decode.DecodePool.sandbox>`. The tests (``tests/test_decode_sandbox.py``) run a
real decode process through :mod:`tests.decode_faults`: a socket, an exec and a fork fail,
a CPU spin ends in :class:`~pipeline.errors.LimitExceeded`, and the limits are read back from
``/proc/<pid>/limits`` and the filter from ``/proc/<pid>/status``.

The one hook for tests: :func:`allow_test_calls` lets pools made afterwards in this process
run a named module-level function in a decode process
(:meth:`~pipeline.decode.DecodePool.submit_call`), so the tests can make a decode process
misbehave on purpose. No input reaches it: a task's kind is chosen by the code calling the
pool, and a decode process refuses the call unless its pool was made after the switch.
"""

from __future__ import annotations

import errno
import math
import sys
from dataclasses import dataclass
from typing import Final

__all__ = [
    "MAX_FILES",
    "SandboxSettings",
    "allow_test_calls",
    "cpu_budget",
    "enter",
    "filter_mode",
    "test_calls_allowed",
]

MAX_FILES: Final = 256  # RLIMIT_NOFILE of a decode process
_CLONE_THREAD: Final = 0x00010000
#: System calls that end a decode process at once: no decoder needs them, an exploit does.
_KILLED: Final = (
    "execve",
    "execveat",
    "fork",
    "vfork",
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
)
_NO_NETWORK: Final = ("socket", "socketpair")

_test_calls = False


@dataclass(frozen=True, slots=True)
class SandboxSettings:
    """How a decode process confines itself (sent to it at its start)."""

    max_memory: int  # RLIMIT_AS, bytes
    max_file: int  # RLIMIT_FSIZE, bytes
    network: bool = False  # keep sockets (a pool that fetches job URLs)
    test_calls: bool = False  # accept "call" tasks (tests only: allow_test_calls)
    preload_hashing: bool = False  # load the compiled PDQ code before the first task


def allow_test_calls() -> None:
    """Tests only: pools made from now on in this process accept
    :meth:`~pipeline.decode.DecodePool.submit_call`. Nothing in clipguard calls it."""
    global _test_calls
    _test_calls = True


def test_calls_allowed() -> bool:
    return _test_calls


def enter(settings: SandboxSettings) -> str:
    """Confine this process (see the module docstring); what the filter status is: ``"on"``
    or ``"unavailable: <why>"``."""
    _limit_resources(settings.max_file, settings.max_memory)
    return _filter_system_calls(network=settings.network)


def cpu_budget(seconds: float) -> None:
    """Let this process use ``seconds`` more CPU time (all threads) before SIGXCPU ends it."""
    try:
        import resource
    except ImportError:  # not on POSIX: no CPU cap
        return
    usage = resource.getrusage(resource.RUSAGE_SELF)
    used = usage.ru_utime + usage.ru_stime
    soft = math.ceil(used + seconds)
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def _limit_resources(max_file: int, max_memory: int) -> None:
    try:
        import resource
    except ImportError:  # not on POSIX: no limits
        return
    for limit, value in (
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_NOFILE, MAX_FILES),
        (resource.RLIMIT_FSIZE, max_file),
        (resource.RLIMIT_AS, max_memory),
    ):
        _soft, hard = resource.getrlimit(limit)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        resource.setrlimit(limit, (value, hard))


def _filter_system_calls(*, network: bool) -> str:
    """Load the seccomp filter; its status (see :func:`enter`)."""
    if not sys.platform.startswith("linux"):
        return f"unavailable: seccomp is Linux only (this is {sys.platform})"
    try:
        import pyseccomp as seccomp  # loads libseccomp with ctypes (ldconfig: before the filter)
    except (ImportError, RuntimeError, OSError) as e:
        return f"unavailable: cannot load libseccomp ({type(e).__name__}: {e})"
    try:
        rules = seccomp.SyscallFilter(seccomp.ALLOW)
        for name in _KILLED:
            rules.add_rule(seccomp.KILL_PROCESS, name)
        rules.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
        rules.add_rule(
            seccomp.KILL_PROCESS, "clone", seccomp.Arg(0, seccomp.MASKED_EQ, _CLONE_THREAD, 0)
        )
        if not network:
            for name in _NO_NETWORK:
                rules.add_rule(seccomp.ERRNO(errno.EPERM), name)
        rules.load()
    except OSError as e:
        return f"unavailable: the kernel refused the seccomp filter ({e})"
    return "on"


def filter_mode(pid: int | str = "self") -> int | None:
    """The ``Seccomp:`` mode of a process from ``/proc/<pid>/status`` (2: a filter), or None."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Seccomp:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None
