"""The embedded broker and the test producer, against a real Tansu and real kafka-python.

The session's Tansu broker serves the module (tests/conftest.py), each test on topics of its
own; the tests about starting and stopping a broker start their own. A 6 s, 10 fps video with
a keyframe every second is generated with PyAV, cut into 2 s MPEG-TS segments, produced, and
read back from the test's segments topic by a consumer that assigns the partitions itself (no
consumer group). Every network wait has a deadline.
"""

from __future__ import annotations

import io
import os
import re
import time
from pathlib import Path
from typing import Any

import av
import media
import pytest
from kafkaspace import KafkaSpace

from consumers.broker import DEFAULT_TOPICS, BrokerError, EmbeddedBroker, find_tansu
from consumers.produce import (
    CONTENT_TYPE,
    SegmentTooLarge,
    produce_file,
    segment_video,
)
from pipeline.errors import UnsupportedMedia

# kafka-python 3.0.12 loads its protocol schemas with importlib.resources' legacy read_text and
# open_text, deprecated on Python 3.11: a warning from its code, not ours.
pytestmark = pytest.mark.filterwarnings(
    r"ignore:(read_text|open_text) is deprecated:DeprecationWarning"
)

FPS = 10
SECONDS = 6
FRAMES = FPS * SECONDS
DEADLINE = 15.0  # seconds for any one network wait


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    path.write_bytes(media.encode(FRAMES, fmt="mp4", width=160, height=120, fps=FPS, gop=FPS))
    return path


