"""The stream worker against the real embedded broker (Tansu), real codecs and the demo model.

Every test runs on topics and a consumer group of its own on the session's broker
(tests/conftest.py). One module-wide run (one worker) produces three streams of the same generated
video (a red triangle on screen from 4 s to 8 s): as MPEG-TS segments, as a raw H.264 byte
stream in odd-sized chunks, and as MPEG-TS segments mixed with broken records. The tests read
the output topics back. The process-level tests (kill -9, SIGTERM, two workers) run
`clipguard worker` processes.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import streaming
from kafkaspace import KafkaSpace
from streaming import Record, read_topic, wait_for, worker_thread

from consumers.produce import Segment, produce_file, segment_video
from pipeline.events import (
    DLQ_ATTEMPTS,
    DLQ_ERROR_CLASS,
    DLQ_ERROR_MESSAGE,
    DLQ_ORIGINAL_OFFSET,
    DLQ_ORIGINAL_PARTITION,
    DLQ_ORIGINAL_TOPIC,
    FlagEvent,
    ScoreRecord,
)
from pipeline.models.encoders import TorchImageEncoder
from pipeline.models.model import CLIP

pytestmark = [
    pytest.mark.filterwarnings(r"ignore:(read_text|open_text) is deprecated:DeprecationWarning"),
    pytest.mark.timeout(300),
]

SAMPLE_FPS = 2.0
VIDEO_SECONDS = 20.0
RED_START, RED_END = 4.0, 8.0
MAX_INPUT = 200_000  # the worker's decode.max_input_bytes in the module run
INFLIGHT = 4  # ... and its max_inflight_segments: the backlog of 40+ segments makes it pause


@pytest.fixture(scope="module")
def video(red_triangle_video: Path) -> Path:
    return red_triangle_video  # the session's (tests/conftest.py)


@pytest.fixture(scope="module")
def segments(video: Path) -> list[Segment]:
    return list(segment_video(video, segment_seconds=2.0))


def _headers(stream: str, seq: int, start: float | None, ctype: str | None = "video/mp2t") -> Any:
    h = [("stream-id", stream.encode()), ("seq", str(seq).encode())]
    if ctype is not None:
        h.append(("content-type", ctype.encode()))
    if start is not None:
        h.append(("start-ts", repr(start).encode()))
    return h


def _send(kafka: KafkaSpace, records: list[tuple[str, bytes, Any]]) -> list[tuple[int, int]]:
    """Send (key, value, headers) records in order to the segments topic; their (partition,
    offset)."""
    from kafka import KafkaProducer

    producer = KafkaProducer(
        bootstrap_servers=kafka.bootstrap, acks="all", max_request_size=4 << 20
    )
    try:
        futures = [
            producer.send(kafka.names.segments, key=k.encode(), value=v, headers=h)
            for k, v, h in records
        ]
        producer.flush()
        return [(m.partition, m.offset) for m in (f.get(timeout=30) for f in futures)]
    finally:
        producer.close()


class Run:
    """What the module run produced and published."""

    def __init__(self, kafka: KafkaSpace) -> None:
        self.kafka = kafka
        self.produced = 0
        self.bad: dict[str, tuple[bytes, int, int]] = {}  # case -> (value, partition, offset)
        self.scores: list[ScoreRecord] = []
        self.flags: list[FlagEvent] = []
        self.dlq: list[Record] = []
        self.metrics = ""
        self.pauses = 0

    def scores_of(self, stream: str) -> list[ScoreRecord]:
        return [s for s in self.scores if s.stream_id == stream]

    def flags_of(self, stream: str) -> list[FlagEvent]:
        return [f for f in self.flags if f.stream_id == stream]


@pytest.fixture(scope="module")
def run(kafka_spaces: Callable[[str], KafkaSpace], video: Path, segments: list[Segment]) -> Run:
    kafka = kafka_spaces("test_worker-run").create()
    r = Run(kafka)
    into = {"topic": kafka.names.segments}
    r.produced += produce_file(kafka.bootstrap, video, stream_id="cam-ts", **into)
    r.produced += produce_file(
        kafka.bootstrap, video, stream_id="cam-raw", raw=True, chunk_bytes=7777, **into
    )
    for _ in range(2):  # a stream id used again right after its stream ended
        r.produced += produce_file(kafka.bootstrap, video, stream_id="cam-again", **into)
    rng = random.Random(5)
    truncated = segments[1].data[: len(segments[1].data) // 2 + 1]
    assert len(truncated) % 188
    bad = {
        "garbage": rng.randbytes(188 * 100),
        "truncated": truncated,
        "oversized": rng.randbytes(MAX_INPUT + 188 * 10),
        "no-content-type": segments[1].data,
    }
    records = [("cam-bad", segments[0].data, _headers("cam-bad", 0, 0.0))]
    for seq, (case, value) in enumerate(bad.items(), start=1):
        ctype = None if case == "no-content-type" else "video/mp2t"
        records.append(("cam-bad", value, _headers("cam-bad", seq, 2.0, ctype)))
    records.append(("cam-bad", segments[2].data, _headers("cam-bad", 5, segments[2].start_ts)))
    # a stream whose last segment is broken: its open incident still closes
    records += [
        ("cam-endbad", segments[0].data, _headers("cam-endbad", 0, 0.0)),
        ("cam-endbad", segments[2].data, _headers("cam-endbad", 1, segments[2].start_ts)),
        (
            "cam-endbad",
            bad["garbage"],
            [*_headers("cam-endbad", 2, 6.0), ("stream-end", b"1")],
        ),
    ]
    where = _send(kafka, records)
    r.bad = {case: (value, *where[i]) for i, (case, value) in enumerate(bad.items(), 1)}
    r.produced += len(records)
    s = streaming.settings(
        kafka, **{"decode.max_input_bytes": MAX_INPUT, "max_inflight_segments": INFLIGHT}
    )
    with worker_thread(s) as worker:
        wait_for(lambda: worker.segments_done >= r.produced, 120, "every segment handled")
        r.metrics = worker.metrics.exposition().decode()
        r.pauses = worker.pauses
    r.scores = [
        ScoreRecord.model_validate(x.json())
        for x in read_topic(kafka.bootstrap, kafka.names.scores)
    ]
    r.flags = [
        FlagEvent.model_validate(x.json()) for x in read_topic(kafka.bootstrap, kafka.names.flags)
    ]
    r.dlq = read_topic(kafka.bootstrap, kafka.names.dlq)
    return r


# ------------------------------------------------------------------------------ end to end


def test_red_triangle_opens_and_closes_one_incident(run: Run) -> None:
    flags = run.flags_of("cam-ts")
    assert [(f.policy, f.label, f.state) for f in flags] == [
        ("red-triangle", "red-triangle", "open"),
        ("red-triangle", "red-triangle", "closed"),
    ]  # and nothing for spam-text: no SPAM on screen
    opened, closed = flags
    interval = 1 / SAMPLE_FPS
    assert RED_START <= opened.start_ts <= RED_START + interval
    assert closed.end_ts is not None and RED_END - interval <= closed.end_ts < RED_END
    assert opened.event_id == closed.event_id and opened.start_ts == closed.start_ts
    assert opened.end_ts is None
    assert RED_START <= closed.peak_ts < RED_END and closed.peak_score >= 0.63
    assert (closed.severity, closed.action, closed.policy_version) == ("medium", "flag", 1)
    assert closed.threshold == 0.63 and closed.model == "clipguard-demo"


def test_every_sampled_frame_has_one_scores_record(run: Run) -> None:
    scores = run.scores_of("cam-ts")
    times = sorted(s.ts for s in scores)
    assert len(times) == len(set(times)) == VIDEO_SECONDS * SAMPLE_FPS
    # one frame in each half-second of the stream's timeline
    assert Counter(int(t * SAMPLE_FPS) for t in times) == {
        i: 1 for i in range(int(VIDEO_SECONDS * SAMPLE_FPS))
    }
    keys = {"red-triangle/red-triangle", "spam-text/spam-text"}
    assert all(set(s.scores) == keys for s in scores)
    flagged = sorted(s.ts for s in scores if "red-triangle/red-triangle" in s.flagged)
    assert flagged and flagged[0] >= RED_START and flagged[-1] < RED_END
    assert len({s.policy_set for s in scores}) == 1
    assert {s.seq for s in scores} == set(range(10))


def test_raw_h264_chunks_score_like_mpegts_segments(run: Run) -> None:
    ts = {round(s.ts, 3): s.scores for s in run.scores_of("cam-ts")}
    raw = {round(s.ts, 3): s.scores for s in run.scores_of("cam-raw")}
    assert raw.keys() == ts.keys()
    for t, scores in ts.items():
        for key, value in scores.items():
            assert raw[t][key] == pytest.approx(value, abs=1e-5), (t, key)
    raw_flags = [(f.state, f.start_ts, f.end_ts) for f in run.flags_of("cam-raw")]
    assert raw_flags == [(f.state, f.start_ts, f.end_ts) for f in run.flags_of("cam-ts")]


def test_broken_records_go_to_the_dlq_with_their_headers(run: Run) -> None:
    letters = {r.headers["seq"].decode(): r for r in run.dlq if r.key == b"cam-bad"}
    assert sorted(letters) == ["1", "2", "3", "4"]
    expected = {"1": "garbage", "2": "truncated", "3": "oversized", "4": "no-content-type"}
    classes = {
        "garbage": "InvalidMedia",
        "truncated": "InvalidMedia",
        "oversized": "LimitExceeded",
        "no-content-type": "HeaderError",
    }
    for seq, case in expected.items():
        letter = letters[seq]
        value, partition, offset = run.bad[case]
        assert letter.key == b"cam-bad" and letter.value == value, case
        h = letter.headers
        assert h[DLQ_ERROR_CLASS].decode() == classes[case], (case, h[DLQ_ERROR_MESSAGE])
        assert h[DLQ_ORIGINAL_TOPIC] == run.kafka.names.segments.encode()
        assert (int(h[DLQ_ORIGINAL_PARTITION]), int(h[DLQ_ORIGINAL_OFFSET])) == (
            partition,
            offset,
        )
        assert h[DLQ_ATTEMPTS] == b"1" and h["stream-id"] == b"cam-bad"  # originals kept
        assert h[DLQ_ERROR_MESSAGE]
    assert b"truncated" in letters["2"].headers[DLQ_ERROR_MESSAGE]
    # the stream's good segments around the broken ones were scored
    assert {s.seq for s in run.scores_of("cam-bad")} == {0, 5}


def test_backpressure_paused_and_resumed_without_losing_anything(run: Run) -> None:
    # a backlog ten times the in-flight bound: consumption paused (more than once, so it also
    # resumed), and every stream was still scored to its end
    assert run.pauses >= 2
    assert len(run.scores_of("cam-ts")) == len(run.scores_of("cam-raw")) == 40
    assert 'clipguard_segments_total{outcome="ok"}' in run.metrics


def test_a_stream_id_used_again_after_its_end_starts_afresh(run: Run) -> None:
    flags = run.flags_of("cam-again")
    assert [f.state for f in flags] == ["open", "closed", "open", "closed"]
    assert len(run.scores_of("cam-again")) == 2 * VIDEO_SECONDS * SAMPLE_FPS


def test_a_dead_last_segment_still_ends_its_stream(run: Run) -> None:
    [letter] = [r for r in run.dlq if r.key == b"cam-endbad"]
    assert letter.headers["stream-end"] == b"1"
    flags = run.flags_of("cam-endbad")
    assert [f.state for f in flags] == ["open", "closed"]  # closed with the dead letter
    assert flags[0].event_id == flags[1].event_id
    closed = flags[1]
    assert closed.end_ts is not None and RED_START <= closed.end_ts < 6.0  # its last frame seen


def test_metrics_count_what_happened(run: Run) -> None:
    m = run.metrics
    assert 'clipguard_dlq_total{reason="InvalidMedia"} 3.0' in m
    assert 'clipguard_dlq_total{reason="LimitExceeded"} 1.0' in m
    for state in ("open", "closed"):
        published = sum(f.state == state for f in run.flags)  # cam-bad's incident stays open
        line = (
            f'clipguard_flags_total{{label="red-triangle",policy="red-triangle",state="{state}"}}'
        )
        assert f"{line} {float(published)}" in m
    scored = len(run.scores)
    assert f"clipguard_frames_scored_total {float(scored)}" in m
    assert f"clipguard_segments_received_total {float(run.produced)}" in m
    assert "clipguard_end_to_end_seconds_count" in m and "clipguard_batch_size_bucket" in m


# ------------------------------------------------------------------------------ policy reload


def _replace(path: Path, text: str) -> None:
    """Replace ``path``'s content at once, as an editor saving or a deployment does."""
    aside = path.parent.parent / f"{path.name}.new"  # outside the watched folder
    aside.write_text(text)
    os.replace(aside, path)


