"""Hostile records on the real embedded broker (Tansu): records the Kafka client cannot read,
dead letters too large to publish, headers that lie. Every test runs a real worker with the
demo model on its own set of topics of the session's broker (tests/conftest.py), and reads the
topics back.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import streaming
from streaming import Record, read_topic, wait_for

from consumers.broker import EmbeddedBroker
from consumers.produce import Segment, segment_video
from consumers.worker import Worker
from consumers.worker.letters import DLQ_HEADERS_DROPPED, DLQ_VALUE_DROPPED
from pipeline.demo.video import write_video
from pipeline.events import (
    DLQ_ERROR_CLASS,
    DLQ_ORIGINAL_OFFSET,
    DLQ_ORIGINAL_PARTITION,
)

pytestmark = [
    pytest.mark.filterwarnings(r"ignore:(read_text|open_text) is deprecated:DeprecationWarning"),
    pytest.mark.timeout(300),
]

_names = itertools.count()


class RawHeaderKey(str):
    """A header key that kafka-python writes as bytes that are not UTF-8 (what a producer in
    another language can send): the record is real, on a real broker, and unreadable."""

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return b"\xff\xfe" + str(self).encode()


@pytest.fixture(scope="module")
def segments(tmp_path_factory: pytest.TempPathFactory) -> list[Segment]:
    video = write_video(
        tmp_path_factory.mktemp("video") / "red.mp4", streaming.red_triangle_shots()
    )
    return list(segment_video(video, segment_seconds=2.0))


class Topics:
    """A fresh set of the worker's topics (one partition of segments) on the shared broker."""

    def __init__(self, broker: EmbeddedBroker, partitions: int = 1) -> None:
        n = next(_names)
        self.bootstrap = broker.bootstrap
        self.names = {
            key: f"t{n}.{key}"
            for key in ("segments", "scores", "flags", "dlq", "state", "jobs", "job_status")
        }
        broker.create_topics(
            {
                name: partitions if key in ("segments", "state") else 1
                for key, name in self.names.items()
            }
        )
        self.group = f"group-{n}"

    def settings(self, **overrides: Any) -> Any:
        topics = {f"topics.{key}": name for key, name in self.names.items()}
        base: dict[str, Any] = {"group_id": self.group, "jobs_enabled": False, **topics}
        return streaming.settings(self.bootstrap, **{**base, **overrides})

    def send(
        self, records: list[tuple[bytes | None, bytes, Any]], topic: str = "segments"
    ) -> list[int]:
        """Each record in its own request (so one unreadable record spoils no other); their
        offsets."""
        from kafka import KafkaProducer

        producer = KafkaProducer(
            bootstrap_servers=self.bootstrap, acks="all", max_request_size=8 << 20
        )
        try:
            offsets = []
            for key, value, headers in records:
                future = producer.send(self.names[topic], key=key, value=value, headers=headers)
                producer.flush()
                offsets.append(future.get(timeout=30).offset)
            return offsets
        finally:
            producer.close()

    def read(self, key: str, **kw: Any) -> list[Record]:
        return read_topic(self.bootstrap, self.names[key], **kw)

    def committed(self, key: str = "segments", group: str | None = None) -> int | None:
        from kafka import KafkaConsumer, TopicPartition

        consumer = KafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=group or self.group,
            enable_auto_commit=False,
        )
        try:
            offset: int | None = consumer.committed(TopicPartition(self.names[key], 0))
            return offset
        finally:
            consumer.close(autocommit=False)


def headers(stream: str, seq: int, start: float, ctype: str = "video/mp2t") -> Any:
    return [
        ("stream-id", stream.encode()),
        ("seq", str(seq).encode()),
        ("content-type", ctype.encode()),
        ("start-ts", repr(start).encode()),
    ]


def good(stream: str, seg: Segment) -> tuple[bytes, bytes, Any]:
    return stream.encode(), seg.data, headers(stream, seg.seq, seg.start_ts)


def run_worker(topics: Topics, count: int, **overrides: Any) -> Worker:
    worker = Worker(topics.settings(**overrides))
    assert worker.run(count=count, timeout=120) == 0
    assert worker.segments_done >= count, "the worker stopped before every record was handled"
    return worker


# ------------------------------------------------------------------------------ unreadable