def _consume(bootstrap: str, topic: str, expected: int, *, deadline: float = DEADLINE) -> list[Any]:
    """Read ``expected`` records from every partition of ``topic`` from the start, assigning
    the partitions directly (no group), or fail at the deadline with what was read."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
        max_partition_fetch_bytes=16 * 1024 * 1024,
        request_timeout_ms=int(deadline * 1000),
    )
    try:
        partitions = consumer.partitions_for_topic(topic)
        assert partitions, f"no partitions for {topic}"
        consumer.assign([TopicPartition(topic, p) for p in sorted(partitions)])
        records: list[Any] = []
        end = time.monotonic() + deadline
        while len(records) < expected:
            left = end - time.monotonic()
            assert left > 0, f"read {len(records)} of {expected} records before the deadline"
            batches = consumer.poll(timeout_ms=int(min(left, 1.0) * 1000))
            for batch in batches.values():
                records.extend(batch)
        # nothing more arrives
        extra = consumer.poll(timeout_ms=300)
        assert not any(extra.values()), "more records than expected"
        return records
    finally:
        consumer.close()


def _frames(data: bytes) -> list[av.VideoFrame]:
    with av.open(io.BytesIO(data), format="mpegts") as container:
        return list(container.decode(video=0))


def test_topics_created(kafka: KafkaSpace) -> None:
    broker = kafka.broker
    topics = {kafka.topic(name): partitions for name, partitions in DEFAULT_TOPICS.items()}
    broker.create_topics(topics, timeout=DEADLINE)
    assert set(topics) <= set(broker.list_topics())
    broker.create_topics(topics)  # idempotent
    segments = re.escape(kafka.topic("clipguard.segments"))
    with pytest.raises(BrokerError, match=rf"{segments} has 4 partitions, not 2"):
        broker.create_topics({kafka.topic("clipguard.segments"): 2})


def test_segment_video(video: Path) -> None:
    segments = list(segment_video(video, segment_seconds=2.0))
    assert [s.seq for s in segments] == [0, 1, 2]
    assert [s.start_ts for s in segments] == pytest.approx([0.0, 2.0, 4.0], abs=1e-6)
    assert [s.frames for s in segments] == [20, 20, 20]
    assert all(s.duration == pytest.approx(2.0) for s in segments)


def test_produce_and_consume(kafka: KafkaSpace, video: Path) -> None:
    kafka.create(only=["segments"])
    sent: list[tuple[int, int, int]] = []
    count = produce_file(
        kafka.bootstrap,
        video,
        stream_id="cam-1",
        topic=kafka.names.segments,
        on_sent=lambda seg, partition, offset: sent.append((seg.seq, partition, offset)),
    )
    assert count == 3
    assert [s[0] for s in sent] == [0, 1, 2]

    records = _consume(kafka.bootstrap, kafka.names.segments, count)
    assert len(records) == count
    assert len({r.partition for r in records}) == 1, "one stream's segments share a partition"
    records.sort(key=lambda r: r.offset)

    total_frames = 0
    starts = []
    for i, record in enumerate(records):
        assert record.key == b"cam-1"
        headers = {k: v.decode() for k, v in record.headers}
        assert headers["content-type"] == CONTENT_TYPE
        assert headers["stream-id"] == "cam-1"
        assert int(headers["seq"]) == i
        start = float(headers["start-ts"])
        assert start == pytest.approx(2.0 * i, abs=0.05)
        starts.append(start)
        frames = _frames(record.value)
        assert frames, f"segment {i} decodes to no frames"
        assert frames[0].key_frame, f"segment {i} does not start with a keyframe"
        total_frames += len(frames)
    assert starts == sorted(starts) and len(set(starts)) == len(starts)

    with av.open(str(video)) as source:
        source_frames = sum(1 for _ in source.decode(video=0))
    assert total_frames == source_frames == FRAMES


def test_segment_too_large(kafka: KafkaSpace, video: Path) -> None:
    kafka.create(only=["segments"])
    with pytest.raises(SegmentTooLarge, match=r"segment 0 .* over the limit of 1000"):
        produce_file(
            kafka.bootstrap,
            video,
            stream_id="cam-big",
            topic=kafka.names.segments,
            max_segment_bytes=1000,
        )


def test_raw_chunks_are_the_annex_b_stream_cut_anywhere(video: Path, tmp_path: Path) -> None:
    from consumers.produce import raw_chunks
    from pipeline.decode import DecodeOptions, decode_bytes

    chunks = list(raw_chunks(video, chunk_bytes=1001))
    assert [c.seq for c in chunks] == list(range(len(chunks))) and len(chunks) > 3
    assert all(len(c.data) == 1001 for c in chunks[:-1]) and 0 < len(chunks[-1].data) <= 1001
    stream = b"".join(c.data for c in chunks)
    assert stream.startswith((b"\x00\x00\x00\x01", b"\x00\x00\x01"))  # Annex-B start code
    assert decode_bytes(stream, "video/h264", DecodeOptions(size=32)).frames_decoded == FRAMES
    assert [c.at for c in chunks] == sorted(c.at for c in chunks)
    assert chunks[-1].at == pytest.approx((FRAMES - 1) / FPS)
    webm = tmp_path / "clip.webm"
    webm.write_bytes(media.encode(10, fmt="webm", codec="libvpx-vp9", width=64, height=48))
    with pytest.raises(UnsupportedMedia, match=r"H\.264 or HEVC"):
        list(raw_chunks(webm))


def test_no_video_stream(tmp_path: Path) -> None:
    path = tmp_path / "sound.m4a"
    path.write_bytes(media.audio_only("mp4"))
    with pytest.raises(UnsupportedMedia, match=r"no video stream \(streams: audio\)"):
        list(segment_video(path))


def test_start_failure_is_clear(tmp_path: Path) -> None:
    not_executable = tmp_path / "tansu"
    not_executable.write_text("#!/bin/sh\nexit 0\n")
    os.chmod(not_executable, 0o644)
    with pytest.raises(BrokerError, match=r"cannot run the Tansu broker binary .*tansu"):
        EmbeddedBroker(binary=not_executable).start()


def test_broker_exit_quotes_its_output(tmp_path: Path) -> None:
    fake = tmp_path / "tansu"
    fake.write_text("#!/bin/sh\necho 'address already in use' >&2\nexit 3\n")
    os.chmod(fake, 0o755)
    broker = EmbeddedBroker(binary=fake, port=1, start_timeout=5)
    with pytest.raises(BrokerError, match=r"exited with status 3(.|\n)*address already in use"):
        broker.start()
    assert not broker.running


def test_stop_ends_the_process() -> None:
    # a broker of its own: the test stops it (the session's must outlive every test)
    broker = EmbeddedBroker(start_timeout=DEADLINE).start()
    pid = broker.pid
    assert pid is not None and broker.running
    broker.stop()
    broker.stop()  # twice is fine
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(BrokerError, match="not running"):
        _ = broker.bootstrap


def test_find_tansu_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert find_tansu().is_file()
    monkeypatch.setenv("CLIPGUARD_TANSU", str(tmp_path / "elsewhere"))
    assert find_tansu() == tmp_path / "elsewhere"


def test_cli_produce(kafka: KafkaSpace, video: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from consumers.cli import main

    kafka.create(only=["segments"])
    argv = ["produce", str(video), "--stream-id", "cam-cli", "--topic", kafka.names.segments]
    status = main([*argv, "--bootstrap-servers", kafka.bootstrap])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "produced 3 segments" in out
    assert out.count(f"-> {kafka.names.segments}[") == 3


def test_cli_former_spellings_of_the_kafka_address(
    kafka: KafkaSpace, video: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--bootstrap`` (now ``--bootstrap-servers``) still reaches the broker, both ways."""
    import json

    from consumers.cli import main

    topic = kafka.topic("cli.former-spelling")
    kafka.broker.create_topics({topic: 1}, timeout=DEADLINE)
    argv = ["produce", str(video), "--stream-id", "cam-old", "--topic", topic]
    assert main([*argv, "--bootstrap", kafka.bootstrap]) == 0
    assert "produced 3 segments" in capsys.readouterr().out
    argv = ["consume", topic, "--headers", "--idle", "1"]
    assert main([*argv, "--bootstrap", kafka.bootstrap]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["at"] for x in lines] == [f"{topic}[0]@{i}" for i in range(3)]
    assert {x["key"] for x in lines} == {"cam-old"}
    assert [x["headers"]["seq"] for x in lines] == ["0", "1", "2"]


