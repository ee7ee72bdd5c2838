"""The worker's embeddings topic and the store sink on the real embedded broker (Tansu).

One module-wide run: a generated video (a red triangle from 4 s to 8 s) produced as two
streams, a worker with ``store_embeddings`` on, then ``clipguard store sink`` processes: the
first killed with SIGKILL once it has written a file, the second run to the end. The store
must hold every scored frame exactly once after deduplication on ``frame_id``, and a backtest
with the worker's policies must find exactly the incidents the worker published.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest
import streaming
from streaming import read_topic, red_triangle_shots, wait_for, worker_thread

from consumers.broker import EmbeddedBroker, default_topics
from consumers.produce import produce_file
from pipeline.demo.video import write_video
from pipeline.models import DEMO_MODEL, load_clip
from pipeline.policies import load_policies
from pipeline.policies.bundled import DEMO_POLICIES
from pipeline.policies.compile import PolicyCompiler
from pipeline.store import FrameFilter, backtest, open_store
from pipeline.store.records import KIND_HEADER, read_frames_value

pytestmark = [
    pytest.mark.filterwarnings(r"ignore:(read_text|open_text) is deprecated:DeprecationWarning"),
    pytest.mark.timeout(300),
]

ROOT = Path(__file__).resolve().parent.parent
CLIPGUARD = Path(sys.executable).parent / "clipguard"
STREAMS = ("cam-a", "cam-b")


@dataclass
class Run:
    bootstrap: str
    store: Path
    scores: list[dict]
    flags: list[dict]
    embeddings: list[streaming.Record]
    killed_after_files: int
    sink_log: str


def _sink(bootstrap: str, store: Path, log: IO[bytes], *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            str(CLIPGUARD),
            "store",
            "sink",
            "--store",
            str(store),
            "--bootstrap-servers",
            bootstrap,
            "--batch-rows",
            "10",
            "--max-wait",
            "0.3",
            *extra,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )


def _files(store: Path) -> list[Path]:
    return sorted(store.glob("model=*/date=*/*.parquet"))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    base = tmp_path_factory.mktemp("sink")
    video = write_video(base / "red.mp4", red_triangle_shots())
    store, log = base / "store", base / "sink.log"
    with EmbeddedBroker() as broker:
        topics = default_topics()
        topics["clipguard.embeddings"] = 2  # two sink partitions, two file name ranges
        broker.create_topics(topics)
        produced = sum(produce_file(broker.bootstrap, video, stream_id=s) for s in STREAMS)
        s = streaming.settings(broker.bootstrap, store_embeddings=True)
        with worker_thread(s) as worker:
            wait_for(lambda: worker.segments_done >= produced, 180, "every segment handled")
        scores = [r.json() for r in read_topic(broker.bootstrap, "clipguard.scores")]
        flags = [r.json() for r in read_topic(broker.bootstrap, "clipguard.flags")]
        embeddings = read_topic(broker.bootstrap, "clipguard.embeddings")
        with log.open("wb") as out:
            # the first sink dies by SIGKILL as soon as it has put a file in place
            first = _sink(broker.bootstrap, store, out)
            try:
                wait_for(lambda: bool(_files(store)) or first.poll() is not None, 60, "a file")
            finally:
                first.kill()
                first.wait(30)
            killed_after = len(_files(store))
            second = _sink(broker.bootstrap, store, out, "--idle-exit", "4")
            assert second.wait(120) == 0
        yield Run(broker.bootstrap, store, scores, flags, embeddings, killed_after, log.read_text())


def test_the_worker_publishes_one_arrow_record_per_segment_and_each_policy_set(run: Run) -> None:
    kinds = [r.headers.get(KIND_HEADER) for r in run.embeddings]
    assert kinds.count(b"policy-set") == 2  # one set, sent to both partitions
    frames = [
        read_frames_value(r.value)
        for r in run.embeddings
        if r.headers.get(KIND_HEADER) == b"frames"
    ]
    assert sum(t.num_rows for t in frames) == len(run.scores)
    for r in run.embeddings:
        if r.headers.get(KIND_HEADER) == b"frames":
            assert r.key.decode() in STREAMS
    table = frames[0]
    assert set(table.column("model").to_pylist()) == {DEMO_MODEL}
    assert table.column("thumbnail").null_count == 0
    assert min(table.column("segment_offset").to_pylist()) >= 0
    # storing, the worker hashes every sampled frame (no hash policy in force): the score
    # records carry no PDQ, the stored frames do
    assert all(t.column("pdq").null_count == 0 for t in frames)
    assert all(s.get("pdq") is None for s in run.scores)


def test_after_a_kill_9_every_frame_is_stored_exactly_once_after_dedup(run: Run) -> None:
    assert run.killed_after_files >= 1, run.sink_log
    table = open_store(run.store).frames(
        columns=("frame_id", "stream_id", "seq", "frame_index", "tile", "ts")
    )
    ids = table.column("frame_id").to_pylist()
    places = {
        (r["stream_id"], r["seq"], r["frame_index"], r["tile"])
        for r in table.select(["stream_id", "seq", "frame_index", "tile"]).to_pylist()
    }
    expected = {(s["stream_id"], s["seq"], s["frame_index"], s["tile"]) for s in run.scores}
    assert places == expected  # none missing, none invented
    stored = open_store(run.store).frames(columns=("pdq", "pdq_quality"))
    assert stored.column("pdq").null_count == 0 and stored.column("pdq_quality").null_count == 0
    assert len(set(ids)) == len(expected)  # one id per frame: duplicates share it
    names = [f.stem for f in _files(run.store)]
    assert all(n.startswith(("p0000-", "p0001-")) for n in names)
    assert (run.store / "_policy_sets").is_dir() and any((run.store / "_policy_sets").iterdir())


def test_a_backtest_with_the_workers_policies_finds_exactly_its_incidents(run: Run) -> None:
    model = load_clip(DEMO_MODEL)
    policies = PolicyCompiler(model).compile(load_policies([DEMO_POLICIES]))
    result = backtest(
        policies,
        open_store(run.store),
        model=model.name,
        weights_sha256=model.fingerprint(),
        flt=FrameFilter(),
    )
    published = {
        (f["event_id"], f["stream_id"], f["start_ts"], f["end_ts"])
        for f in run.flags
        if f["state"] == "closed"
    }
    assert {f[1] for f in published} == set(STREAMS)
    assert {(i.event_id, i.stream_id, i.start_ts, i.end_ts) for i in result.incidents} == published
    assert not result.added and not result.removed and not result.changed
    assert result.frames == len({(s["stream_id"], s["ts"]) for s in run.scores})
    assert json.loads(json.dumps(result.to_json()))["summary"]["added"] == 0


def test_publish_sends_the_incidents_as_retro_flags_with_the_live_event_ids(
    run: Run, tmp_path: Path
) -> None:
    argv = [
        str(CLIPGUARD),
        "--log-level",
        "ERROR",
        "policy",
        "backtest",
        str(DEMO_POLICIES),
        "--store",
        str(run.store),
        "--out",
        str(tmp_path),
        "--publish",
        "--bootstrap-servers",
        run.bootstrap,
    ]
    for _ in range(2):  # published twice: the same event ids again
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert done.returncode == 0, done.stderr
        assert "published 2 retro flag events" in done.stdout
    flags = [r.json() for r in read_topic(run.bootstrap, "clipguard.flags")]
    retro = [f for f in flags if f["retro"]]
    live = {f["event_id"]: f for f in flags if not f["retro"] and f["state"] == "closed"}
    assert len(retro) == 4 and {f["event_id"] for f in retro} == set(live)
    for f in retro:
        same = live[f["event_id"]]
        assert f["state"] == "closed" and f["policy_version"] == same["policy_version"]
        assert (f["start_ts"], f["end_ts"]) == (same["start_ts"], same["end_ts"])


def test_a_bad_record_is_skipped_and_a_second_group_reads_everything(
    run: Run, tmp_path: Path
) -> None:
    from kafka import KafkaProducer

    from consumers.sink import StoreSink, file_name
    from pipeline.store import StoreWriter

    producer = KafkaProducer(bootstrap_servers=run.bootstrap)
    producer.send(
        "clipguard.embeddings", b"garbage", key=b"cam-x", headers=[(KIND_HEADER, b"frames")]
    ).get(30)
    producer.close()
    sink = StoreSink(
        StoreWriter(tmp_path / "store"),
        bootstrap_servers=run.bootstrap,
        group_id="another-sink",
        batch_rows=1000,
        max_wait_s=0.5,
    )
    stats = sink.run(idle_s=3.0, timeout=90)
    assert stats.skipped == 1 and stats.frames == len(run.scores) and stats.snapshots == 1
    names = {f.stem for f in _files(tmp_path / "store")}
    assert all(n.startswith(("p0000-", "p0001-")) for n in names)
    assert file_name(3, 1200, 1279) == "p0003-00000000000000001200-00000000000000001279"