def test_an_unreadable_record_is_dead_lettered_and_committed_past(
    broker: EmbeddedBroker, segments: list[Segment]
) -> None:
    topics = Topics(broker)
    poison = (b"cam-p", segments[1].data, [(RawHeaderKey("x"), b"1"), *headers("cam-p", 1, 2.0)])
    offsets = topics.send([good("cam-p", segments[0]), poison, poison, good("cam-p", segments[1])])
    worker = run_worker(topics, count=4)
    metrics = worker.metrics.exposition().decode()
    dlq = topics.read("dlq")
    assert sorted(int(r.headers[DLQ_ORIGINAL_OFFSET]) for r in dlq) == offsets[1:3]
    for letter in dlq:
        assert letter.headers[DLQ_ERROR_CLASS] == b"UnreadableRecord"
        assert letter.headers[DLQ_ORIGINAL_PARTITION] == b"0" and letter.value == b""
    # the stream's good segments on both sides were scored, and the partition moved on
    assert {r.json()["seq"] for r in topics.read("scores")} == {0, 1}
    assert topics.committed() == offsets[-1] + 1
    assert 'clipguard_dlq_total{reason="UnreadableRecord"} 2.0' in metrics


def test_an_unreadable_job_fails_and_a_dead_job_runner_makes_the_worker_unready(
    broker: EmbeddedBroker,
) -> None:
    topics = Topics(broker)
    topics.send([(b"job-x", b"{}", [(RawHeaderKey("x"), b"1")])], topic="jobs")
    s = topics.settings(
        jobs_enabled=True, metrics_port=streaming.free_port(), **{"jobs.allowed_roots": ["/srv"]}
    )
    with streaming.worker_thread(s) as worker:
        statuses = topics.read("job_status", until=lambda recs: len(recs) >= 1)
        wait_for(lambda: topics.committed("jobs", topics.group + "-jobs") == 1, 30, "commit")
        assert statuses[0].json()["error_class"] == "UnreadableRecord"
        wait_for(lambda: worker.ready, 30, "ready")
        url = f"http://127.0.0.1:{s.metrics_port}"
        assert _status(f"{url}/readyz") == 200
        jobs = worker._jobs
        assert jobs is not None and not jobs.failed
        # jobs decode in processes of their own: live segments never wait behind a job
        assert worker._pool is not None and jobs.pool is not worker._pool
        assert jobs.pool.processes == 1 and not set(jobs.pool.pids()) & set(worker._pool.pids())
        jobs._consumer.close(autocommit=False)  # the runner's next poll fails: it dies
        wait_for(lambda: jobs.failed, 30, "the job runner to die")
        assert _status(f"{url}/readyz") == 503
        assert "clipguard_job_runner_failures_total 1.0" in worker.metrics.exposition().decode()


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


# ------------------------------------------------------------------------------ dead letters


def test_dead_letters_too_large_with_their_headers_are_trimmed_and_committed(
    broker: EmbeddedBroker,
) -> None:
    topics = Topics(broker)
    garbage = bytes(range(256)) * 800  # 200 KiB that is no MPEG-TS
    big = ("x-big", b"h" * 900_000)
    huge = ("x-big", b"h" * 1_500_000)
    offsets = topics.send(
        [
            (b"cam-l", garbage, [big, *headers("cam-l", 0, 0.0)]),
            (b"cam-l", garbage, [huge, *headers("cam-l", 1, 2.0)]),
        ]
    )
    run_worker(topics, count=2, max_request_size=1 << 20)
    letters = {int(r.headers[DLQ_ORIGINAL_OFFSET]): r for r in topics.read("dlq")}
    assert sorted(letters) == offsets
    first, second = letters[offsets[0]], letters[offsets[1]]
    assert first.value == b"" and first.headers[DLQ_VALUE_DROPPED] == str(len(garbage)).encode()
    assert first.headers["x-big"] == big[1]  # what fits is kept
    assert "x-big" not in second.headers and second.headers[DLQ_HEADERS_DROPPED].startswith(b"5/")
    assert second.headers[DLQ_ERROR_CLASS] == b"InvalidMedia" and second.key == b"cam-l"
    assert topics.committed() == offsets[-1] + 1


# ------------------------------------------------------------------------------ job references


def test_jobs_are_off_unless_something_is_allowed(broker: EmbeddedBroker) -> None:
    topics = Topics(broker)
    with streaming.worker_thread(topics.settings(jobs_enabled=True)) as worker:
        wait_for(lambda: worker.ready, 60, "ready")
        assert worker._jobs is None  # no allowed roots or URL hosts: no job runner