def test_policy_edit_takes_effect_and_a_broken_edit_does_not_stop_the_worker(
    kafka: KafkaSpace, tmp_path: Path, video: Path
) -> None:
    policies = tmp_path / "policies"
    shutil.copytree(streaming.DEMO_POLICIES, policies)
    target = policies / "red-triangle.yaml"
    kafka.create()
    into = {"topic": kafka.names.segments}
    s = streaming.settings(kafka, policies=[str(policies)], policy_reload_interval_s=0.2)
    with worker_thread(s) as worker:
        sent = produce_file(kafka.bootstrap, video, stream_id="before", **into)
        wait_for(lambda: worker.segments_done >= sent, 60, "first stream")
        text = target.read_text()
        assert "version: 1" in text and "severity: medium" in text
        # edits land whole (written aside, then renamed): a reload reading a half-written file
        # would count an error of its own ("the file is empty") besides the broken edit's
        _replace(
            target,
            text.replace("version: 1", "version: 2").replace("severity: medium", "severity: high"),
        )
        wait_for(lambda: worker.store.current.get("red-triangle").policy.version == 2, 30, "reload")
        sent += produce_file(kafka.bootstrap, video, stream_id="after", **into)
        wait_for(lambda: worker.segments_done >= sent, 60, "second stream")
        _replace(target, "id: red-triangle\nversion: [not, a, number\n")
        wait_for(lambda: worker.store.reload_errors >= 1, 30, "the broken edit seen")
        sent += produce_file(kafka.bootstrap, video, stream_id="broken", **into)
        wait_for(lambda: worker.segments_done >= sent, 60, "third stream")
        exposition = worker.metrics.exposition().decode()
    flags = [
        FlagEvent.model_validate(r.json()) for r in read_topic(kafka.bootstrap, kafka.names.flags)
    ]
    by_stream = {
        stream: {(f.policy_version, f.severity) for f in flags if f.stream_id == stream}
        for stream in ("before", "after", "broken")
    }
    assert by_stream == {"before": {(1, "medium")}, "after": {(2, "high")}, "broken": {(2, "high")}}
    assert "clipguard_policy_reload_errors_total 1.0" in exposition