def test_cli_broker_stops_on_sigterm() -> None:
    import signal
    import subprocess
    import sys

    # `clipguard broker` starts a broker of its own: that start-up and its SIGTERM are the test
    proc = subprocess.Popen(
        [sys.executable, "-m", "consumers", "broker", "--port", "0", "--partitions", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = []
        end = time.monotonic() + DEADLINE
        while not any(line.startswith("stop:") for line in lines):
            assert time.monotonic() < end, f"no start-up banner: {lines}"
            line = proc.stdout.readline()
            assert line, f"exited early: {lines} {proc.stderr.read() if proc.stderr else ''}"
            lines.append(line)
        assert lines[0].startswith("broker: 127.0.0.1:")
        assert "clipguard.segments (2 partitions)" in "".join(lines)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=DEADLINE)
        assert proc.returncode == 0, err
        assert "broker stopped" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=DEADLINE)


def test_exported_names() -> None:
    import consumers.broker
    import consumers.produce

    assert set(consumers.broker.__all__) == {
        "DEFAULT_TOPICS",
        "SEGMENTS_TOPIC",
        "STATE_TOPIC",
        "BrokerError",
        "EmbeddedBroker",
        "default_topics",
        "find_tansu",
    }
    assert set(consumers.produce.__all__) == {
        "CONTENT_TYPE",
        "DEFAULT_MAX_SEGMENT_BYTES",
        "ProduceError",
        "RawChunk",
        "Segment",
        "SegmentTooLarge",
        "produce_file",
        "raw_chunks",
        "segment_video",
    }