def test_job_references_reach_only_allowed_files_and_public_addresses(
    broker: EmbeddedBroker, tmp_path: Any, segments: list[Segment]
) -> None:
    from pipeline.events import JobStatus

    root, secret = tmp_path / "library", tmp_path / "secret"
    root.mkdir()
    secret.mkdir()
    (root / "clip.ts").write_bytes(segments[0].data)
    (secret / "weights.ts").write_bytes(segments[0].data)
    (root / "out.ts").symlink_to(secret / "weights.ts")
    topics = Topics(broker)
    port = streaming.free_port()
    jobs = {
        # a raw bitstream declared by the job: any bytes would be read as video
        "passwd-h264": ({"uri": "/etc/passwd", "content_type": "video/h264"}, "InvalidJob"),
        "passwd": ({"uri": "/etc/passwd", "content_type": "video/mp4"}, "InputRefused"),
        "outside": ({"uri": str(secret / "weights.ts")}, "InputRefused"),
        "climb": ({"uri": f"{root}/../secret/weights.ts"}, "InputRefused"),
        "symlink": ({"uri": str(root / "out.ts")}, "InputRefused"),
        "missing": ({"uri": str(root / "missing.ts")}, "MediaUnavailable"),
        # the worker's own metrics server, and a closed port: the same answer
        "metrics": ({"uri": f"http://127.0.0.1:{port}/metrics.mp4"}, "InputRefused"),
        "closed": ({"uri": "http://127.0.0.1:1/clip.mp4"}, "InputRefused"),
        "good": ({"uri": str(root / "clip.ts")}, None),
    }
    topics.send(
        [(k.encode(), json.dumps(v).encode(), []) for k, (v, _) in jobs.items()], topic="jobs"
    )
    s = topics.settings(
        jobs_enabled=True,
        metrics_port=port,
        **{"jobs.allowed_roots": [str(root)], "jobs.allowed_url_hosts": ["127.0.0.1"]},
    )

    def finals(recs: list[Record]) -> dict[str, JobStatus]:
        out = {}
        for r in recs:
            status = JobStatus.model_validate_json(r.value or b"")
            if status.state in ("done", "failed"):
                out[status.job_id] = status
        return out

    with streaming.worker_thread(s):
        recs = topics.read("job_status", until=lambda r: len(finals(r)) == len(jobs))
    got = finals(recs)
    assert got["good"].state == "done" and got["good"].frames_scored
    for job_id, (_, error_class) in jobs.items():
        if error_class is None:
            continue
        status = got[job_id]
        assert (status.state, status.error_class) == ("failed", error_class), status
        reason = status.reason or ""
        if error_class != "InvalidJob":  # nothing of what the worker found: path, size, port
            assert "/" not in reason and str(port) not in reason and ":" not in reason, reason
    assert got["metrics"].reason == got["closed"].reason == got["passwd"].reason
    # nothing was scored but the allowed clip
    assert {r.json()["job_id"] for r in topics.read("scores")} == {"good"}


# ------------------------------------------------------------------------------ timestamps, headers


def test_a_far_future_start_ts_does_not_silence_a_stream(
    broker: EmbeddedBroker, segments: list[Segment]
) -> None:
    topics = Topics(broker)
    offsets = topics.send(
        [
            good("cam-t", segments[0]),
            (b"cam-t", segments[1].data, headers("cam-t", 1, 1e12)),  # far in the future
            good("cam-t", segments[2]),
            # lying headers: dead letters, each with its reason
            (b"cam-x", segments[0].data, headers("cam-y", 0, 0.0)),  # stream-id is not the key
            (b"cam-x", segments[0].data, headers("cam-x", -1, 0.0)),
            (
                b"cam-x",
                segments[0].data,
                [*(h for h in headers("cam-x", 0, 0.0) if h[0] != "seq"), ("seq", b"9" * 4000)],
            ),
        ]
    )
    worker = run_worker(topics, count=len(offsets))
    scores = [r.json() for r in topics.read("scores")]
    # segment 2's frames were scored in the stream's own time, after the reset
    assert {s["seq"] for s in scores if s["stream_id"] == "cam-t"} == {0, 1, 2}
    assert any(s["seq"] == 2 and s["ts"] < 100 for s in scores)
    metrics = worker.metrics.exposition().decode()
    assert "clipguard_stream_timeline_resets_total 2.0" in metrics
    letters = topics.read("dlq")
    assert sorted(int(r.headers[DLQ_ORIGINAL_OFFSET]) for r in letters) == offsets[3:]
    assert {r.headers[DLQ_ERROR_CLASS] for r in letters} == {b"HeaderError"}
    assert topics.committed() == offsets[-1] + 1


# ------------------------------------------------------------------------------ raw streams