# ------------------------------------------------------------------------------ processes


Outgoing = tuple[str, bytes, Any]


def _records(streams: list[str], segments: list[Segment]) -> list[Outgoing]:
    """Every segment of every stream, round robin by segment; the last ends its stream."""
    return [
        (
            stream,
            seg.data,
            _headers(stream, seg.seq, seg.start_ts)
            + ([("stream-end", b"1")] if seg is segments[-1] else []),
        )
        for seg in segments
        for stream in streams
    ]


def _paced(kafka: KafkaSpace, records: list[Outgoing], gap: float) -> threading.Thread:
    """Send ``records`` one by one, ``gap`` seconds apart, from a thread."""

    def send() -> None:
        for record in records:
            _send(kafka, [record])
            time.sleep(gap)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


def _complete(records: list[Record], streams: list[str], per_stream: int) -> bool:
    seen: dict[str, set[tuple[int, int]]] = {s: set() for s in streams}
    for r in records:
        x = r.json()
        seen[x["stream_id"]].add((x["seq"], x["frame_index"]))
    return all(len(v) == per_stream for v in seen.values())


def _check_flags(kafka: KafkaSpace, streams: list[str]) -> None:
    """Each stream had one red-triangle incident: whatever was published twice carries the
    same event id, and every incident that opened also closed."""
    flags = [
        FlagEvent.model_validate(r.json()) for r in read_topic(kafka.bootstrap, kafka.names.flags)
    ]
    for stream in streams:
        mine = [f for f in flags if f.stream_id == stream]
        ids = {f.event_id for f in mine}
        assert len(ids) == 1, (stream, [(f.state, f.start_ts, f.event_id) for f in mine])
        assert {f.state for f in mine} == {"open", "closed"}
        assert {(f.start_ts, f.peak_ts) for f in mine if f.state == "closed"} and all(
            RED_START <= f.start_ts <= RED_START + 0.5 for f in mine
        )


