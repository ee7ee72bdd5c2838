"""The stream worker's logic without a broker: header parsing, the offset ledger, batching, the
outbox, and per-stream judging (ordering, dead letters, stream ends, idle close, checkpoints,
a policy removed by a reload)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kafka.future import Future
from kafka.structs import TopicPartition

from consumers.settings import TopicNames
from consumers.worker.batching import BatchEncoder, EncodeWork
from consumers.worker.offsets import OffsetLedger, PartitionLedger
from consumers.worker.outbox import Acked, Outbox, Output
from consumers.worker.segments import (
    HeaderError,
    Segment,
    SegmentHeaders,
    check_media,
    parse_headers,
)
from consumers.worker.streams import DLQ_VALUE_DROPPED, Streams
from pipeline.errors import InvalidMedia, LimitExceeded
from pipeline.events import DLQ_ERROR_CLASS, DLQ_ORIGINAL_OFFSET
from pipeline.policies.judge import FrameRef, Judge
from pipeline.policies.schema import LoadedPolicies, LoadedPolicy, parse_policy
from pipeline.policies.score import CompiledLabel, CompiledPolicies
from pipeline.policies.snapshot import PolicySet

TP = TopicPartition("clipguard.segments", 0)

# -- segments ------------------------------------------------------------------------------


def _h(**values: str) -> list[tuple[str, bytes]]:
    return [(k.replace("_", "-"), v.encode()) for k, v in values.items()]


def test_headers_parse_into_a_typed_value() -> None:
    info = parse_headers(
        _h(content_type="video/MP2T; codecs=avc1", stream_id="cam-1", seq="7", start_ts="14.0"),
        key=b"cam-1",
        offset=3,
    )
    assert info == SegmentHeaders("cam-1", "video/mp2t", False, 7, 14.0, None, False)
    raw = parse_headers(
        [("Content-Type", b"video/h264"), ("fps", b"30"), ("stream-end", b"true")],
        key=b"cam-2",
        offset=9,
    )
    assert (raw.stream_id, raw.raw, raw.seq, raw.start_ts, raw.fps, raw.end) == (
        "cam-2",
        True,
        9,  # no seq header: the offset
        None,  # raw chunks need no start-ts
        30.0,
        True,
    )


@pytest.mark.parametrize(
    ("headers", "key", "message"),
    [
        (_h(content_type="video/mp2t", start_ts="0"), None, "no stream id"),
        (_h(stream_id="s", start_ts="0"), b"s", "no content-type"),
        (_h(stream_id="s", content_type="video/mp2t"), b"s", "no start-ts"),
        (_h(stream_id="s", content_type="video/mp2t", start_ts="0", seq="x"), b"s", "seq"),
        (_h(stream_id="s", content_type="video/mp2t", start_ts="-1"), b"s", "start-ts must"),
        (_h(stream_id="s", content_type="video/mp2t", start_ts="nan"), b"s", "start-ts must"),
        (_h(stream_id="s", content_type="video/h264", fps="0"), b"s", "fps must"),
        (_h(stream_id="s", content_type="video/h264", fps="many"), b"s", "fps is not"),
        ([("stream-id", b"\xff\xfe")], b"k", "not UTF-8"),
        # a stream-id header that differs from the key would split the stream across partitions
        (_h(stream_id="cam-2", content_type="video/mp2t", start_ts="0"), b"cam-1", "differs"),
        (_h(stream_id="cam-2", content_type="video/mp2t", start_ts="0"), None, "differs"),
        (_h(content_type="video/mp2t", start_ts="0"), b"c" * 257, "over 256 characters"),
        (_h(content_type="video/mp2t", start_ts="0"), b"cam\nforged line", "control char"),
        (_h(content_type="video/mp2t", start_ts="0"), b"\xff", "key is not UTF-8"),
        (_h(content_type="video/mp2t", start_ts="0", seq="-1"), b"s", "seq must"),
        (_h(content_type="video/mp2t", start_ts="0", seq="9" * 5000), b"s", "seq must"),
        (_h(content_type="video/mp2t", start_ts="0", seq=str(1 << 63)), b"s", "seq must"),
        (_h(content_type="video/mp2t", start_ts="0", seq="\u0661"), b"s", "seq must"),
    ],
)
def test_bad_headers_are_refused_with_a_reason(
    headers: list[tuple[str, bytes]], key: bytes | None, message: str
) -> None:
    with pytest.raises(HeaderError, match=message):
        parse_headers(headers, key=key, offset=0)


def test_media_checks_before_decoding() -> None:
    check_media(b"\x47" * 188 * 2, "video/mp2t", 1000)
    with pytest.raises(HeaderError, match="no value"):
        check_media(None, "video/mp2t", 1000)
    with pytest.raises(LimitExceeded, match="over the limit of 300"):
        check_media(b"x" * 376, "video/mp2t", 300)
    with pytest.raises(InvalidMedia, match="truncated MPEG-TS"):
        check_media(b"\x47" * 200, "video/mp2t", 1000)
    check_media(b"x" * 200, "video/h264", 1000)  # raw chunks are cut anywhere


# -- the offset ledger ----------------------------------------------------------------------


def test_a_partition_commits_up_to_its_first_record_not_done() -> None:
    part: PartitionLedger[str] = PartitionLedger()
    for offset in (10, 11, 12, 13):
        part.add(offset, f"seg{offset}")
    assert part.advance() is None and part.in_flight() == 4
    part.finish(12)  # out of order: nothing to commit yet
    assert part.advance() is None
    part.finish(10)
    assert part.advance() == 11  # 10 done; 11 is not
    part.committed = 11
    assert part.advance() is None  # no progress since the commit
    part.finish(11)
    assert part.advance() == 13 and list(part.pending()) == ["seg13"]
    assert part.measure_lag(20) == 7  # from 13 to the high watermark
    assert part.measure_lag(None) is None


def test_the_ledger_commits_only_partitions_it_owns() -> None:
    ledger: OffsetLedger[int, str] = OffsetLedger()
    a, b = ledger.assign(0), ledger.assign(1)
    a.add(5, "a5")
    b.add(7, "b7")
    a.finish(5)
    b.finish(7)
    assert ledger.in_flight() == 0
    assert ledger.to_commit() == {0: 6, 1: 8}
    ledger.revoke(1)
    ledger.committed({0: 6, 1: 8})  # 1 went away meanwhile: ignored
    assert a.committed == 6 and 1 not in ledger and ledger.to_commit() == {}


# -- batching -------------------------------------------------------------------------------


class _CountingEncoder:
    """Embeds a frame as [its first pixel, batch size]; fails the first ``failures`` calls."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.batches: list[int] = []

    def encode(self, frames: Sequence[Any]) -> np.ndarray:
        if self.failures:
            self.failures -= 1
            raise RuntimeError("out of memory (on purpose)")
        self.batches.append(len(frames))
        return np.array([[float(f[0, 0, 0]), len(frames)] for f in frames], dtype=np.float32)


