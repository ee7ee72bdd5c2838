"""Start-up checks of the stream worker: the brokers answer, the topics it needs exist."""

from __future__ import annotations

import socket
import time

from kafka import KafkaConsumer

from consumers.settings import WorkerSettings
from pipeline.errors import ClipguardError

__all__ = ["WorkerError", "check_topics", "reach"]


class WorkerError(ClipguardError, RuntimeError):
    """The worker cannot start or keep running (broker unreachable, topics missing...)."""


def reach(servers: str, timeout: float) -> None:
    """Wait until one of the bootstrap servers accepts a TCP connection, or raise
    :class:`WorkerError` after ``timeout`` seconds (before any Kafka client exists: a client
    that cannot bootstrap leaves its sockets behind)."""
    deadline = time.monotonic() + timeout
    last: OSError | None = None
    while True:
        for server in servers.split(","):
            host, _, port = server.rpartition(":")
            left = deadline - time.monotonic()
            try:
                with socket.create_connection(
                    (host.strip("[]"), int(port)), max(0.1, min(2, left))
                ):
                    return
            except OSError as e:
                last = e
        if time.monotonic() >= deadline:
            raise WorkerError(f"cannot connect to Kafka at {servers}: {last} (for {timeout:g} s)")
        time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))


def check_topics(s: WorkerSettings, consumer: KafkaConsumer, topics: set[str]) -> None:
    """:class:`WorkerError` when a topic the worker needs is missing, or the state topic has
    fewer partitions than the segments topic."""
    needed = [s.topics.segments, s.topics.scores, s.topics.flags, s.topics.dlq]
    if s.store_embeddings:
        needed.append(s.topics.embeddings)
    if s.checkpoint_state:
        needed.append(s.topics.state)
    missing = [t for t in needed if t not in topics]
    if missing:
        raise WorkerError(
            f"topics missing on {s.bootstrap_servers}: {', '.join(missing)} (create them, "
            "or run `clipguard broker` for a local broker with every topic)"
        )
    if s.checkpoint_state:
        have = len(consumer.partitions_for_topic(s.topics.state) or ())
        need = len(consumer.partitions_for_topic(s.topics.segments) or ())
        if have < need:
            raise WorkerError(
                f"topic {s.topics.state} has {have} partitions; it needs at least as many "
                f"as {s.topics.segments} ({need})"
            )
