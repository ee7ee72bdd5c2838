"""Helpers for the stream worker's tests and benches: videos with known content, reading topics
back, and running workers in a thread or as `clipguard worker` processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kafkaspace import KafkaSpace

from consumers.settings import WorkerSettings, load_settings
from consumers.worker import Worker
from pipeline.demo import scenes
from pipeline.demo.video import Shot, demo_shots
from pipeline.policies.bundled import DEMO_POLICIES

REPO = Path(__file__).resolve().parent.parent
CLIPGUARD = Path(sys.executable).parent / "clipguard"


def red_triangle_shots() -> list[Shot]:
    """20 s: empty, red triangle (4-8 s), blue circle, purple triangle, empty. Only the
    red-triangle policy should flag, once."""
    demo = {s.name: s.scene for s in demo_shots()}
    plan = ["empty", "red triangle", "blue circle", "purple triangle", "empty"]
    return [Shot(4.0 * i, 4.0 * (i + 1), demo[name], name) for i, name in enumerate(plan)]


def scene(name: str) -> scenes.SceneSpec:
    return {s.name: s.scene for s in demo_shots()}[name]


@dataclass
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]

    def json(self) -> Any:
        assert self.value is not None
        return json.loads(self.value)


def read_topic(
    bootstrap: str,
    topic: str,
    *,
    until: Callable[[list[Record]], bool] | None = None,
    timeout: float = 60.0,
    idle: float = 1.5,
) -> list[Record]:
    """Every record of ``topic`` (all partitions) from the beginning. Stops when ``until``
    says so, or (without ``until``) when no record came for ``idle`` seconds."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        out: list[Record] = []
        deadline = time.monotonic() + timeout
        last = time.monotonic()
        while time.monotonic() < deadline:
            if until is not None and until(out):
                return out
            batch = consumer.poll(timeout_ms=200)
            for tp, records in batch.items():
                for r in records:
                    out.append(
                        Record(
                            tp.topic,
                            tp.partition,
                            r.offset,
                            r.key,
                            r.value,
                            {k: v for k, v in (r.headers or [])},
                        )
                    )
                    last = time.monotonic()
            if until is None and time.monotonic() - last > idle:
                return out
        if until is not None:
            raise AssertionError(f"{topic}: condition not met in {timeout} s ({len(out)} records)")
        return out
    finally:
        consumer.close(autocommit=False)


class TopicWatcher:
    """Keeps reading a topic from the beginning; :meth:`records` returns all read so far."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        from kafka import KafkaConsumer, TopicPartition

        self._consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        parts = self._consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        self._consumer.assign(tps)
        self._consumer.seek_to_beginning(*tps)
        self._records: list[Record] = []

    def records(self) -> list[Record]:
        for tp, batch in self._consumer.poll(timeout_ms=100).items():
            self._records += [
                Record(tp.topic, tp.partition, r.offset, r.key, r.value, dict(r.headers or []))
                for r in batch
            ]
        return self._records

    def count(self) -> int:
        return len(self.records())

    def close(self) -> None:
        self._consumer.close(autocommit=False)


def settings(kafka: KafkaSpace | str, **overrides: Any) -> WorkerSettings:
    """Worker settings for a test: ``kafka``'s topic names and consumer group (a bare bootstrap
    address: the default names and group, on a broker of the caller's own), the demo policies,
    no metrics server; ``overrides`` on top (dotted keys for nested settings)."""
    base: dict[str, Any] = {
        "metrics_port": 0,
        "policies": [str(DEMO_POLICIES)],
        "decode.processes": 2,
    }
    if isinstance(kafka, str):
        base["bootstrap_servers"] = kafka
    else:
        base.update(kafka.settings(), bootstrap_servers=kafka.bootstrap)
    base.update(overrides)
    return load_settings(overrides=base)


@contextmanager
def worker_thread(s: WorkerSettings) -> Iterator[Worker]:
    """A worker running in a thread; stopped (drained) on exit."""
    worker = Worker(s)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            worker.run()
        except BaseException as e:
            errors.append(e)

    thread = threading.Thread(target=run, name="test-worker", daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        worker.stop("test finished")
        thread.join(timeout=60)
        assert not thread.is_alive(), "the worker did not stop"
        if errors:
            raise errors[0]


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class WorkerProcess:
    """`clipguard worker` as a child process, its log in a file; ``kafka``'s topic names and
    consumer group reach it as ``CLIPGUARD_`` environment variables (a bare bootstrap address:
    the defaults)."""

    def __init__(
        self, kafka: KafkaSpace | str, log: Path, *args: str, env: dict[str, str] | None = None
    ):
        self.log_path = log
        self._log = log.open("wb")
        bootstrap = kafka if isinstance(kafka, str) else kafka.bootstrap
        space_env = {} if isinstance(kafka, str) else kafka.env()
        command = [
            str(CLIPGUARD),
            "worker",
            "--bootstrap-servers",
            bootstrap,
            "--policies",
            str(DEMO_POLICIES),
            *args,
        ]
        self.proc = subprocess.Popen(
            command,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "CLIPGUARD_METRICS_PORT": "0", **space_env, **(env or {})},
            cwd=REPO,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, text: str, timeout: float = 60.0) -> None:
        wait_for(lambda: text in self.log() or self.proc.poll() is not None, timeout, text)
        assert text in self.log(), f"worker exited ({self.proc.returncode}):\n{self.log()[-3000:]}"

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def terminate(self, timeout: float = 60.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.kill()
        self._log.close()


def free_port() -> int:
    """A loopback TCP port nothing listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def keys_by_partition(ids: Sequence[str], partitions: int) -> dict[int, list[str]]:
    """Which partition kafka-python's default partitioner puts each key on."""
    from kafka.partitioner.default import murmur2

    out: dict[int, list[str]] = {}
    for key in ids:
        out.setdefault((murmur2(key.encode()) & 0x7FFFFFFF) % partitions, []).append(key)
    return out
