"""Known content in live streams, end to end: the real embedded broker (Tansu), a stream worker
with the demo model, the demo policies and a hash policy, real H.264 segments.

A known clip (4 s) is spliced into a live stream between two unrelated scenes (0-4 s, 8-12 s),
and the stream is encoded at another quality than the copy that was banked. The bank holds the
clip as a video (``clipguard banks add --video``: vPDQ, one full-size frame a second); the
worker samples 2 frames a second and hashes each in its decode processes. The bank starts
without the clip, and it is added while the worker runs (a broken bank file beside it must not
stop anything): the first stream is not flagged, the second is, from within one sampling
interval of the clip's first frame, with the bank's entry id.
"""

from __future__ import annotations

import os
from pathlib import Path

import knownclips
import pytest
import streaming
from kafkaspace import KafkaSpace
from streaming import read_topic, wait_for, worker_thread

from consumers.cli import main
from consumers.produce import produce_file
from pipeline.events import FlagEvent, ScoreRecord

pytestmark = [
    pytest.mark.filterwarnings(r"ignore:(read_text|open_text) is deprecated:DeprecationWarning"),
    pytest.mark.timeout(300),
]

SAMPLE_FPS = 2.0  # the worker's default sampling
CLIP_START, CLIP_END = 4.0, 8.0

_POLICY = """\
id: known-clips
version: 1
kind: hash
description: Clips we have seen before and must not see again.
owner: trust-and-safety@example.com
severity: high
action: block
banks: [known]
"""


def _flags(kafka: KafkaSpace) -> list[FlagEvent]:
    records = read_topic(kafka.bootstrap, kafka.names.flags)
    return [FlagEvent.model_validate(r.json()) for r in records]


def test_a_spliced_known_clip_is_flagged_once_its_bank_has_it(
    kafka: KafkaSpace, tmp_path: Path
) -> None:
    clip = knownclips.frames(2, CLIP_END - CLIP_START)
    banked = knownclips.write(tmp_path / "banked.mp4", clip, crf=18)
    live = [*knownclips.frames(1, CLIP_START), *clip, *knownclips.frames(3, 4.0)]
    video = knownclips.write(tmp_path / "live.mp4", live, crf=30)
    banks = tmp_path / "banks"
    assert (
        main(["banks", "add", "known", "--pdq", "ab" * 32, "--id", "other", "--dir", str(banks)])
        == 0
    )
    policy = tmp_path / "known-clips.yaml"
    policy.write_text(_POLICY)

    kafka.create()
    s = streaming.settings(
        kafka,
        policies=[str(streaming.DEMO_POLICIES), str(policy)],
        banks=[str(banks)],
        policy_reload_interval_s=0.2,
        jobs_enabled=False,
    )
    segments = kafka.names.segments
    with worker_thread(s) as worker:
        first = produce_file(kafka.bootstrap, video, stream_id="live-1", topic=segments)
        wait_for(lambda: worker.segments_done >= first, 120, "the first stream")

        # the clip joins the bank while the worker runs; a broken bank file is ignored
        added = main(
            ["banks", "add", "known", "--video", str(banked), "--id", "clip-7",
             "--tags", "spam", "--dir", str(banks)]
        )  # fmt: skip
        assert added == 0
        # the broken file lands whole (written aside, renamed in): a reload that read it half
        # written would count an error of its own besides the broken file's
        aside = banks.parent / "broken.bank.tsv.new"
        aside.write_text("# not a bank\n")
        os.replace(aside, banks / "broken.bank.tsv")
        store = worker.banks.store
        assert store is not None
        wait_for(lambda: len(store.snapshot.banks["known"].vpdq) == 1, 30, "the bank reload")
        wait_for(lambda: store.reload_errors >= 1, 30, "the broken file's error")

        second = produce_file(kafka.bootstrap, video, stream_id="live-2", topic=segments)
        wait_for(lambda: worker.segments_done >= first + second, 120, "the second stream")
        wait_for(
            lambda: (
                "clipguard_bank_reload_errors_total 1.0" in worker.metrics.exposition().decode()
            ),
            10,
            "the reload error metric",
        )
    flags = _flags(kafka)
    scores = [
        ScoreRecord.model_validate(r.json())
        for r in read_topic(kafka.bootstrap, kafka.names.scores)
    ]

    hashed = [f for f in flags if f.policy == "known-clips"]
    assert not [f for f in hashed if f.stream_id == "live-1"]  # not banked yet
    assert [(f.stream_id, f.label, f.state) for f in hashed] == [
        ("live-2", "match", "open"),
        ("live-2", "match", "closed"),
    ]
    opened, closed = hashed
    interval = 1 / SAMPLE_FPS
    assert CLIP_START <= opened.start_ts < CLIP_START + interval  # its first sampled frame
    assert closed.end_ts is not None and CLIP_END - interval <= closed.end_ts < CLIP_END
    assert opened.event_id == closed.event_id
    for f in (opened, closed):
        assert f.match is not None
        assert (f.match.bank, f.match.entry_id, f.match.signal_type) == ("known", "clip-7", "vpdq")
        assert f.match.tags == ["spam"] and f.match.distance is not None
        assert f.match.distance <= 31 and f.match.quality is not None and f.match.quality >= 50
    assert (closed.severity, closed.action, closed.policy_version) == ("high", "block", 1)

    # every frame scored for the CLIP policies also says how near the bank came
    mine = [r for r in scores if r.stream_id == "live-2"]
    assert len(mine) == 12 * SAMPLE_FPS
    for r in mine:
        assert set(r.scores) == {"red-triangle/red-triangle", "spam-text/spam-text"}
        assert r.nearest is not None and set(r.nearest) == {"known"}
        assert r.pdq_quality is not None and r.pdq is not None and len(r.pdq) == 64
        inside = CLIP_START <= r.ts < CLIP_END
        assert (r.nearest["known"] is not None) == inside, r
        assert ("known-clips/match" in r.flagged) == inside