def test_idle_raw_streams_close_and_raw_streams_are_capped(
    broker: EmbeddedBroker, tmp_path: Any
) -> None:
    from consumers.produce import raw_chunks

    video = write_video(tmp_path / "red.mp4", streaming.red_triangle_shots())
    chunks = list(raw_chunks(video, chunk_bytes=4096))[:3]

    def raw(stream: str, seq: int) -> tuple[bytes, bytes, Any]:
        hdrs = [
            ("stream-id", stream.encode()),
            ("seq", str(seq).encode()),
            ("content-type", b"video/h264"),
            ("fps", b"25.0"),
            ("start-ts", b"0.0"),
        ]
        return stream.encode(), chunks[seq].data, hdrs

    topics = Topics(broker)
    offsets = topics.send([raw("cam-r1", 0), raw("cam-r2", 0), raw("cam-r1", 1)])
    s = topics.settings(stream_idle_close_s=1.0, **{"decode.max_raw_streams": 1})
    with streaming.worker_thread(s) as worker:
        wait_for(lambda: topics.committed() == offsets[-1] + 1, 60, "the chunks committed")
        decoder, pool = worker._decoder, worker._pool
        assert pool is not None
        # the stream over the cap was dead-lettered, the first one kept its decoder
        (letter,) = topics.read("dlq", until=lambda r: len(r) >= 1)
        assert letter.headers[DLQ_ERROR_CLASS] == b"LimitExceeded" and letter.key == b"cam-r2"
        # idle: the raw decoder closes with the stream, in the worker and in its process
        wait_for(lambda: not decoder.is_raw_open("cam-r1"), 30, "the idle raw stream to close")
        wait_for(lambda: pool.stream_pid("cam-r1") is None, 30, "the decoder to go")
        wait_for(
            lambda: all(st.stream_id != "cam-r1" for st in worker.streams), 30, "stream forgotten"
        )


# ------------------------------------------------------------------------------ infrastructure


def test_a_job_meeting_an_infrastructure_error_is_retried_not_failed(
    broker: EmbeddedBroker, tmp_path: Any, segments: list[Segment]
) -> None:
    from consumers.jobs import JobRunner
    from pipeline.decode import DecodePool
    from pipeline.models import load_clip
    from pipeline.models.encoders import TorchImageEncoder
    from pipeline.policies.compile import PolicyCompiler
    from pipeline.policies.store import PolicyStore

    class FlakyEncoder(TorchImageEncoder):
        """The real demo encoder, out of memory on its first two batches (as a GPU can be)."""

        failures = 2

        def _encode(self, batch: Any) -> Any:
            if self.failures:
                self.failures -= 1
                raise RuntimeError("CUDA out of memory (simulated)")
            return super()._encode(batch)

    (tmp_path / "clip.ts").write_bytes(segments[0].data)
    topics = Topics(broker)
    topics.send([(b"job-oom", json.dumps({"uri": str(tmp_path / "clip.ts")}).encode(), [])], "jobs")
    s = topics.settings(**{"jobs.allowed_roots": [str(tmp_path)]})
    model = load_clip("clipguard-demo")
    encoder = FlakyEncoder(model, "fp32", batch_size=16)
    store = PolicyStore(list(s.policies), PolicyCompiler(model, cache_dir=tmp_path / "pc"))
    with DecodePool(1) as pool:
        runner = JobRunner(s, encoder=encoder, store=store, pool=pool)
        assert runner.connect()
        runner.start()
        troubled: list[bool] = []
        try:
            wait_for(
                lambda: troubled.append(runner.healthy) or runner.jobs_committed == 1, 90, "job"
            )
        finally:
            runner.stop()
    states = [r.json()["state"] for r in topics.read("job_status")]
    # never failed nor committed while the encoder failed; done once it worked again
    assert "failed" not in states and states[-1] == "done" and states.count("accepted") >= 2
    assert False in troubled and runner.healthy and encoder.failures == 0
    assert topics.committed("jobs", topics.group + "-jobs") == 1


def test_segments_whose_encoding_fails_wait_and_are_never_dead_lettered(
    broker: EmbeddedBroker, segments: list[Segment]
) -> None:
    from pipeline.models.encoders import TorchImageEncoder

    class FlakyEncoder(TorchImageEncoder):
        """The real demo encoder, out of memory on its first four batches."""

        failures = 4

        def _encode(self, batch: Any) -> Any:
            if self.failures:
                self.failures -= 1
                raise RuntimeError("CUDA out of memory (simulated)")
            return super()._encode(batch)

    topics = Topics(broker)
    offsets = topics.send([good("cam-e", segments[0]), good("cam-e", segments[1])])
    made: list[FlakyEncoder] = []

    def make(model: Any, batch_size: int) -> FlakyEncoder:
        made.append(FlakyEncoder(model, "fp32", batch_size=batch_size))
        return made[-1]

    worker = Worker(topics.settings(retry_backoff_ms=100), encoder=make)
    assert worker.run(count=2, timeout=120) == 0
    metrics = worker.metrics.exposition().decode()
    assert topics.read("dlq") == []  # nothing lost to the fault
    assert {r.json()["seq"] for r in topics.read("scores")} == {0, 1}
    assert topics.committed() == offsets[-1] + 1 and made[0].failures == 0
    assert 'clipguard_retries_total{stage="encode"}' in metrics
    assert not worker._encode_retries.troubled  # encoding again: ready once more


