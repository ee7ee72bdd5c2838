"""Sandboxed decoding: a pool of worker processes that a hostile input can only take down alone.

FFmpeg can crash (segfault) or hang on malformed input, and a decoder can be driven to allocate
without bound. :class:`DecodePool` runs the decoders of :mod:`pipeline.decode` in child
processes started afresh (:mod:`pipeline.decode.launch`: a new interpreter with a minimal
environment, nothing inherited from the caller's threads, locks or secrets) and confined
(:mod:`pipeline.decode.sandbox`: resource limits and a system-call filter; no network in a
pool made with ``network=False``), and keeps the caller safe:

- a child that dies (any signal or exit) fails its current call with :class:`DecodeCrash`,
  naming the signal, and is replaced;
- a call that runs past its wall-clock limit (``Limits.timeout`` from the moment it reached a
  child, plus one second of grace for the child's own check) gets :class:`DecodeTimeout`; the
  child is killed with SIGKILL and replaced;
- a call that uses more than ``Limits.max_cpu`` seconds of CPU time (all threads together) ends
  its child (SIGXCPU) and gets :class:`LimitExceeded`; the child is replaced;
- a child that makes a system call the sandbox forbids (an exec, a fork, ``ptrace``...) is
  killed by the kernel (SIGSYS): :class:`DecodeCrash`, and the child is replaced;
- each child's address space is capped at ``Limits.max_memory`` (``RLIMIT_AS``), so a memory
  blow-up fails an allocation inside that child: the call gets :class:`LimitExceeded` ("out of
  memory") and the child exits and is replaced (or, if the failed allocation crashes it,
  :class:`DecodeCrash`);
- a child that replied but then hangs freeing the call's decoder (FFmpeg's frame threads have
  been seen to deadlock there after a failed allocation) is killed after 10 s and replaced,
  before it is given another call;
- every other outcome is the typed error :mod:`pipeline.decode` raised, carried across.

When children cannot be started at all (the interpreter cannot be run, five children in a row
die before saying hello), the fault is the machine's, not an input's: every waiting and new call
fails with :class:`DecodeUnavailable` (``available`` is False) and the pool tries again after a
backoff that doubles from 1 s to 30 s, until a child starts.

Calls return :class:`concurrent.futures.Future` objects, so a stream worker keeps several inputs
in flight (one per child decodes at a time, the rest queue) while it encodes earlier frames.
Frames cross the process boundary as a small pickled list of their metadata, then each picture
written straight from its array into the pipe and read straight into one buffer per result; the
caller's :class:`Frame` images are views into that buffer (writable, C-contiguous). That is one
copy fewer on each side than pickling the frames (``bench/bench_decode.py`` measures both). The
child's side is :mod:`pipeline.decode.pool_child`, the messages :mod:`pipeline.decode.wire`.

Raw byte streams (``video/h264``, ``video/h265`` chunks) keep parser and decoder state between
chunks, so :meth:`DecodePool.open_stream` pins a stream to one child (the one with the fewest
streams) and every :meth:`feed` and :meth:`close_stream` for it runs there, in order. If that
child dies (a crash or timeout in any call it was running), the state of every stream pinned
to it is lost: the failing call and every later call for those streams raise
:class:`DecodeCrash` until the stream is closed or reopened with :meth:`open_stream` (which
starts from the next keyframe the caller sends). A stream's chunks wait behind whatever its
child is decoding: keep long batch files and live streams in separate pools.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any, Final, Literal

from pipeline.decode.access import InputAccess
from pipeline.decode.endings import call_error, how_it_ended
from pipeline.decode.frames import DecodeResult, Frame
from pipeline.decode.hashing import prepare_hashing
from pipeline.decode.launch import DecodeProcess, hide_from_decoders
from pipeline.decode.media import RawCodec, media_kind
from pipeline.decode.options import DecodeOptions, Limits, check_threads
from pipeline.decode.sandbox import SandboxSettings, test_calls_allowed
from pipeline.decode.sources import redact
from pipeline.decode.wire import build_value, error_from, receive_pictures, receive_reply
from pipeline.errors import (
    ConfigError,
    DecodeCrash,
    DecodeError,
    DecodeUnavailable,
    InputRefused,
    LimitExceeded,
)

__all__ = ["DecodePool"]

_GRACE: Final = 1.0  # seconds past Limits.timeout before a child is killed
_CLEANUP: Final = 10.0  # seconds a child may take to free a call's frames and decoders
_START_FAILURES: Final = 5  # children failing to start, in a row: no decode process for now
_START_TIMEOUT: Final = 60.0  # seconds a new child may take to say hello
_BACKOFF: Final = (1.0, 30.0)  # first and longest wait before starting children again
_log = logging.getLogger(__name__)
_TaskKind = Literal["bytes", "uri", "open", "feed", "close", "call"]
# --------------------------------------------------------------------------- parent side


@dataclass(eq=False)
class _Task:
    id: int
    kind: _TaskKind
    header: tuple[Any, ...]
    payload: bytes | None
    future: Future[Any]
    timeout: float
    cpu: float  # CPU seconds the call may use
    label: str
    stream_id: str | None = None
    deadline: float = math.inf


@dataclass(eq=False)
class _Slot:
    number: int
    process: DecodeProcess | None = None
    conn: Connection | None = None
    starting: float | None = None  # started, no hello yet: the deadline for it
    current: _Task | None = None
    queue: collections.deque[_Task] = field(default_factory=collections.deque)
    streams: set[str] = field(default_factory=set)
    cleanup_deadline: float | None = None  # replied; idle once it says "ready" by then
    generation: int = 0
    tasks_done: int = 0
    kill_reason: Literal["timeout"] | None = None
    retiring: str | None = None  # why the child is leaving on its own


@dataclass(eq=False)
class _Stream:
    slot: _Slot
    generation: int  # the slot's generation when the stream was opened
    limits: Limits


_Resolution = tuple[Future[Any], bool, Any]


class DecodePool:
    """Worker processes that decode untrusted media; see the module docstring.

    ``processes`` children run one decode each at a time; ``threads`` is the decoder thread
    count per decode where ``DecodeOptions.threads`` is None (default: cores / processes, at
    least 1; raw streams: 1); ``limits`` are used where ``DecodeOptions.limits`` is None
    (``max_memory`` is per process and cannot be changed per call);
    ``max_tasks_per_child`` replaces a child after that many calls (once no stream is pinned
    to it), as a guard against slow leaks. ``network`` False (the default): the children can
    open no socket, and :meth:`submit_uri` refuses http(s) URLs; True for a pool that fetches
    URLs (scan jobs). ``executable``: the Python interpreter to run (default
    ``sys.executable``). The constructor returns once every child has started and confined
    itself (or none can be started: see :attr:`available`); ``wait`` False: at once (calls
    wait for the children; :attr:`started` says when the first is up). ``hashing`` True: calls
    will ask for PDQ hashes; the compiled hashing code is readied now and each child loads it
    as it starts (otherwise at the first call that hashes, which then waits about a second).
    """

    def __init__(
        self,
        processes: int = 2,
        *,
        limits: Limits | None = None,
        max_tasks_per_child: int | None = None,
        threads: int | None = None,
        network: bool = False,
        executable: str | None = None,
        wait: bool = True,
        hashing: bool = False,
    ) -> None:
        if not isinstance(processes, int) or isinstance(processes, bool) or processes < 1:
            raise ConfigError(f"processes must be a positive integer, not {processes!r}")
        if max_tasks_per_child is not None and (
            not isinstance(max_tasks_per_child, int) or max_tasks_per_child < 1
        ):
            raise ConfigError(
                f"max_tasks_per_child must be a positive integer or None, not "
                f"{max_tasks_per_child!r}"
            )
        self._limits = limits or Limits()
        if not isinstance(self._limits, Limits):
            raise ConfigError(f"limits must be a Limits, not {type(limits).__name__}")
        self._threads = check_threads(
            threads if threads is not None else max(1, (os.cpu_count() or 1) // processes)
        )
        self._max_tasks = max_tasks_per_child
        self.network = bool(network)
        self._executable = executable
        self._sandbox = SandboxSettings(
            max_memory=self._limits.max_memory,
            max_file=self._limits.max_input_bytes,
            network=self.network,
            test_calls=test_calls_allowed(),
            preload_hashing=hashing,
        )
        if hashing:  # compiled here first: the processes load it from the cache as they start
            prepare_hashing()
        #: the children's system-call filter: None until one has started, then "on" or
        #: "unavailable: <why>" (logged once as a warning)
        self.seccomp: str | None = None
        self.capabilities_dropped: bool | None = None  # likewise: the children's capabilities
        #: resolves to ``seccomp`` once the first child has started
        self.started: Future[str] = Future()
        hide_from_decoders()
        self._lock = threading.Lock()
        self._up = threading.Condition(self._lock)  # a child started, or starting failed
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._pending: collections.deque[_Task] = collections.deque()
        self._streams: dict[str, _Stream] = {}
        self._lost: dict[str, str] = {}  # stream id -> why its state was lost
        self._next_id = 0
        self._closing = False
        self._closed = False
        self._unavailable: str | None = None  # why no child can be started now
        self._start_failures = 0
        self._restart_at = 0.0  # no child is started before then (backing off)
        self._backoff = _BACKOFF[0]
        self._slots = [_Slot(number=i) for i in range(processes)]
        with self._lock:
            for slot in self._slots:
                self._start(slot)
        self._manager = threading.Thread(
            target=self._run, name="clipguard-decode-pool", daemon=True
        )
        self._manager.start()
        if wait:  # every child sandboxed and ready, or none can be started
            self.wait_started(_START_TIMEOUT)

    # ------------------------------------------------------------------ public API

    def wait_started(self, timeout: float | None = None) -> bool:
        """Wait until every process has started (sandboxed, hashing code loaded if asked) or
        none can be; False if ``timeout`` seconds passed first."""
        with self._up:
            return self._up.wait_for(self._all_up_or_unavailable, timeout=timeout)

    def __enter__(self) -> DecodePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def processes(self) -> int:
        return len(self._slots)

    def _all_up_or_unavailable(self) -> bool:
        return self._unavailable is not None or all(
            s.process is not None and s.starting is None for s in self._slots
        )

    @property
    def available(self) -> bool:
        """False while no decode process can be started (calls fail with
        :class:`DecodeUnavailable`; the pool keeps trying)."""
        return self._unavailable is None

    def pids(self) -> list[int]:
        """Process ids of the current children (they change when a child is replaced)."""
        with self._lock:
            return [s.process.pid for s in self._slots if s.process and s.process.pid]

    def stream_pid(self, stream_id: str) -> int | None:
        """Process id of the child a stream is pinned to (None: not open, or lost)."""
        with self._lock:
            pinned = self._streams.get(stream_id)
            if pinned is None or pinned.slot.process is None:
                return None
            return pinned.slot.process.pid

    def submit_bytes(
        self, data: bytes | bytearray | memoryview, content_type: str, options: DecodeOptions
    ) -> Future[DecodeResult]:
        """Decode one in-memory input in a child; see :func:`pipeline.decode.decode_bytes`.

        ``options.limits`` None: the pool's; ``options.threads`` None: the pool's ``threads``."""
        options, limits = self._call_options(options, threads=self._threads)
        label = f"{content_type} input of {len(data)} bytes"
        future: Future[DecodeResult] = Future()
        try:
            media_kind(content_type)
            if len(data) > limits.max_input_bytes:
                raise LimitExceeded(f"{label}: over the limit of {limits.max_input_bytes} bytes")
        except DecodeError as e:
            future.set_exception(e)
            return future
        return self._submit("bytes", (content_type, options), bytes(data), future, limits, label)

    def submit_uri(
        self,
        uri: str | os.PathLike[str],
        options: DecodeOptions,
        *,
        content_type: str | None = None,
        ca_file: str | None = None,
        access: InputAccess | None = None,
    ) -> Future[DecodeResult]:
        """Decode a file or http(s) URL in a child; see :func:`pipeline.decode.decode_uri`
        (``access``: what an untrusted reference may reach, enforced in the child).

        ``options.limits`` None: the pool's; ``options.threads`` None: the pool's ``threads``."""
        options, limits = self._call_options(options, threads=self._threads)
        future: Future[DecodeResult] = Future()
        where = os.fspath(uri)
        if isinstance(uri, str) and "://" in uri:
            where = redact(uri)
            if not self.network and uri.lower().startswith(("http://", "https://")):
                future.set_exception(
                    InputRefused(f"input {where:.200}: this decode pool has no network")
                )
                return future
        header = (os.fspath(uri), options, content_type, ca_file, access)
        return self._submit("uri", header, None, future, limits, f"input {where:.200}")

    def submit_call(
        self, function: Callable[..., Any], *args: Any, limits: Limits | None = None
    ) -> Future[Any]:
        """Tests only: run ``function(*args)`` (a module-level function, its result picklable)
        in a decode process, under the sandbox and ``limits`` (None: the pool's) of a decode.
        :class:`ConfigError` unless :func:`pipeline.decode.sandbox.allow_test_calls` was
        called before the pool was made."""
        if not self._sandbox.test_calls:
            raise ConfigError("this decode pool runs no calls (the test hook is off)")
        future: Future[Any] = Future()
        label = f"call of {getattr(function, '__name__', 'a function')}"
        limits = limits or self._limits
        return self._submit("call", (function, args), None, future, limits, label)

    def decode_bytes(
        self, data: bytes | bytearray | memoryview, content_type: str, options: DecodeOptions
    ) -> DecodeResult:
        """:meth:`submit_bytes`, waiting for the result (raises its typed error)."""
        return self.submit_bytes(data, content_type, options).result()

    def decode_uri(
        self,
        uri: str | os.PathLike[str],
        options: DecodeOptions,
        *,
        content_type: str | None = None,
        ca_file: str | None = None,
        access: InputAccess | None = None,
    ) -> DecodeResult:
        """:meth:`submit_uri`, waiting for the result (raises its typed error)."""
        future = self.submit_uri(
            uri, options, content_type=content_type, ca_file=ca_file, access=access
        )
        return future.result()

    def open_stream(
        self, stream_id: str, codec: RawCodec, options: DecodeOptions, *, fps: float | None = None
    ) -> Future[None]:
        """Start decoding a raw H.264 / HEVC byte stream in the child with the fewest streams.

        Arguments as for :class:`pipeline.decode.RawStreamDecoder` (``options.threads`` None: 1
        thread); ``options.limits`` None: the pool's. The returned future completes when the
        child has the decoder; feeds may be queued before that."""
        options, limits = self._call_options(options, threads=1)  # RawStreamDecoder's default
        if codec not in ("h264", "hevc"):
            raise ConfigError(f"raw stream codec must be 'h264' or 'hevc', not {codec!r}")
        if fps is not None and not (isinstance(fps, int | float) and 0 < fps <= 1000):
            raise ConfigError(f"fps must be a number in (0, 1000], not {fps!r}")
        future: Future[None] = Future()
        with self._lock:
            self._check_open()
            if stream_id in self._streams:
                raise ConfigError(f"stream {stream_id!r} is already open")
            self._lost.pop(stream_id, None)
            if self._unavailable is not None:
                future.set_exception(DecodeUnavailable(self._unavailable))
                return future
            slot = min(
                self._slots,
                key=lambda s: (s.process is None, len(s.streams), len(s.queue), s.number),
            )
            self._streams[stream_id] = _Stream(slot, slot.generation, limits)
            slot.streams.add(stream_id)
            task = self._task(
                "open",
                (stream_id, codec, options, fps),
                None,
                future,
                limits,
                f"stream {stream_id!r}",
                stream_id,
            )
            slot.queue.append(task)
        self._wake()
        return future

    def feed(self, stream_id: str, chunk: bytes | bytearray | memoryview) -> Future[list[Frame]]:
        """Decode the next chunk of an open stream, in its child; frames it completed."""
        return self._stream_call("feed", stream_id, bytes(chunk))

    def close_stream(self, stream_id: str) -> Future[list[Frame]]:
        """Flush and forget a stream; the frames still buffered in its decoder."""
        return self._stream_call("close", stream_id, None)

    def close(self) -> None:
        """Finish queued calls, stop the children, and stop the pool. Idempotent."""
        with self._lock:
            self._closing = True
            self._wake()
        if threading.current_thread() is not self._manager:  # (from a callback: it finishes)
            self._manager.join()

    def _shut_down(self) -> None:
        """The manager thread's last act, once closing and idle."""
        self._closed = True
        for slot in self._slots:
            self._stop(slot)
        os.close(self._wake_r)
        os.close(self._wake_w)
        self._wake_r = self._wake_w = -1

    # ------------------------------------------------------------------ submission

    def _call_options(
        self, options: DecodeOptions, *, threads: int
    ) -> tuple[DecodeOptions, Limits]:
        """``options`` with the pool's limits and ``threads`` where unset, and those limits."""
        resolved = DecodeOptions.check(options).resolve(limits=self._limits, threads=threads)
        if resolved.hashes != "none":  # compiled here first: decode processes load it
            prepare_hashing()
        return resolved.as_options(), resolved.limits

    def _task(
        self,
        kind: _TaskKind,
        header: tuple[Any, ...],
        payload: bytes | None,
        future: Future[Any],
        limits: Limits,
        label: str,
        stream_id: str | None = None,
    ) -> _Task:
        self._next_id += 1
        return _Task(
            id=self._next_id,
            kind=kind,
            header=header,
            payload=payload,
            future=future,
            timeout=limits.timeout + _GRACE,
            cpu=limits.max_cpu,
            label=label,
            stream_id=stream_id,
        )

    def _submit(
        self,
        kind: _TaskKind,
        header: tuple[Any, ...],
        payload: bytes | None,
        future: Future[Any],
        limits: Limits,
        label: str,
    ) -> Future[Any]:
        with self._lock:
            self._check_open()
            if self._unavailable is not None:
                future.set_exception(DecodeUnavailable(f"{label}: {self._unavailable}"))
                return future
            self._pending.append(self._task(kind, header, payload, future, limits, label))
        self._wake()
        return future

    def _stream_call(
        self, kind: Literal["feed", "close"], stream_id: str, payload: bytes | None
    ) -> Future[list[Frame]]:
        future: Future[list[Frame]] = Future()
        with self._lock:
            self._check_open()
            lost = self._lost.get(stream_id)
            if lost is not None:
                if kind == "close":
                    del self._lost[stream_id]
                future.set_exception(DecodeCrash(lost))
                return future
            pinned = self._streams.get(stream_id)
            if pinned is None and self._unavailable is not None:  # its open failed so
                future.set_exception(DecodeUnavailable(self._unavailable))
                return future
            if pinned is None:
                raise ConfigError(f"stream {stream_id!r} is not open")
            slot = pinned.slot
            task = self._task(
                kind,
                (stream_id,),
                payload,
                future,
                pinned.limits,
                f"stream {stream_id!r}",
                stream_id,
            )
            if kind == "close":
                del self._streams[stream_id]
                slot.streams.discard(stream_id)
            slot.queue.append(task)
        self._wake()
        return future

    def _check_open(self) -> None:
        if self._closing or self._closed:
            raise ConfigError("the decode pool is closed")

    def _wake(self) -> None:
        if self._wake_w < 0:
            return
        with contextlib.suppress(OSError):  # pipe full: already woken
            os.write(self._wake_w, b"x")

    # ------------------------------------------------------------------ children

    def _start(self, slot: _Slot) -> None:
        """Start a child in ``slot`` (it takes tasks once it says hello); a failure to start
        leaves the slot empty, for :meth:`_fill` to try again."""
        slot.generation += 1
        slot.tasks_done = 0
        slot.kill_reason = None
        slot.retiring = None
        slot.cleanup_deadline = None
        try:
            process = DecodeProcess(
                self._sandbox, executable=self._executable, name=f"clipguard-decode-{slot.number}"
            )
        except OSError as e:
            self._start_failed(f"cannot start a decode process: {e}")
            return
        slot.process = process
        slot.conn = process.conn
        slot.starting = time.monotonic() + _START_TIMEOUT

    def _start_failed(self, why: str) -> None:
        """One more child failed to start; after a few in a row, back off (and, with no child
        running, the pool is unavailable until one starts)."""
        self._start_failures += 1
        self._up.notify_all()
        if self._start_failures < _START_FAILURES or self._closing:
            return
        self._restart_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, _BACKOFF[1])
        running = any(s.process is not None and s.starting is None for s in self._slots)
        if not running and self._unavailable is None:
            self._unavailable = f"no decode process can be started ({why})"
            _log.error("%s; trying again, backing off up to %g s", self._unavailable, _BACKOFF[1])

    def _started(self, slot: _Slot, status: str, capabilities_dropped: bool) -> None:
        """A child said hello: it is sandboxed and takes tasks."""
        slot.starting = None
        self._start_failures = 0
        self._backoff = _BACKOFF[0]
        self._up.notify_all()
        if self._unavailable is not None:
            _log.warning("decode processes start again (after: %s)", self._unavailable)
            self._unavailable = None
        if self.seccomp is None and status != "on":
            _log.warning(
                "decode processes run without a system-call filter (seccomp %s): they can "
                "open sockets and start programs",
                status,
            )
        self.seccomp = status
        self.capabilities_dropped = capabilities_dropped
        if not self.started.done():
            self.started.set_result(status)

    def _fill(self) -> None:
        """Start a child in every empty slot, unless backing off."""
        if self._closing or time.monotonic() < self._restart_at:
            return
        for slot in self._slots:
            if slot.process is None:
                self._start(slot)
                if slot.process is None:  # the others would fail the same way
                    return

    def _stop(self, slot: _Slot) -> None:
        process, conn = slot.process, slot.conn
        slot.process = slot.conn = None
        slot.starting = None
        if conn is not None:
            with contextlib.suppress(OSError, EOFError):
                conn.send(("stop",))
        if process is not None:
            process.join(timeout=2.0)
            if process.is_alive():
                process.kill()
                process.join(timeout=2.0)
            process.close()
        if conn is not None:
            conn.close()

    # ------------------------------------------------------------------ manager thread

    def _run(self) -> None:
        while True:
            resolved: list[_Resolution] = []
            with self._lock:
                if self._closing and self._idle():
                    self._shut_down()
                    return
                waitables, deadline = self._waitables()
            timeout = None if deadline == math.inf else max(0.0, deadline - time.monotonic())
            ready = wait(waitables, timeout)
            with self._lock:
                if self._wake_r in ready:
                    self._drain_wake()
                for slot in self._slots:
                    if slot.conn is not None and slot.conn in ready:
                        self._receive(slot, resolved)
                now = time.monotonic()
                for slot in self._slots:
                    process = slot.process
                    if process is None:
                        continue
                    if slot.current is not None and now > slot.current.deadline:
                        slot.kill_reason = "timeout"
                        process.kill()
                        process.join(timeout=5.0)
                    elif slot.cleanup_deadline is not None and now > slot.cleanup_deadline:
                        slot.retiring = "hung while freeing a decoder"
                        process.kill()
                        process.join(timeout=5.0)
                    elif slot.starting is not None and now > slot.starting:
                        slot.retiring = f"did not start within {_START_TIMEOUT:g} s"
                        process.kill()
                        process.join(timeout=5.0)
                    if process.sentinel in ready or not process.is_alive():
                        self._on_death(slot, resolved)
                self._fill()
                self._dispatch(resolved)
            _resolve(resolved)

    def _waitables(self) -> tuple[list[Any], float]:
        """What the manager waits on, and the earliest deadline."""
        waitables: list[Any] = [self._wake_r]
        deadline = math.inf
        for slot in self._slots:
            if slot.process is None:
                if not self._closing:
                    deadline = min(deadline, self._restart_at)
                continue
            waitables.append(slot.process.sentinel)
            due = slot.starting
            if slot.current is not None:
                due = slot.current.deadline
            elif slot.cleanup_deadline is not None:
                due = slot.cleanup_deadline
            if due is not None:
                waitables.append(slot.conn)
                deadline = min(deadline, due)
        return waitables, deadline

    def _idle(self) -> bool:
        return not self._pending and all(s.current is None and not s.queue for s in self._slots)

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def _dispatch(self, resolved: list[_Resolution]) -> None:
        if self._unavailable is not None:
            for task in self._pending:
                error = DecodeUnavailable(f"{task.label}: {self._unavailable}")
                resolved.append((task.future, False, error))
            self._pending.clear()
        for slot in self._slots:
            while (
                slot.current is None
                and slot.cleanup_deadline is None
                and slot.starting is None
                and slot.process is not None
                and slot.conn is not None
            ):
                if slot.queue:
                    task = slot.queue.popleft()
                elif self._pending:
                    task = self._pending.popleft()
                else:
                    break
                if not task.future.set_running_or_notify_cancel():
                    continue  # cancelled while queued
                message = (task.kind, task.id, task.cpu, *task.header)
                slot.current = task
                task.deadline = time.monotonic() + task.timeout
                try:
                    slot.conn.send(message)
                    if task.payload is not None:
                        slot.conn.send_bytes(task.payload)
                except (OSError, EOFError, ValueError):
                    break  # the child is gone: its sentinel reports it
                task.payload = None  # sent: let the bytes go

    def _receive(self, slot: _Slot, resolved: list[_Resolution]) -> None:
        task = slot.current
        assert slot.conn is not None
        try:
            message = receive_reply(slot.conn)
            if message[0] == "hello" and slot.starting is not None:
                self._started(slot, str(message[1])[:300], bool(message[2]))
                return
            if message[0] == "ready" or task is None:
                slot.cleanup_deadline = None
                return
            if message[0] == "ok":
                _, task_id, meta, retiring = message
                count, side = (len(meta[1]), meta[2]) if meta is not None else (0, 0)
                buffer = receive_pictures(slot.conn, count, side)
                value: Any = build_value(task.kind, meta, buffer)
                ok = True
            else:
                _, task_id, name, text, retiring = message
                value = error_from(name, text)
                ok = False
        except (EOFError, OSError):
            return  # died mid-reply: the sentinel reports it
        except Exception as e:  # a reply out of the protocol: the process is not trusted now
            slot.retiring = f"sent a reply the pool refuses ({type(e).__name__}: {e})"[:300]
            assert slot.process is not None
            slot.process.kill()
            slot.process.join(timeout=5.0)
            self._on_death(slot, resolved)  # now: nothing more it sent is read
            return
        if task_id != task.id:  # cannot happen with one task in flight per child
            value, ok = DecodeCrash(f"{task.label}: decode process sent a stray reply"), False
        slot.current = None
        slot.cleanup_deadline = time.monotonic() + _CLEANUP
        slot.tasks_done += 1
        resolved.append((task.future, ok, value))
        if retiring:  # the child ran out of memory and exits: its streams go with it
            slot.retiring = "ran out of memory"
            self._on_death(slot, resolved)
        elif (
            self._max_tasks is not None
            and slot.tasks_done >= self._max_tasks
            and not slot.streams
            and not slot.queue
            and not self._closing
        ):
            self._stop(slot)
            self._start(slot)

    def _on_death(self, slot: _Slot, resolved: list[_Resolution]) -> None:
        process = slot.process
        assert process is not None
        process.join(timeout=1.0)
        if process.is_alive():  # a retiring child that does not leave
            process.kill()
            process.join(timeout=5.0)
        pid, code = process.pid, process.exitcode
        timed_out = slot.kill_reason == "timeout"
        how = how_it_ended(code, retiring=slot.retiring, timed_out=timed_out)
        never_started = slot.starting is not None
        task = slot.current
        if task is not None:
            limits = (task.timeout - _GRACE, _GRACE, task.cpu)
            error = call_error(task.label, pid, code, how, timed_out=timed_out, limits=limits)
            resolved.append((task.future, False, error))
        if never_started and not self._closing:
            self._start_failed(f"decode process {pid} {how} before it was ready")
        lost_error: type[DecodeError] = DecodeUnavailable if never_started else DecodeCrash
        for stream_id in sorted(slot.streams):
            why = (
                f"stream {stream_id!r}: its decode process {pid} {how}; the decoder state is "
                "lost: reopen the stream (from a keyframe)"
            )
            self._lost[stream_id] = why
            self._streams.pop(stream_id, None)
        for queued in slot.queue:
            sid = queued.stream_id or ""
            message = self._lost.get(sid, f"stream {sid!r}: decode process {pid} {how}")
            resolved.append((queued.future, False, lost_error(message)))
        slot.streams.clear()
        slot.queue.clear()
        slot.current = None
        slot.cleanup_deadline = None
        slot.starting = None
        conn = slot.conn
        slot.process = slot.conn = None
        if conn is not None:
            conn.close()
        process.close()
        # the manager's _fill starts the next child (after a backoff, when they keep failing)


def _resolve(resolved: list[_Resolution]) -> None:
    for future, ok, value in resolved:
        if future.done():
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)
