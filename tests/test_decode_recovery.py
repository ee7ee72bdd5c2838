"""What a failed decode means to the worker (consumers/worker/recovery.py), with a real decode
pool: a crash is retried once in a fresh process and then is the input's fault; a decode that
found no decode process (the interpreter gone) is the machine's fault: the segment waits, its
attempt does not count, and it decodes once processes start again."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import media
from kafka.structs import TopicPartition
from prometheus_client import CollectorRegistry, Counter

from consumers.worker.decoding import SegmentDecoder
from consumers.worker.events import DecodeFailed, Event
from consumers.worker.recovery import DecodeRecovery
from consumers.worker.segments import Segment, SegmentHeaders
from pipeline.decode import DecodeOptions, DecodePool
from pipeline.errors import DecodeCrash, DecodeUnavailable, InvalidMedia


class _Outcomes:
    """What the decoder hands back, as the worker's main thread would take it."""

    def __init__(self) -> None:
        self.decoded: list[Segment] = []
        self.failed: list[DecodeFailed] = []
        self.changed = threading.Condition()

    def on_decoded(self, seg: Segment) -> None:
        with self.changed:
            self.decoded.append(seg)
            self.changed.notify_all()

    def post(self, event: Event) -> None:
        assert isinstance(event, DecodeFailed)
        with self.changed:
            self.failed.append(event)
            self.changed.notify_all()

    def wait(self, decoded: int, failed: int) -> None:
        with self.changed:
            assert self.changed.wait_for(
                lambda: len(self.decoded) >= decoded and len(self.failed) >= failed, timeout=60
            ), (self.decoded, self.failed)


def _segment(data: bytes) -> Segment:
    info = SegmentHeaders("cam", "video/mp2t", False, 0, 0.0, None, False)
    return Segment(TopicPartition("segments", 0), 0, b"cam", data, [], "cam", info)


def _retries() -> Counter:
    return Counter("retries", "decode retries", registry=CollectorRegistry())


def test_a_crash_is_retried_once_then_is_the_inputs_fault() -> None:
    outcomes, retries = _Outcomes(), _retries()
    recovery = DecodeRecovery(0.05, retries)
    with DecodePool(1) as pool:
        decoder = SegmentDecoder(
            pool, DecodeOptions(32), decoded=outcomes.on_decoded, post=outcomes.post
        )
        seg = _segment(media.encode(4))
        decoder.decode(seg)
        outcomes.wait(decoded=1, failed=0)
        assert seg.attempts == 1 and len(seg.frames) == 4
        assert recovery.failed(seg, DecodeCrash("decode process killed by SIGSEGV"), decoder)
        outcomes.wait(decoded=2, failed=0)  # decoded again, at once
        assert seg.attempts == 2
        assert not recovery.failed(seg, DecodeCrash("again"), decoder)  # the input's fault
        assert not recovery.failed(_segment(b"x"), InvalidMedia("not media"), decoder)
    assert retries._value.get() == 1 and not recovery.troubled


def test_no_decode_process_is_the_machines_fault(tmp_path: Path) -> None:
    outcomes, retries = _Outcomes(), _retries()
    recovery = DecodeRecovery(0.05, retries)
    python = tmp_path / "python"
    python.symlink_to(sys.executable)
    with DecodePool(1, executable=str(python)) as pool:
        decoder = SegmentDecoder(
            pool, DecodeOptions(32), decoded=outcomes.on_decoded, post=outcomes.post
        )
        python.unlink()
        for pid in pool.pids():
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while pool.available and time.monotonic() < deadline:
            time.sleep(0.05)
        seg = _segment(media.encode(4))
        decoder.decode(seg)
        outcomes.wait(decoded=0, failed=1)
        error = outcomes.failed[0].error
        assert isinstance(error, DecodeUnavailable)
        assert recovery.failed(seg, error, decoder)  # it waits
        assert recovery.troubled and len(recovery) == 1 and seg.attempts == 0
        python.symlink_to(sys.executable)  # processes start again
        handled, deadline = 1, time.monotonic() + 60
        while not outcomes.decoded and time.monotonic() < deadline:  # as the worker's loop
            with outcomes.changed:
                failures = outcomes.failed[handled:]
            for failure in failures:  # tried too early: still the machine's fault
                assert isinstance(failure.error, DecodeUnavailable)
                assert recovery.failed(seg, failure.error, decoder)
                handled += 1
            recovery.due(decoder)
            time.sleep(0.05)
        assert outcomes.decoded == [seg] and len(seg.frames) == 4 and seg.attempts == 1
        recovery.succeeded()
        assert not recovery.troubled and len(recovery) == 0


def test_the_trouble_ends_when_the_waiting_segment_leaves_with_its_partition() -> None:
    outcomes, recovery = _Outcomes(), DecodeRecovery(0.05, _retries())
    with DecodePool(1) as pool:
        decoder = SegmentDecoder(
            pool, DecodeOptions(32), decoded=outcomes.on_decoded, post=outcomes.post
        )
        seg = _segment(media.encode(4))
        seg.attempts = 1
        assert recovery.failed(seg, DecodeUnavailable("no decode process"), decoder)
        assert recovery.troubled
        seg.cancelled = True  # its partition was revoked while it waited
        time.sleep(0.1)
        recovery.due(decoder)  # dropped, not decoded
        recovery.due(decoder)  # nothing waits and the pool has processes: not troubled
        assert not recovery.troubled and not outcomes.decoded
