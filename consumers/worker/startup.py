"""Start-up of the stream worker: the brokers answer, the topics it needs exist, the image
encoder the settings ask for and its threads, and the hash banks the settings name
(:class:`WorkerBanks`, which the policy watcher keeps fresh)."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from kafka import KafkaConsumer

from consumers.settings import WorkerSettings
from pipeline.errors import ClipguardError

if TYPE_CHECKING:
    from pipeline.decode.options import HashMode
    from pipeline.hashes.store import BankSnapshot, BankStore
    from pipeline.models.base import ImageTextModel
    from pipeline.models.encoders import ImageEncoder
    from pipeline.policies.snapshot import PolicySet
    from pipeline.policies.store import PolicyStore

__all__ = [
    "WorkerBanks",
    "WorkerError",
    "check_topics",
    "default_encoder",
    "encoder_threads",
    "reach",
]


_log = logging.getLogger(__name__)


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


class WorkerBanks:
    """The worker's hash banks: a :class:`~pipeline.hashes.store.BankStore` over ``paths``
    (None when the settings name none: hash policies are then an error at load), read by the
    decode, judge and job stages through :meth:`snapshot` and :meth:`names`; failed reloads
    are counted with ``on_errors(n)``. ``storing``: frames go to the frame store."""

    def __init__(
        self,
        paths: Sequence[Path],
        *,
        on_errors: Callable[[int], object] = lambda n: None,
        storing: bool = False,
    ) -> None:
        self.store: BankStore | None = None
        if paths:
            from pipeline.hashes.store import BankStore

            self.store = BankStore(list(paths))
        self._on_errors = on_errors
        self._errors_seen = 0
        self._storing = storing

    @classmethod
    def of(cls, s: WorkerSettings, *, on_errors: Callable[[int], object]) -> WorkerBanks:
        """The banks ``s`` names (``banks``), hashing while ``store_embeddings`` is on."""
        return cls(s.banks, on_errors=on_errors, storing=s.store_embeddings)

    def snapshot(self) -> BankSnapshot | None:
        """The banks in force (one consistent snapshot), or None without banks."""
        return self.store.snapshot if self.store is not None else None

    def names(self) -> frozenset[str]:
        """The names of the banks in force (what hash policies may name)."""
        return frozenset(self.store.snapshot.banks) if self.store is not None else frozenset()

    def watch(self, policies: PolicyStore, interval: float, stop: threading.Event) -> None:
        """The policy watcher thread: every ``interval`` seconds until ``stop``, re-read the
        banks, then the policies (a new policy may name a new bank)."""
        while not stop.wait(interval):
            try:
                self.refresh()
                policies.refresh()
            except Exception:  # the watcher must outlive any surprise in a reload
                _log.exception("policy or bank reload failed unexpectedly")

    def refresh(self) -> None:
        """Re-read the bank files that changed (the policy watcher calls it before the
        policies: a new policy may name a new bank)."""
        if self.store is None:
            return
        self.store.refresh()
        errors = self.store.reload_errors
        if errors > self._errors_seen:
            self._on_errors(errors - self._errors_seen)
            self._errors_seen = errors

    def hash_mode(self, policies: PolicySet) -> HashMode:
        """The frame hashes the decode stage takes under ``policies``; at least the PDQ
        hash while frames are stored (``storing``), so that a bank added later can be
        matched against them (a few ms a frame, see ``decode.hash_side``)."""
        from pipeline.policies.hashing import decode_hashes

        mode = decode_hashes(policies.hashes)
        return "pdq" if mode == "none" and self._storing else mode
