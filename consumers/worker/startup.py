"""Start-up of the stream worker: the brokers answer, the topics it needs exist, the image
encoder the settings ask for and its threads."""

from __future__ import annotations

import os
import socket
import time
from typing import TYPE_CHECKING

from kafka import KafkaConsumer

from consumers.settings import WorkerSettings
from pipeline.errors import ClipguardError

if TYPE_CHECKING:
    from pipeline.models.base import ImageTextModel
    from pipeline.models.encoders import ImageEncoder
    from pipeline.policies.snapshot import PolicySet

__all__ = ["WorkerError", "check_topics", "default_encoder", "encoder_threads", "reach"]


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


def encoder_threads(settings: WorkerSettings) -> int:
    """CPU threads for the encoder: ``encoder_threads``, or (0) the cores the decode
    processes leave, at least one. ``clipguard worker`` applies it to its process."""
    if settings.encoder_threads:
        return settings.encoder_threads
    return max(1, (os.cpu_count() or 1) - settings.decode.processes)


def default_encoder(
    s: WorkerSettings, policies: PolicySet, model: ImageTextModel, batch_size: int
) -> ImageEncoder:
    """The image encoder the settings ask for: ``precision`` (auto: the fastest that passes
    the accuracy guard, with the policies' image examples as regressions)."""
    from pipeline.models.encoders import load_encoder
    from pipeline.models.guard import GuardSettings
    from pipeline.policies.guard import regression_set

    examples = regression_set(policies, model.input_resolution)
    return load_encoder(
        model,
        device=s.resolved_device(),
        precision=s.precision,
        threads=encoder_threads(s),
        batch_size=batch_size,
        guard=GuardSettings(min_mean_cosine=s.guard_min_mean_cosine, extra_images=s.guard_images),
        regressions=[examples] if examples is not None else [],
    )