def _committed(kafka: KafkaSpace) -> dict[int, int]:
    """The workers' group's committed offsets on the segments topic, by partition."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=kafka.bootstrap, group_id=kafka.group_id, enable_auto_commit=False
    )
    try:
        out = {}
        for p in range(4):
            offset = consumer.committed(TopicPartition(kafka.names.segments, p))
            if offset is not None:
                out[p] = offset
        return out
    finally:
        consumer.close(autocommit=False)


def test_kill9_restart_and_sigterm_lose_nothing(
    kafka: KafkaSpace, tmp_path: Path, segments: list[Segment]
) -> None:
    streams = ["cam-a", "cam-b", "cam-c"]
    per_stream = int(VIDEO_SECONDS * SAMPLE_FPS)
    records = _records(streams, segments)
    half = len(records) // 2
    kafka.create()
    b = kafka.bootstrap
    scores = streaming.TopicWatcher(b, kafka.names.scores)
    # a short group session: the killed worker's partitions move on after 6 s, not 10 s
    opts = ("--set", "session_timeout_ms=6000", "--max-inflight-segments", "4")
    first = streaming.WorkerProcess(kafka, tmp_path / "first.log", *opts)
    try:
        first.wait_log("assigned", 60)
        producing = _paced(kafka, records[:half], gap=0.4)
        wait_for(lambda: scores.count() >= 4, 60, "the first worker to score frames")
        assert producing.is_alive()  # segments keep arriving: the kill is mid-run
        first.kill()  # kill -9
    finally:
        first.close()
    producing.join(timeout=60)
    second = streaming.WorkerProcess(kafka, tmp_path / "second.log", *opts)
    try:
        second.wait_log("assigned", 60)
        before = scores.count()
        producing = _paced(kafka, records[half:], gap=0.4)
        wait_for(lambda: scores.count() > before + 4, 60, "the second worker to score")
        assert producing.is_alive()
        status = second.terminate(timeout=60)  # SIGTERM mid-run
        assert status == 0, second.log()[-3000:]
        assert "drained; offsets committed" in second.log()
    finally:
        second.close()
    # committed offsets: every segment before them has its outputs published
    committed = _committed(kafka)
    segs = read_topic(b, kafka.names.segments)
    scored = {
        (x["stream_id"], x["seq"]) for x in (r.json() for r in read_topic(b, kafka.names.scores))
    }
    covered = [
        (r.headers["stream-id"].decode(), int(r.headers["seq"]))
        for r in segs
        if r.offset < committed.get(r.partition, 0)
    ]
    # how far the drained worker got is timing (a loaded machine commits less); what it did
    # commit must all be published, and it scored something after the kill
    assert covered and all(c in scored for c in covered)
    producing.join(timeout=60)
    third = streaming.WorkerProcess(kafka, tmp_path / "third.log")
    try:
        read_topic(
            b,
            kafka.names.scores,
            until=lambda recs: _complete(recs, streams, per_stream),
            timeout=120,
        )
        assert third.terminate() == 0
    finally:
        third.close()
        scores.close()
    _check_flags(kafka, streams)


def test_two_workers_share_partitions_and_one_takes_over(
    kafka: KafkaSpace, tmp_path: Path, segments: list[Segment]
) -> None:
    by_partition = streaming.keys_by_partition([f"cam-{i}" for i in range(40)], 4)
    streams = [ids[0] for _, ids in sorted(by_partition.items())]  # one stream per partition
    assert len(streams) == 4
    per_stream = int(VIDEO_SECONDS * SAMPLE_FPS)
    opts = ("--set", "session_timeout_ms=6000", "--max-inflight-segments", "4")
    kafka.create()
    b = kafka.bootstrap
    scores = streaming.TopicWatcher(b, kafka.names.scores)
    one = streaming.WorkerProcess(kafka, tmp_path / "one.log", *opts)
    two = streaming.WorkerProcess(kafka, tmp_path / "two.log", *opts)
    try:
        one.wait_log("assigned", 60)
        two.wait_log("assigned", 60)
        wait_for(
            lambda: (
                _owned(one.log())
                and _owned(two.log())
                and not (_owned(one.log()) & _owned(two.log()))
            ),
            60,
            "the partitions split between the two workers",
        )
        assert _owned(one.log()) | _owned(two.log()) == {0, 1, 2, 3}
        producer = _paced(kafka, _records(streams, segments), gap=0.25)
        wait_for(lambda: scores.count() >= 4, 90, "frames scored")
        assert producer.is_alive()  # the kill is mid-run
        one.kill()
        read_topic(
            b,
            kafka.names.scores,
            until=lambda recs: _complete(recs, streams, per_stream),
            timeout=120,
        )
        producer.join(timeout=30)
        assert _owned(two.log()) == {0, 1, 2, 3}  # it took the dead worker's partitions
        assert two.terminate() == 0
    finally:
        one.close()
        two.close()
        scores.close()
    _check_flags(kafka, streams)


def _owned(log: str) -> set[int]:
    """The partitions a worker owns now, from its 'assigned'/'revoked' log lines."""
    owned: set[int] = set()
    for line in log.splitlines():
        if "consumers.worker.worker: assigned " in line:
            owned |= {int(p) for p in _partitions(line)}
        elif any(f"consumers.worker.worker: {what} " in line for what in ("revoked", "lost")):
            owned -= {int(p) for p in _partitions(line)}
    return owned


def _partitions(line: str) -> list[str]:
    import re

    return re.findall(r"clipguard\.segments\[(\d+)\]", line)


def test_cli_consume_prints_the_topics(run: Run, capsys: pytest.CaptureFixture[str]) -> None:
    from consumers.cli import main

    names = run.kafka.names
    kafka = ["--bootstrap-servers", run.kafka.bootstrap]
    assert main(["consume", names.flags, *kafka, "--idle", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [FlagEvent.model_validate_json(x) for x in lines] == run.flags
    assert main(["consume", names.dlq, *kafka, "--headers"]) == 0
    letters = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(letters) == len(run.dlq) == 5
    assert all(x["at"].startswith(f"{names.dlq}[0]@") for x in letters)
    assert {x["headers"][DLQ_ERROR_CLASS] for x in letters} == {
        "InvalidMedia",
        "LimitExceeded",
        "HeaderError",
    }
    assert letters[0]["value"].endswith(" bytes>")  # binary values by their size
    assert main(["consume", "no.such.topic", *kafka]) == 1
    assert "no topic 'no.such.topic'" in capsys.readouterr().err


# ------------------------------------------------------------------------------ start-up errors


def test_worker_without_a_broker_fails_clearly(capsys: pytest.CaptureFixture[str]) -> None:
    from consumers.cli import main

    port = streaming.free_port()  # nothing listens there
    args = ["worker", "--bootstrap-servers", f"127.0.0.1:{port}", "--metrics-port", "0"]
    args += ["--policies", str(streaming.DEMO_POLICIES), "--set", "connect_timeout_s=2"]
    started = time.monotonic()
    assert main(args) == 1
    assert time.monotonic() - started < 30
    assert f"cannot connect to Kafka at 127.0.0.1:{port}" in capsys.readouterr().err


def test_worker_names_the_missing_topics(
    kafka: KafkaSpace, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from consumers.cli import main

    kafka.create(segment_partitions=2, only=["segments", "scores"])
    for name, value in kafka.env().items():  # the test's topic names and group
        monkeypatch.setenv(name, value)
    args = ["worker", "--bootstrap-servers", kafka.bootstrap, "--metrics-port", "0"]
    assert main([*args, "--policies", str(streaming.DEMO_POLICIES)]) == 1
    err = capsys.readouterr().err
    assert "topics missing" in err
    names = kafka.names
    assert all(t in err for t in (names.flags, names.dlq, names.state))
    assert "clipguard broker" in err  # and how to get a broker with every topic


def test_worker_says_when_its_metrics_port_is_taken(capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    from consumers.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = ["worker", "--metrics-port", str(port), "--policies", str(streaming.DEMO_POLICIES)]
        assert main(args) == 1
    err = capsys.readouterr().err
    assert f"cannot serve metrics on 127.0.0.1:{port}" in err and "CLIPGUARD_METRICS_PORT" in err


# ------------------------------------------------------------------------------ encoder failures


class FlakyEncoder(TorchImageEncoder):
    """The real encoder, whose first ``failures`` batches raise as a device out of memory
    would (injected; everything else runs for real)."""

    def __init__(self, model: CLIP, batch_size: int, failures: int) -> None:
        super().__init__(model, "fp32", batch_size=batch_size)
        self.failures = failures

    def encode(self, frames: Any) -> Any:
        if self.failures > 0:
            self.failures -= 1
            raise RuntimeError("CUDA out of memory (injected)")
        return super().encode(frames)


@pytest.mark.parametrize("failures", [1, 1_000_000])
def test_a_failed_encoder_batch_is_retried_and_never_dead_lettered(
    kafka: KafkaSpace, failures: int, segments: list[Segment]
) -> None:
    from kafka import KafkaConsumer, TopicPartition

    from consumers.worker import Worker

    kafka.create()
    records = [
        ("cam-x", seg.data, _headers("cam-x", seg.seq, seg.start_ts)) for seg in segments[:3]
    ]
    _send(kafka, records)
    made: list[FlakyEncoder] = []

    def flaky(model: CLIP, size: int) -> FlakyEncoder:
        made.append(FlakyEncoder(model, size, failures))
        return made[-1]

    worker = Worker(
        streaming.settings(
            kafka,
            max_batch_size=256,
            jobs_enabled=False,
            shutdown_deadline_s=1.0,
            retry_backoff_ms=100,
        ),
        encoder=flaky,
    )

    def stop_after_three_failures() -> None:  # however long the start took on a busy machine
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (made and made[0].failures <= failures - 3):
            time.sleep(0.05)
        worker.stop("test")

    # a lasting fault: the worker keeps the segments; stopped once it failed and retried
    if failures > 1:
        threading.Thread(target=stop_after_three_failures, daemon=True).start()
    assert worker.run(count=3, timeout=None) == 0
    exposition = worker.metrics.exposition().decode()
    scores = read_topic(kafka.bootstrap, kafka.names.scores)
    dlq = read_topic(kafka.bootstrap, kafka.names.dlq)
    consumer = KafkaConsumer(
        bootstrap_servers=kafka.bootstrap,
        group_id=worker.settings.group_id,
        enable_auto_commit=False,
    )
    try:
        topic = kafka.names.segments
        parts = consumer.partitions_for_topic(topic) or set()
        committed = [consumer.committed(TopicPartition(topic, p)) for p in parts]
    finally:
        consumer.close(autocommit=False)
    assert 'clipguard_retries_total{stage="encode"}' in exposition
    assert not dlq  # an encoder fault is the worker's, never the segments'
    if failures == 1:  # the retry succeeded: nothing lost
        assert len(scores) == 3 * 2 * SAMPLE_FPS
    else:  # every batch failed: nothing scored, nothing committed, the worker not ready
        assert not scores and committed and set(committed) == {None}
        assert worker._encode_retries.troubled  # not ready while it lasts


def test_an_idle_stream_closes_its_incident_and_is_forgotten(
    kafka: KafkaSpace, segments: list[Segment]
) -> None:
    kafka.create()
    records = [
        ("cam-quiet", seg.data, _headers("cam-quiet", seg.seq, seg.start_ts))
        for seg in segments[:3]  # 0-6 s: the red triangle comes on at 4 s; no stream-end
    ]
    _send(kafka, records)
    s = streaming.settings(kafka, stream_idle_close_s=1.5, jobs_enabled=False)
    with worker_thread(s) as worker:
        wait_for(lambda: worker.segments_done >= 3, 60, "the segments")
        flags = streaming.TopicWatcher(kafka.bootstrap, kafka.names.flags)
        try:
            wait_for(lambda: flags.count() >= 2, 30, "the idle stream's incident to close")
            published = [FlagEvent.model_validate(r.json()) for r in flags.records()]
        finally:
            flags.close()
        assert not any(s.stream_id == "cam-quiet" for s in worker.streams)
        assert worker.segments_done == 3  # the close is no segment
    state = read_topic(kafka.bootstrap, kafka.names.state)
    assert [f.state for f in published] == ["open", "closed"]
    closed = published[1]
    assert closed.event_id == published[0].event_id
    assert closed.end_ts is not None and RED_START <= closed.end_ts < 6.0
    mine = [r for r in state if r.key == b"cam-quiet"]
    assert mine and mine[-1].value is None  # its state checkpoint was deleted (a tombstone)


class HeldEncoder(TorchImageEncoder):
    """The real encoder, held while ``running`` is clear (a busy device: segments stay in
    flight). ``close_when`` is asked before each batch: once it says so, the encoder clears
    ``running`` itself, so the hold starts at a known point and not when a test thread gets
    round to it."""

    def __init__(
        self,
        model: Any,
        running: threading.Event,
        *,
        batch_size: int,
        close_when: Callable[[], bool] = lambda: False,
    ) -> None:
        super().__init__(model, "fp32", batch_size=batch_size)
        self._running = running
        self._close_when = close_when

    def encode(self, frames: Any) -> Any:
        if self._close_when():
            self._running.clear()
        self._running.wait(60)
        return super().encode(frames)


def test_a_partition_revoked_and_given_back_loses_nothing(
    kafka: KafkaSpace, segments: list[Segment]
) -> None:
    # Worker one owns every partition, and has paused consumption with segments in flight
    # (backpressure: 40 segments, at most 32 in flight, resumed at 16) when worker two joins: the
    # rebalance revokes all of one's partitions and gives two of them straight back. The work
    # dropped at the revocation must be consumed again, and the partitions given back must not
    # stay paused (kafka-python keeps the position and the paused flag of a partition that stays
    # with its member, and the revocation emptied one's in-flight work before they came back).
    from consumers.worker import Worker

    by_partition = streaming.keys_by_partition([f"cam-{i}" for i in range(40)], 4)
    streams = [ids[0] for _, ids in sorted(by_partition.items())]
    per_stream = int(VIDEO_SECONDS * SAMPLE_FPS)
    kafka.create()
    b = kafka.bootstrap
    _send(kafka, _records(streams, segments))
    opts = {"max_batch_size": 4, "jobs_enabled": False, "session_timeout_ms": 6000}
    running = threading.Event()
    running.set()
    held = threading.Event()  # set once the test has seen the hold; the gate stays open after

    def busy() -> bool:  # one's device turns busy after two segments, until two has partitions
        return not held.is_set() and one.segments_done >= 2

    one = Worker(
        streaming.settings(kafka, **opts),
        encoder=lambda model, size: HeldEncoder(model, running, batch_size=size, close_when=busy),
    )
    thread = threading.Thread(target=one.run, daemon=True)
    thread.start()
    try:
        half = one.settings.max_inflight_segments // 2
        wait_for(
            lambda: not running.is_set() and one.pauses > 0 and one.in_flight > half,
            60,
            "the first worker to be held with its consumption paused",
        )
        held.set()
        with worker_thread(streaming.settings(kafka, **opts)) as two:
            wait_for(lambda: bool(two.assigned), 60, "the second worker's partitions")
            running.set()
            read_topic(
                b,
                kafka.names.scores,
                until=lambda recs: _complete(recs, streams, per_stream),
                timeout=60,
            )
            assert two.segments_done > 0  # it did take partitions over
            assert one.assigned and two.assigned  # one's were given back (and finished)
    finally:
        running.set()
        one.stop("test finished")
        thread.join(60)