def test_segments_that_find_no_decode_process_wait_and_are_never_dead_lettered(
    broker: EmbeddedBroker,
    segments: list[Segment],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A real fault of the machine: the interpreter decode processes start from disappears and
    the running ones die. That is no fault of the segments: they wait, uncommitted and not
    dead-lettered, the worker pauses and is not ready; once processes start again they are
    scored and committed."""
    python, real = tmp_path / "python", sys.executable
    python.symlink_to(real)
    monkeypatch.setattr(sys, "executable", str(python))  # what decode processes are started from
    topics = Topics(broker)
    first = topics.send([good("cam-u", segments[0])])
    s = topics.settings(retry_backoff_ms=100, metrics_port=streaming.free_port())
    with streaming.worker_thread(s) as worker:
        wait_for(lambda: topics.committed() == first[-1] + 1, 60, "the first segment")
        assert worker.ready
        pool = worker._pool
        assert pool is not None and pool.seccomp == "on"
        assert (
            'clipguard_decode_sandbox_info{seccomp="on"} 1.0'
            in worker.metrics.exposition().decode()
        )
        python.unlink()
        for pid in pool.pids():
            os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not pool.available, 30, "the pool to give up starting processes")
        later = topics.send([good("cam-u", segments[1]), good("cam-u", segments[2])])
        url = f"http://127.0.0.1:{s.metrics_port}"
        wait_for(lambda: not worker.ready, 30, "the worker to report not ready")
        assert _status(f"{url}/readyz") == 503
        time.sleep(3)  # a few retries, all failing
        metrics = worker.metrics.exposition().decode()
        assert 'clipguard_retries_total{stage="decode"}' in metrics
        assert topics.committed() == first[-1] + 1  # nothing committed past the waiting ones
        assert topics.read("dlq") == [] and worker.pauses >= 1
        python.symlink_to(real)  # the machine recovers
        wait_for(lambda: topics.committed() == later[-1] + 1, 90, "the waiting segments")
        wait_for(lambda: worker.ready, 30, "ready again")
    assert topics.read("dlq") == []  # nothing lost to the fault
    assert {r.json()["seq"] for r in topics.read("scores")} == {0, 1, 2}


def test_a_job_that_finds_no_decode_process_is_retried_not_failed(
    broker: EmbeddedBroker, tmp_path: Path, segments: list[Segment]
) -> None:
    from consumers.jobs import JobRunner
    from pipeline.decode import DecodePool
    from pipeline.models import load_clip
    from pipeline.models.encoders import TorchImageEncoder
    from pipeline.policies.compile import PolicyCompiler
    from pipeline.policies.store import PolicyStore

    (tmp_path / "clip.ts").write_bytes(segments[0].data)
    python = tmp_path / "python"
    python.symlink_to(sys.executable)
    topics = Topics(broker)
    s = topics.settings(**{"jobs.allowed_roots": [str(tmp_path)]})
    model = load_clip("clipguard-demo")
    store = PolicyStore(list(s.policies), PolicyCompiler(model, cache_dir=tmp_path / "pc"))
    with DecodePool(1, executable=str(python)) as pool:
        python.unlink()  # the interpreter is gone and the decode process dies: none can start
        for pid in pool.pids():
            os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not pool.available, 30, "the pool to give up starting processes")
        job = json.dumps({"uri": str(tmp_path / "clip.ts")}).encode()
        topics.send([(b"job-nodecoder", job, [])], "jobs")
        runner = JobRunner(
            s, encoder=TorchImageEncoder(model, "fp32", batch_size=16), store=store, pool=pool
        )
        assert runner.connect()
        runner.start()
        try:
            wait_for(lambda: not runner.healthy, 60, "the runner to report the fault")
            assert runner.jobs_committed == 0
            python.symlink_to(sys.executable)  # the machine recovers
            wait_for(lambda: runner.jobs_committed == 1, 120, "the job")
        finally:
            runner.stop()
    states = [r.json()["state"] for r in topics.read("job_status")]
    assert "failed" not in states and states[-1] == "done" and runner.healthy