def _images(start: int, n: int) -> list[np.ndarray]:
    return [np.full((2, 2, 3), start + i, dtype=np.uint8) for i in range(n)]


def _run_batches(encoder: _CountingEncoder, works: list[EncodeWork]) -> tuple[list, list]:
    done: list[EncodeWork] = []
    failed: list[tuple[EncodeWork, BaseException]] = []
    stage = BatchEncoder(
        encoder,
        max_batch_size=4,
        max_batch_wait_s=0.2,
        retry_backoff_s=0.0,
        done=done.append,
        failed=lambda w, e: failed.append((w, e)),
    )
    for work in works:
        stage.submit(work)  # queued before the thread starts: one wait fills the batches
    stage.start()
    deadline = time.monotonic() + 10
    while len(done) + len(failed) < sum(not w.cancelled for w in works):
        assert time.monotonic() < deadline, "the encoder thread did not finish"
        time.sleep(0.01)
    stage.stop()
    return done, failed


def test_frames_of_several_segments_share_batches() -> None:
    encoder = _CountingEncoder()
    works = [EncodeWork("a", _images(0, 3), 2), EncodeWork("b", _images(10, 3), 2)]
    done, failed = _run_batches(encoder, works)
    assert encoder.batches == [4, 2] and not failed
    assert [w.owner for w in done] == ["a", "b"]
    assert works[0].embeddings[:, 0].tolist() == [0, 1, 2]  # each row back in its place
    assert works[1].embeddings[:, 0].tolist() == [10, 11, 12]
    assert works[1].embeddings[:, 1].tolist() == [4, 2, 2]  # b's first frame rode in batch 1


