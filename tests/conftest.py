"""Shared test set-up: no test reaches the network for model files; one embedded Kafka broker
for the session, and topic names and a consumer group of its own for each test that uses it
(tests/kafkaspace.py)."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from kafkaspace import KafkaSpace

    from consumers.broker import EmbeddedBroker

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two pytest processes side by side (pytest-xdist): each keeps its torch
    # to one thread, or four threads spin on two cores. Subprocesses the tests start (workers,
    # the training script) set their own thread counts.
    os.environ.setdefault("OMP_NUM_THREADS", "1")

BROKER_START_S = 30.0  # the first test that asks waits this long at most, on a busy machine
# The longest test files, started first so that two pytest processes finish together (files
# are handed out whole, in collection order: ``--dist loadfile``). Order within a file is kept.
LONGEST_FIRST = (
    "test_worker.py",
    "test_hostile_records.py",
    "test_store_sink.py",
    "test_jobs.py",
    "test_encoders.py",
    "test_demo_model.py",
    "test_models.py",
    "test_deploy.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    """The session's embedded broker (Tansu, in memory), started when a test first asks for
    it and stopped at the end of the session. Tests use it through ``kafka`` / ``kafka_spaces``:
    topics of their own, never the default names."""
    from consumers.broker import EmbeddedBroker

    with EmbeddedBroker(start_timeout=BROKER_START_S) as b:
        yield b


@pytest.fixture(scope="session")
def kafka_spaces(broker: EmbeddedBroker) -> Callable[[str], KafkaSpace]:
    """Makes a new :class:`KafkaSpace` on the session's broker, named after its argument (a
    module-wide run passes its module's name)."""
    from kafkaspace import KafkaSpace

    numbers = itertools.count(1)
    return lambda label: KafkaSpace.on(broker, next(numbers), label)


@pytest.fixture
def kafka(kafka_spaces: Callable[[str], KafkaSpace], request: pytest.FixtureRequest) -> KafkaSpace:
    """This test's topic names and consumer group on the session's broker (not yet created:
    ``kafka.create()``)."""
    return kafka_spaces(request.node.name)


@pytest.fixture(scope="session")
def red_triangle_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 20 s demo video of ``streaming.red_triangle_shots`` (a red triangle from 4 s to 8 s),
    written once for the session; the worker and deployment tests stream it (read only)."""
    import streaming

    from pipeline.demo.video import write_video

    folder = tmp_path_factory.mktemp("red-triangle")
    return write_video(folder / "red.mp4", streaming.red_triangle_shots())


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """A headless Chromium (Debian's, driven by Playwright) for one test module's pages; the
    studio browser tests skip themselves where there is none."""
    from playwright.sync_api import sync_playwright

    from tests.studio_fixtures import CHROMIUM

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def policy_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """One compiled-policy cache for the session, never the user's (modules that compile
    policies take it with ``pytestmark = pytest.mark.usefixtures("policy_cache")``)."""
    monkeypatch.setenv("CLIPGUARD_POLICY_CACHE", str(tmp_path_factory.getbasetemp() / "pc"))


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """torch on one thread for a module: batch-1 CPU inference with several intra-op threads
    crawls when the cores are busy (measured: 0.75 s instead of 2 ms an image on 2 shared
    cores), and the 64 px demo model needs no more; more only fight the decoders."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
