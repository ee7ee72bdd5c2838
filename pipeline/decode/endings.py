"""How a decode process ended, in words, and the error of the call it was running.

The pool (:mod:`pipeline.decode.pool`) sees a child end by its exit status: a signal is named
(SIGSEGV: a crash), SIGXCPU is the kernel ending a process past its CPU budget
(:func:`pipeline.decode.sandbox.cpu_budget`: :class:`LimitExceeded`, the input's fault), SIGSYS
the seccomp filter killing a forbidden system call (:class:`DecodeCrash`); a kill by the pool
after the wall-clock limit is :class:`DecodeTimeout`.
"""

from __future__ import annotations

import signal

from pipeline.errors import DecodeCrash, DecodeError, DecodeTimeout, LimitExceeded

__all__ = ["call_error", "how_it_ended"]

_SIGXCPU = getattr(signal, "SIGXCPU", None)
_SIGSYS = getattr(signal, "SIGSYS", None)


def how_it_ended(code: int | None, *, retiring: str | None, timed_out: bool) -> str:
    """How a child ended: ``code`` is its exit status (minus a signal; None: still there),
    ``retiring`` why it was leaving on its own, ``timed_out`` whether the pool killed it."""
    if retiring:
        return retiring
    if timed_out:
        return "was killed after running past its time limit"
    if code is None:
        return "stopped responding"
    if code >= 0:
        return f"exited with status {code}"
    if -code == _SIGXCPU:
        return "was ended by the kernel after running past its CPU time limit (SIGXCPU)"
    if -code == _SIGSYS:
        return "was killed by SIGSYS: it made a system call the decode sandbox forbids"
    try:
        return f"was killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"was killed by signal {-code}"


def call_error(
    label: str,
    pid: int,
    code: int | None,
    how: str,
    *,
    timed_out: bool,
    limits: tuple[float, float, float],
) -> DecodeError:
    """The error of the call ``label`` a child (``pid``) was running when it ended;
    ``limits``: the call's wall-clock limit, the grace past it, and its CPU budget (s)."""
    timeout, grace, cpu = limits
    if timed_out:
        return DecodeTimeout(
            f"{label}: no result within {timeout:g} s (+{grace:g} s grace); decode process "
            f"{pid} killed"
        )
    if code is not None and -code == _SIGXCPU:
        return LimitExceeded(
            f"{label}: over the CPU time limit of {cpu:g} s; decode process {pid} ended"
        )
    return DecodeCrash(f"{label}: decode process {pid} {how}")