def test_a_batch_failing_twice_fails_its_segments_and_a_cancelled_one_is_skipped() -> None:
    once = _CountingEncoder(failures=1)
    done, failed = _run_batches(once, [EncodeWork("a", _images(0, 2), 2)])
    assert [w.owner for w in done] == ["a"] and not failed  # retried once: fine
    twice = _CountingEncoder(failures=2)
    cancelled = EncodeWork("c", _images(5, 2), 2)
    cancelled.cancelled = True
    done, failed = _run_batches(twice, [EncodeWork("a", _images(0, 2), 2), cancelled])
    assert not done and [(w.owner, str(e)) for w, e in failed] == [
        ("a", "out of memory (on purpose)")
    ]


# -- the outbox -----------------------------------------------------------------------------


class _Producer:
    """A transport whose sends the test acknowledges or fails by hand."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Future]] = []

    def send(self, topic: str, **_: Any) -> Future:
        future = Future()
        self.sent.append((topic, future))
        return future


def test_the_outbox_completes_an_owner_once_every_output_is_acknowledged() -> None:
    producer = _Producer()
    events: list[Acked] = []
    retried: list[float] = []
    outbox = Outbox(
        producer,  # type: ignore[arg-type]
        post=events.append,
        backoff_ms=0,
        on_retry=lambda owner, out, e, backoff: retried.append(backoff),
    )
    owner = object()
    assert outbox.publish(owner, []) is True  # nothing to wait for
    assert outbox.publish(owner, [Output("a", None, b"1"), Output("b", None, b"2")]) is False
    producer.sent[0][1].success(None)
    producer.sent[1][1].failure(RuntimeError("broker away"))
    assert [outbox.acked(e) for e in events] == [False, False] and retried == [0.0]
    assert outbox.pending(owner) == 1
    events.clear()
    outbox.retry_due()  # the failed one is sent again
    assert len(producer.sent) == 3 and producer.sent[2][0] == "b"
    producer.sent[2][1].success(None)
    assert [outbox.acked(e) for e in events] == [True] and outbox.pending(owner) == 0
    # a forgotten owner's acknowledgements are ignored
    gone = object()
    outbox.publish(gone, [Output("a", None, b"x")])
    outbox.forget(gone)
    producer.sent[3][1].success(None)
    assert outbox.acked(events[-1]) is False


# -- streams: ordering, judging, ends ------------------------------------------------------

_POLICY = """\
id: {id}
version: 2
description: d
owner: o
severity: high
action: review
labels:
  - name: {id}
    prompts: [x]
    threshold: 0.5
