"""The vectorised temporal rules (pipeline.store.temporal) against IncidentTracker, the
per-frame reference: the same incidents (first and last passing frame, peak, opening and
closing frame, event id) on random pass/fail sequences of many streams, and on real streams
scored by the demo model."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.policies.bundled import DEMO_POLICIES
from pipeline.policies.schema import Temporal
from pipeline.policies.temporal import IncidentEvent, IncidentTracker, incident_event_id
from pipeline.store.eventids import EventIds
from pipeline.store.temporal import IncidentArrays, StreamLayout, find_incidents


@dataclass(frozen=True)
class Seen:
    """One incident as the tracker reports it: frame indices and its event id."""

    start: int
    end: int
    peak: int
    opened: int
    closed: int  # -1: closed by the stream's end
    event_id: str


def _tracker_incidents(
    ts: np.ndarray, passed: np.ndarray, score: np.ndarray, rule: Temporal, starts: list[int]
) -> list[Seen]:
    bounds = [*starts, len(ts)]
    out: list[Seen] = []
    for s in range(len(starts)):
        stream = f"cam-{s}"
        tracker = IncidentTracker(rule, policy="p", label="l")
        index = {float(ts[i]): i for i in range(bounds[s], bounds[s + 1])}
        opened: dict[float, int] = {}
        for i in range(bounds[s], bounds[s + 1]):
            for e in tracker.update(ts=float(ts[i]), passed=bool(passed[i]), score=float(score[i])):
                if e.state == "open":
                    opened[e.start_ts] = i
                else:
                    out.append(_seen(e, index, opened, i, stream))
        for e in tracker.finish():
            out.append(_seen(e, index, opened, -1, stream))
    return out


def _seen(
    e: IncidentEvent, index: dict[float, int], opened: dict[float, int], closed: int, stream: str
) -> Seen:
    assert e.end_ts is not None
    return Seen(
        start=index[e.start_ts],
        end=index[e.end_ts],
        peak=index[e.peak_ts],
        opened=opened[e.start_ts],
        closed=closed,
        event_id=e.event_id(stream, 3),
    )


def _kernel_incidents(
    ts: np.ndarray, passed: np.ndarray, score: np.ndarray, rule: Temporal, starts: list[int]
) -> list[Seen]:
    found: IncidentArrays = find_incidents(
        ts, passed, score, rule, StreamLayout.of(starts, len(ts))
    )
    out = []
    for i in range(len(found)):
        event = IncidentEvent(
            state="closed",
            policy="p",
            label="l",
            start_ts=float(ts[found.start[i]]),
            end_ts=float(ts[found.end[i]]),
            peak_score=float(score[found.peak[i]]),
            peak_ts=float(ts[found.peak[i]]),
            threshold=None,
            margin=None,
            top_prompt=None,
        )
        out.append(
            Seen(
                start=int(found.start[i]),
                end=int(found.end[i]),
                peak=int(found.peak[i]),
                opened=int(found.opened[i]),
                closed=int(found.closed[i]),
                event_id=event.event_id(f"cam-{found.stream[i]}", 3),
            )
        )
    return out


# -- random sequences ------------------------------------------------------------------------

_STEPS = [0.5, 0.1, 1 / 3, 0.04, 1.0, 2.5, 1e-9, 0.2]


@st.composite
def _rules(draw: st.DrawFn) -> Temporal:
    n = draw(st.integers(1, 7))
    return Temporal(
        k=draw(st.integers(1, n)),
        n=n,
        min_duration_s=draw(st.sampled_from([0.0, 0.0, 0.1, 0.3, 0.5, 1.0, 1.5, 2.0 / 3])),
        close_after=draw(st.integers(1, 4)),
        cooldown_s=draw(st.sampled_from([0.0, 0.0, 0.1, 0.5, 1.0, 2.2, 1 / 3])),
    )


@st.composite
def _streams(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]:
    count = draw(st.integers(1, 4))
    ts_all: list[float] = []
    passed_all: list[bool] = []
    starts: list[int] = []
    density = draw(st.sampled_from([0.2, 0.5, 0.8, 0.95]))
    for _ in range(count):
        length = draw(st.integers(1, 60))
        starts.append(len(ts_all))
        t = draw(st.sampled_from([0.0, 3.7, 1e6]))
        uniform = draw(st.booleans())
        step = draw(st.sampled_from(_STEPS))
        for _ in range(length):
            ts_all.append(t)
            t += step if uniform else draw(st.sampled_from(_STEPS))
            passed_all.append(draw(st.floats(0, 1)) < density)
    # scores from a small set: ties decide which peak is first
    scores = [draw(st.sampled_from([0.1, 0.25, 0.3, 0.3, 0.5, 0.9])) for _ in ts_all]
    ts = np.asarray(ts_all, dtype=np.float64)
    for s, e in zip(starts, [*starts[1:], len(ts)], strict=True):
        assert np.all(np.diff(ts[s:e]) > 0)
    return ts, np.asarray(passed_all), np.asarray(scores, dtype=np.float32), starts


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rule=_rules(), data=_streams())
def test_same_incidents_as_the_tracker_on_random_sequences(
    rule: Temporal, data: tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]
) -> None:
    ts, passed, score, starts = data
    assert _kernel_incidents(ts, passed, score, rule, starts) == _tracker_incidents(
        ts, passed, score, rule, starts
    )


def test_long_random_streams_with_every_rule_shape() -> None:
    """Fewer, longer sequences (thousands of frames, several hundred incidents each)."""
    rng = np.random.default_rng(7)
    total = 0
    for trial in range(40):
        n = int(rng.integers(1, 10))
        rule = Temporal(
            k=int(rng.integers(1, n + 1)),
            n=n,
            min_duration_s=float(rng.choice([0.0, 0.4, 1.0, 3.0])),
            close_after=int(rng.integers(1, 6)),
            cooldown_s=float(rng.choice([0.0, 0.5, 2.0, 10.0])),
        )
        lengths = rng.integers(1, 3000, size=int(rng.integers(1, 6)))
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).tolist()
        ts = np.concatenate([np.cumsum(rng.uniform(0.01, 1.0, size=m)) for m in lengths])
        # bursts of passing frames, as real detections come
        p = np.clip(np.convolve(rng.random(len(ts)), np.ones(15) / 15, mode="same"), 0, 1)
        passed = rng.random(len(ts)) < (p - 0.35) * 3
        score = rng.random(len(ts)).astype(np.float32)
        mine = _kernel_incidents(ts, passed, score, rule, starts)
        assert mine == _tracker_incidents(ts, passed, score, rule, starts), f"trial {trial}"
        total += len(mine)
    assert total > 500  # the trials did exercise the rules


def test_edge_cases() -> None:
    rule = Temporal(k=2, n=3, close_after=2)
    empty = np.zeros(0)
    assert len(find_incidents(empty, empty.astype(bool), empty, rule)) == 0
    ts = np.arange(5, dtype=np.float64)
    none = np.zeros(5, dtype=bool)
    assert len(find_incidents(ts, none, ts, rule)) == 0
    every = np.ones(5, dtype=bool)
    found = find_incidents(ts, every, np.array([1, 3, 3, 2, 0.0]), rule)
    assert (found.start.tolist(), found.end.tolist(), found.peak.tolist()) == ([0], [4], [1])
    assert found.opened.tolist() == [1] and found.closed.tolist() == [-1]
    with pytest.raises(ValueError, match="one value per frame"):
        find_incidents(ts, every[:3], ts, rule)
    with pytest.raises(ValueError, match="stream starts"):
        StreamLayout.of([1, 3], 5)


# -- real streams ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_scores(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, np.ndarray, list]:
    """The demo video scored every 0.1 s by the demo model against the demo policies: times
    and per-label scores and passes (the demo policies' labels)."""
    from pipeline.decode import DecodeOptions, Sampling, decode_uri
    from pipeline.demo.video import demo_shots, write_video
    from pipeline.models import load_model
    from pipeline.models.encoders import reference_encoder
    from pipeline.policies import load_policies
    from pipeline.policies.compile import PolicyCompiler

    model = load_model("clipguard-demo")
    policies = PolicyCompiler(model, cache_dir=tmp_path_factory.mktemp("pc")).compile(
        load_policies([DEMO_POLICIES])
    )
    video = write_video(tmp_path_factory.mktemp("v") / "demo.mp4", demo_shots())
    result = decode_uri(
        video, DecodeOptions(model.input_resolution, sampling=Sampling(mode="fps", fps=10))
    )
    embeddings = reference_encoder(model).encode([f.image for f in result.frames])
    scores = policies.compiled.evaluate(embeddings)
    ts = np.asarray([f.t for f in result.frames])
    return ts, scores, list(policies.compiled.labels)


@pytest.mark.parametrize(
    "rule",
    [
        Temporal(),
        Temporal(k=2, n=3, close_after=2),
        Temporal(k=3, n=5, min_duration_s=0.5, close_after=3, cooldown_s=2.0),
        Temporal(k=1, n=1, min_duration_s=1.0, close_after=1, cooldown_s=0.3),
    ],
)
def test_same_incidents_on_real_demo_streams(demo_scores: tuple, rule: Temporal) -> None:
    ts, scores, labels = demo_scores
    total = 0
    for j, _label in enumerate(labels):
        passed, score = scores.passed[:, j], scores.score[:, j]
        # the same video three times over as three streams
        ts3 = np.concatenate([ts, ts + 0.013, ts * 1.5])
        mine = _kernel_incidents(
            ts3, np.tile(passed, 3), np.tile(score, 3), rule, [0, len(ts), 2 * len(ts)]
        )
        ref = _tracker_incidents(
            ts3, np.tile(passed, 3), np.tile(score, 3), rule, [0, len(ts), 2 * len(ts)]
        )
        assert mine == ref
        total += len(mine)
    assert total >= 3 and not math.isnan(float(ts[-1]))


# -- float boundaries the random data rarely hits ---------------------------------------------


def _both(ts: list[float], passed: list[int], rule: Temporal) -> tuple[list[Seen], list[Seen]]:
    t, p = np.asarray(ts), np.asarray(passed, dtype=bool)
    score = np.linspace(0.2, 0.9, len(ts)).astype(np.float32)
    return _kernel_incidents(t, p, score, rule, [0]), _tracker_incidents(t, p, score, rule, [0])


def test_a_frame_exactly_at_the_cooldowns_end_may_open() -> None:
    mine, ref = _both([0, 0.5, 1.0, 1.5, 2.0], [1, 1, 0, 1, 0], Temporal(cooldown_s=1.0))
    assert mine == ref and [s.start for s in ref] == [0, 3]


@pytest.mark.parametrize(
    ("t0", "m", "t1"),
    [
        # t1 < t0 + m, yet t1 - t0 >= m in floating point: the tracker opens at t1
        (0.075926850053958, 0.9176922571709127, 0.9936191072248707),
        (0.6252614844151068, 5.215251221324175, 5.840512705739282),
        # t1 == t0 + m, yet t1 - t0 < m: the tracker waits for the next frame
        (7.870969415548011, 0.0080236416113453, 7.878993057159356),
        (0.7319007239096598, 0.07631285325440533, 0.8082135771640651),
    ],
)
def test_min_duration_is_compared_as_the_tracker_does(t0: float, m: float, t1: float) -> None:
    later = t1 + 1.0
    for rule in (Temporal(min_duration_s=m), Temporal(k=2, n=4, min_duration_s=m)):
        mine, ref = _both([t0, t1, later], [1, 1, 1], rule)
        assert mine == ref and len(ref) == 1
        # and in a run that starts after the window filled (the precomputed path)
        ts = [t0 - 30 + i for i in range(8)] + [t0, t1, later]
        mine, ref = _both(ts, [0] * 8 + [1, 1, 1], rule)
        assert mine == ref and len(ref) == 1


@settings(max_examples=300, deadline=None)
@given(
    stream=st.text(max_size=12),
    policy=st.text(min_size=1, max_size=8),
    version=st.integers(0, 2**31 - 1),
    label=st.text(min_size=1, max_size=8),
    start=st.floats(-1e9, 1e12, allow_nan=False),
)
def test_event_ids_in_bulk_equal_the_judges(
    stream: str, policy: str, version: int, label: str, start: float
) -> None:
    ids = EventIds()
    for ts in (start, start + 0.0004, start + 1.5, start):  # the prefix reused, then again
        assert ids(stream, policy, version, label, ts) == incident_event_id(
            stream, policy, version, label, ts
        )
