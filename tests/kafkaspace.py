"""A test's own topics and consumer group on the session's one embedded broker.

One Tansu broker serves the whole test session (the ``broker`` fixture in tests/conftest.py,
started when a test first asks for it). Each test that talks to Kafka takes the ``kafka``
fixture: a :class:`KafkaSpace` whose topic names carry a prefix of that test's own and whose
consumer group is its own, so a test never reads another's records or joins another's group,
whatever the order the tests run in. Module-wide runs take a space from the session's
``kafka_spaces`` factory the same way.

::

    def test_something(kafka: KafkaSpace) -> None:
        kafka.create()                                   # every topic, 4 segment partitions
        produce_file(kafka.bootstrap, video, stream_id="cam", topic=kafka.names.segments)
        with worker_thread(streaming.settings(kafka)) as worker: ...
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from consumers.broker import EmbeddedBroker, default_topics
from consumers.settings import TopicNames

__all__ = ["KafkaSpace"]

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_LABEL_CHARS = 60  # of the test's name in the prefix (a topic name may have 249 characters)


@dataclass(frozen=True)
class KafkaSpace:
    """Topic names under ``prefix`` and a consumer group, on ``broker``.

    ``names`` are the default topic names (``clipguard.segments``, ...) with the prefix in
    front; :meth:`create` creates them. :meth:`settings` and :meth:`env` hand the names and the
    group to a worker, in a thread or as a process."""

    broker: EmbeddedBroker
    prefix: str
    names: TopicNames
    group_id: str

    @classmethod
    def on(cls, broker: EmbeddedBroker, number: int, label: str) -> KafkaSpace:
        """The space numbered ``number`` (unique in the session), named after ``label``."""
        prefix = f"t{number:03d}-{_UNSAFE.sub('-', label)[:_LABEL_CHARS].strip('-')}."
        defaults = TopicNames().model_dump()
        names = TopicNames(**{field: prefix + name for field, name in defaults.items()})
        return cls(broker, prefix, names, f"{prefix}workers")

    @property
    def bootstrap(self) -> str:
        return self.broker.bootstrap

    @property
    def jobs_group_id(self) -> str:
        """The consumer group of the workers' scan jobs (``group_id`` + ``-jobs``)."""
        return f"{self.group_id}-jobs"

    def topic(self, name: str) -> str:
        """Another topic name of this test's own."""
        return self.prefix + name

    def create(
        self,
        *,
        segment_partitions: int = 4,
        partitions: int = 1,
        only: Iterable[str] | None = None,
    ) -> KafkaSpace:
        """Create this space's topics: ``segment_partitions`` for the segments and state topics,
        ``partitions`` for the others (the embedded broker's defaults). ``only`` names the
        :class:`~consumers.settings.TopicNames` fields to create (default: all)."""
        counts = default_topics(segment_partitions=segment_partitions, partitions=partitions)
        by_default = TopicNames().model_dump()
        fields = set(by_default) if only is None else set(only)
        ours = self.names.model_dump()
        self.broker.create_topics({ours[f]: counts[by_default[f]] for f in sorted(fields)})
        return self

    def settings(self) -> dict[str, Any]:
        """Worker setting overrides (``load_settings(overrides=...)``) for these names and group."""
        overrides: dict[str, Any] = {f"topics.{f}": n for f, n in self.names.model_dump().items()}
        overrides["group_id"] = self.group_id
        return overrides

    def env(self) -> dict[str, str]:
        """The same as ``CLIPGUARD_`` environment variables, for a ``clipguard`` process."""
        env = {f"CLIPGUARD_TOPICS__{f.upper()}": n for f, n in self.names.model_dump().items()}
        env["CLIPGUARD_GROUP_ID"] = self.group_id
        return env