temporal: {{k: 1, n: 1, close_after: 1}}
"""


def _policy_set(*ids: str) -> PolicySet:
    """Policies whose label i passes on a frame embedded as unit vector e_i (dimension 4)."""
    loaded = LoadedPolicies(
        [LoadedPolicy(parse_policy(_POLICY.format(id=i)), Path(f"{i}.yaml"), "0") for i in ids]
    )
    eye = np.eye(4, dtype=np.float32)
    labels = []
    for n, i in enumerate(ids):
        labels.append(
            CompiledLabel(
                policy=i,
                label=i,
                key=f"{i}/{i}",
                version=2,
                severity="high",
                action="review",
                mode="enforce",
                row=2 * n,
                negative_rows=(),
                prompt_rows=(2 * n + 1,),
                prompts=("x",),
                threshold=0.5,
                probability=None,
                margin=None,
            )
        )
    matrix = np.concatenate([np.stack([eye[n], eye[n]]) for n in range(len(ids))])
    compiled = CompiledPolicies(matrix, tuple(labels), 100.0, loaded.digest)
    return PolicySet.of(loaded, compiled)


def _segment(offset: int, seq: int, frames: str, *, start: float, end: bool = False) -> Segment:
    """A decoded, encoded segment: one frame a second; 'P' frames pass policy 0, '.' fail."""
    info = SegmentHeaders("cam", "video/mp2t", False, seq, start, None, end)
    seg = Segment(TP, offset, b"cam", b"media", [("seq", str(seq).encode())], "cam", info)
    seg.refs = [FrameRef(seq, i, start + i) for i in range(len(frames))]
    rows = [np.eye(4, dtype=np.float32)[0 if c == "P" else 3] for c in frames]
    seg.embeddings = np.stack(rows) if rows else np.zeros((0, 4), np.float32)
    seg.ready = True
    return seg


def _streams(**kw: Any) -> Streams:
    return Streams(Judge("m"), TopicNames(), checkpoints=True, max_request_size=1 << 20, **kw)


def _flags(verdicts: Sequence[Any]) -> list[tuple[str, float, float | None]]:
    return [(f.state, f.start_ts, f.end_ts) for v in verdicts for f in v.flags]


def test_segments_are_judged_in_stream_order_and_the_stream_end_closes_incidents() -> None:
    policies = _policy_set("tri")
    streams = _streams()
    stream = streams.open(TP, "cam", policies)
    first, second = _segment(0, 0, "..PP", start=0.0), _segment(1, 1, "P..", start=4.0, end=True)
    first.ready = False
    stream.queue.extend([first, second])
    assert streams.advance(stream, policies) == []  # the first is not ready: both wait
    first.ready = True
    verdicts = streams.advance(stream, policies)
    assert [v.segment for v in verdicts] == [first, second]
    assert _flags(verdicts) == [("open", 2.0, None), ("closed", 2.0, 4.0)]
    scores = [json.loads(o.value) for o in verdicts[0].outputs if o.topic == "clipguard.scores"]
    assert [s["flagged"] for s in scores] == [[], [], ["tri/tri"], ["tri/tri"]]
    assert verdicts[0].checkpoint is not None and verdicts[0].checkpoint.value is not None
    assert verdicts[1].checkpoint is not None and verdicts[1].checkpoint.value is None  # tombstone
    assert streams.get(TP, "cam") is None  # ended: forgotten
    assert first.value == b"" and first.embeddings is None  # judged: media released


def test_a_failed_segment_is_a_dead_letter_in_its_turn() -> None:
    policies = _policy_set("tri")
    streams = _streams()
    stream = streams.open(TP, "cam", policies)
    good, bad = _segment(0, 0, "PP", start=0.0), _segment(1, 1, "", start=2.0)
    bad.error, bad.value = InvalidMedia("not a video"), b"z" * 10
    stream.queue.extend([good, bad])
    verdicts = streams.advance(stream, policies)
    letter = verdicts[1]
    assert letter.dead == "InvalidMedia" and letter.checkpoint is None
    (out,) = letter.outputs
    headers = dict(out.headers)
    assert out.topic == "clipguard.dlq" and out.value == b"z" * 10
    assert headers[DLQ_ERROR_CLASS] == b"InvalidMedia" and headers[DLQ_ORIGINAL_OFFSET] == b"1"
    assert headers["seq"] == b"1"  # the original headers ride along
    assert streams.get(TP, "cam") is stream  # not the stream's end: the incident stays open
    # a dead letter too large to republish goes without its value, saying how large it was
    small = Streams(Judge("m"), TopicNames(), checkpoints=False, max_request_size=100)
    big = _segment(2, 0, "", start=0.0)
    big.error, big.value = InvalidMedia("x"), b"v" * 1000
    s2 = small.open(TP, "other", policies)
    s2.queue.append(big)
    (dropped,) = small.advance(s2, policies)
    assert (
        dropped.outputs[0].value == b""
        and dict(dropped.outputs[0].headers)[DLQ_VALUE_DROPPED] == b"1000"
    )


def test_a_stream_restarting_at_seq_zero_closes_its_incidents() -> None:
    policies = _policy_set("tri")
    streams = _streams()
    stream = streams.open(TP, "cam", policies)
    stream.queue.append(_segment(0, 0, "PPP", start=10.0))
    streams.advance(stream, policies)
    stream.queue.append(_segment(1, 0, "P", start=0.0))  # seq 0 again, time went back
    verdicts = streams.advance(stream, policies)
    assert _flags(verdicts) == [("closed", 10.0, 12.0), ("open", 0.0, None)]


def test_a_restored_stream_continues_its_incident_with_the_same_event_id() -> None:
    policies = _policy_set("tri")
    streams = _streams()
    stream = streams.open(TP, "cam", policies)
    stream.queue.append(_segment(0, 0, "PP", start=0.0))
    (opened,) = streams.advance(stream, policies)
    checkpoint = json.loads(opened.checkpoint.value)  # type: ignore[union-attr]
    elsewhere = _streams()  # another worker took the partition over
    again = elsewhere.open(TP, "cam", policies, checkpoint)
    assert again.restored_offset == 0
    again.queue.append(_segment(1, 1, ".", start=2.0))
    (closed,) = elsewhere.advance(again, policies)
    assert opened.flags[0].event_id == closed.flags[0].event_id
    assert (closed.flags[0].state, closed.flags[0].end_ts) == ("closed", 1.0)
    broken = _streams().open(TP, "cam", policies, {"format": 99})  # unusable: afresh
    assert broken.restored_offset == -1


def test_an_idle_stream_closes_only_when_allowed() -> None:
    policies = _policy_set("tri")
    streams = _streams()
    stream = streams.open(TP, "cam", policies)
    stream.queue.append(_segment(0, 0, "PP", start=0.0))
    streams.advance(stream, policies)
    later = stream.active + 100
    assert streams.close_idle(later, 60, policies, may_close=lambda s: False) == []
    (verdict,) = streams.close_idle(later, 60, policies, may_close=lambda s: True)
    assert verdict.segment.carrier and _flags([verdict]) == [("closed", 0.0, 1.0)]
    assert verdict.checkpoint is not None and verdict.checkpoint.value is None
    assert len(streams) == 0


def test_a_reload_that_removes_a_policy_closes_its_incidents() -> None:
    both, only_b = _policy_set("a", "b"), _policy_set("b")
    streams = _streams()
    stream = streams.open(TP, "cam", both)
    stream.queue.append(_segment(0, 0, "PP", start=0.0))  # 'P' is e_0: policy "a" opens
    (opened,) = streams.advance(stream, both)
    assert _flags([opened]) == [("open", 0.0, None)]
    stream.queue.append(_segment(1, 1, "..", start=2.0))
    (after,) = streams.advance(stream, only_b)  # "a" was removed by a reload
    assert [(f.policy, f.state, f.end_ts) for f in after.flags] == [("a", "closed", 1.0)]
    assert opened.flags[0].event_id == after.flags[0].event_id
    assert set(json.loads(after.outputs[0].value)["scores"]) == {"b/b"}


def test_frames_are_never_judged_against_a_half_swapped_set(tmp_path: Path) -> None:
    """A watcher thread reloads as fast as it can between two policy sets with different
    labels while the main thread judges: every judgement sees one whole set."""
    from pipeline.models import load_clip
    from pipeline.policies.compile import PolicyCompiler
    from pipeline.policies.store import PolicyStore

    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "a.yaml").write_text(_POLICY.format(id="a"))
    model = load_clip("clipguard-demo")
    store = PolicyStore([folder], PolicyCompiler(model, cache_dir=tmp_path / "cache"))
    texts = {"a": _POLICY.format(id="a"), "b": _POLICY.format(id="b")}
    stop = threading.Event()
    swaps = [0]

    def reload_forever() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            name = "a" if n % 2 else "b"
            (folder / f"{'b' if name == 'a' else 'a'}.yaml").unlink(missing_ok=True)
            (folder / f"{name}.yaml").write_text(texts[name].replace("version: 2", f"version: {n}"))
            swaps[0] += store.refresh()

    watcher = threading.Thread(target=reload_forever)
    watcher.start()
    judge = Judge(model.name)
    rng = np.random.default_rng(0)
    judged = 0
    try:
        deadline = time.monotonic() + 20
        while (swaps[0] < 20 or judged < 200) and time.monotonic() < deadline:
            policies = store.current  # one reference for the whole judgement
            state = judge.new_state("cam", policies)
            emb = rng.normal(size=(4, model.embed_dim)).astype(np.float32)
            refs = [FrameRef(0, i, float(i)) for i in range(4)]
            out = judge.judge(state, refs, emb, policies)
            keys = {lab.key for lab in policies.compiled.labels}
            assert all(set(r.scores) == keys and r.policy_set == policies.id for r in out.scores)
            judged += 1
    finally:
        stop.set()
        watcher.join()
    assert swaps[0] >= 20 and judged >= 200, (swaps[0], judged)


def test_a_far_timestamp_restarts_the_stream_instead_of_silencing_it() -> None:
    policies = _policy_set("tri")
    resets: list[int] = []
    streams = _streams(max_ts_jump_s=3600.0, on_timeline_reset=lambda: resets.append(1))
    stream = streams.open(TP, "cam", policies)
    stream.queue.append(_segment(0, 0, "PP", start=0.0))
    stream.queue.append(_segment(1, 1, "P", start=1e12))  # a far-future start-ts
    stream.queue.append(_segment(2, 2, "PP.", start=4.0))  # the stream's own time again
    verdicts = streams.advance(stream, policies)
    scores = [json.loads(o.value) for o in verdicts[2].outputs if o.topic == "clipguard.scores"]
    # the later frames are judged (not dropped as out of order), on a fresh state
    assert [s["ts"] for s in scores] == [4.0, 5.0, 6.0]
    assert ("open", 4.0, None) in _flags(verdicts[2:]) and len(resets) == 2
    checkpoint = json.loads(verdicts[2].checkpoint.value)  # type: ignore[union-attr]
    assert "1000000000000" not in json.dumps(checkpoint)  # the bad time is not kept


def test_log_lines_cannot_be_forged_by_ids() -> None:
    import logging

    from consumers.logs import JsonFormatter, TextFormatter

    forged = "cam-1\n2026-01-01 00:00:00,000 ERROR consumers.worker: forged\u2028x\r"
    record = logging.LogRecord(
        "consumers.worker", logging.INFO, __file__, 1, "job %s: %s", (forged, "u" * 5000), None
    )
    record.stream = forged
    line = TextFormatter().format(record)
    assert "\n" not in line and "\r" not in line and "\u2028" not in line
    assert "cam-1\\n2026" in line and "stream=cam-1\\n" in line
    assert "(+3000 chars)" in line and len(line) < 2500
    out = json.loads(JsonFormatter().format(record))
    assert out["stream"].startswith("cam-1\n") and "(+3000 chars)" in out["message"]
