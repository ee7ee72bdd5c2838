"""Tests for pipeline.policies.temporal: per-frame decisions -> incidents that do not flicker."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.errors import ConfigError
from pipeline.policies.schema import LoadedPolicies, LoadedPolicy, Temporal, parse_policy
from pipeline.policies.score import Decision
from pipeline.policies.temporal import (
    IncidentEvent,
    IncidentTracker,
    StreamTemporalState,
    temporal_rules,
)

PASS, FAIL = 0.5, 0.1

Frame = tuple[float, bool, float]  # ts, passed, score


def frames(pattern: str, *, t0: float = 0.0, dt: float = 1.0) -> list[Frame]:
    """'P' passes, 'F' fails, spaces are for reading; frame i is at t0 + i*dt."""
    marks = pattern.replace(" ", "")
    return [(t0 + i * dt, m == "P", PASS if m == "P" else FAIL) for i, m in enumerate(marks)]


def tracker(**rule: float) -> IncidentTracker:
    return IncidentTracker(Temporal(**rule), policy="pol", label="lab")  # type: ignore[arg-type]


def feed(t: IncidentTracker, seq: Sequence[Frame]) -> list[tuple[float, IncidentEvent]]:
    """Every event, with the timestamp of the frame that caused it."""
    out = []
    for ts, passed, score in seq:
        out += [(ts, e) for e in t.update(ts=ts, passed=passed, score=score)]
    return out


def run_all(t: IncidentTracker, seq: Sequence[Frame]) -> list[IncidentEvent]:
    return [e for _, e in feed(t, seq)] + t.finish()


def decision(key: str, score: float, passed: bool, **extra: object) -> Decision:
    fields: dict[str, object] = {
        "threshold": 0.3,
        "probability": None,
        "margin": None,
        "top_prompt": "a red triangle",
    }
    fields.update(extra)
    return Decision(key=key, passed=passed, score=score, **fields)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# k of n


def test_single_blips_do_not_open_two_of_three() -> None:
    t = tracker(k=2, n=3)
    assert feed(t, frames("P F F P F F P F F F")) == []
    assert t.finish() == []


def test_two_of_three_opens_on_the_second_pass() -> None:
    t = tracker(k=2, n=3)
    [(fired, e)] = feed(t, frames("F F P F P"))
    assert (fired, e.state, e.start_ts, e.end_ts) == (4.0, "open", 2.0, None)


def test_start_is_the_first_passing_frame_not_the_firing_frame() -> None:
    t = tracker(k=3, n=5)
    [(fired, e)] = feed(t, frames("F P F P F P", t0=10.0))
    assert fired == 15.0
    assert e.start_ts == 11.0


def test_start_is_within_the_window_that_opened() -> None:
    # The pass at 0 has left the window by the time 3 of 3 pass.
    t = tracker(k=3, n=3)
    [(fired, e)] = feed(t, frames("P P F P P P"))
    assert (fired, e.start_ts) == (5.0, 3.0)


def test_alternating_opens_two_of_three_and_never_flickers() -> None:
    t = tracker(k=2, n=3, close_after=2)
    seq = frames("P F P F P F P F P F")
    events = feed(t, seq)
    assert [(ts, e.state, e.start_ts) for ts, e in events] == [(2.0, "open", 0.0)]
    [closed] = t.finish()
    assert (closed.state, closed.start_ts, closed.end_ts) == ("closed", 0.0, 8.0)


def test_alternating_never_opens_three_of_three() -> None:
    t = tracker(k=3, n=3)
    assert run_all(t, frames("P F " * 10)) == []


def test_one_of_one_opens_at_once() -> None:
    t = tracker()
    [(fired, e)] = feed(t, frames("F F P"))
    assert (fired, e.start_ts) == (2.0, 2.0)


# --------------------------------------------------------------------------------------------
# min_duration_s


def test_min_duration_waits_for_the_run_to_last() -> None:
    t = tracker(min_duration_s=2.0)
    [(fired, e)] = feed(t, frames("P P P P"))
    assert (fired, e.start_ts) == (2.0, 0.0)


def test_min_duration_restarts_after_a_break() -> None:
    t = tracker(min_duration_s=2.0)
    [(fired, e)] = feed(t, frames("P P F P P P P"))
    assert (fired, e.start_ts) == (5.0, 3.0)


def test_min_duration_not_reached_never_opens() -> None:
    t = tracker(min_duration_s=3.0)
    assert run_all(t, frames("P P P F P P P F")) == []


def test_min_duration_with_k_of_n_tolerates_single_misses() -> None:
    t = tracker(k=2, n=3, min_duration_s=4.0, close_after=2)
    [(fired, e)] = feed(t, frames("P P F P P F P P"))
    assert (fired, e.start_ts) == (4.0, 0.0)
    # ...but not two misses in three frames
    t = tracker(k=2, n=3, min_duration_s=4.0)
    [(fired, e)] = feed(t, frames("P P F P F P P P P P"))
    assert (fired, e.start_ts) == (7.0, 3.0)  # the run restarts at the window's first pass


def test_min_duration_opens_only_on_a_passing_frame() -> None:
    # 2 of 3 still holds at t=2 (a failing frame) with 2s elapsed; it opens at the next pass.
    t = tracker(k=2, n=3, min_duration_s=2.0)
    [(fired, e)] = feed(t, frames("P P F P"))
    assert (fired, e.start_ts) == (3.0, 0.0)


# --------------------------------------------------------------------------------------------
# close_after (hysteresis), end_ts


def test_single_dip_does_not_close() -> None:
    t = tracker(close_after=2)
    events = feed(t, frames("P F P F P"))
    assert [e.state for _, e in events] == ["open"]


def test_close_after_m_dips_in_a_row() -> None:
    t = tracker(close_after=3)
    events = feed(t, frames("P P F F P F F F P"))
    assert [(ts, e.state) for ts, e in events] == [(0.0, "open"), (7.0, "closed"), (8.0, "open")]
    closed = events[1][1]
    assert (closed.start_ts, closed.end_ts) == (0.0, 4.0)  # the last passing frame
    assert events[2][1].start_ts == 8.0


def test_window_is_cleared_after_close() -> None:
    # Before the close the window held passes; afterwards 2 of 3 must be earned afresh.
    t = tracker(k=2, n=3, close_after=1)
    events = feed(t, frames("P P F P F P P"))
    assert [(ts, e.state) for ts, e in events] == [(1.0, "open"), (2.0, "closed"), (5.0, "open")]
    assert events[2][1].start_ts == 3.0


def test_open_and_close_events_share_start() -> None:
    t = tracker(k=2, n=2, close_after=1)
    [(_, opened), (_, closed)] = feed(t, frames("F P P P F", t0=5.0))
    assert opened.start_ts == closed.start_ts == 6.0
    assert closed.end_ts == 8.0


# --------------------------------------------------------------------------------------------
# cooldown_s


def test_re_pass_within_cooldown_does_not_open() -> None:
    t = tracker(cooldown_s=5.0)
    events = feed(t, frames("P F P P P F"))
    assert [(ts, e.state) for ts, e in events] == [(0.0, "open"), (1.0, "closed")]


def test_pass_after_cooldown_opens() -> None:
    t = tracker(cooldown_s=5.0)
    events = feed(t, frames("P F P P P F P P"))
    assert [(ts, e.state) for ts, e in events] == [(0.0, "open"), (1.0, "closed"), (6.0, "open")]
    assert events[2][1].start_ts == 6.0


def test_cooldown_counts_from_end_ts_and_ends_inclusive() -> None:
    # Ends at 1 (last pass), closes at 3; cooldown 4 ends at 5: a pass at 5 opens.
    t = tracker(cooldown_s=4.0, close_after=2)
    events = feed(t, [*frames("P P F F P"), (5.0, True, PASS)])
    assert [(ts, e.state) for ts, e in events] == [(0.0, "open"), (3.0, "closed"), (5.0, "open")]


def test_passes_in_cooldown_do_not_count_towards_the_next_incident() -> None:
    # 2 of 3 across the cooldown's end: the pass at 3 (in cooldown) does not count.
    t = tracker(k=2, n=3, cooldown_s=3.0)
    events = feed(t, frames("P P F P P P"))
    assert [(ts, e.state) for ts, e in events] == [(1.0, "open"), (2.0, "closed"), (5.0, "open")]
    assert events[2][1].start_ts == 4.0


# --------------------------------------------------------------------------------------------
# peak


def test_peak_tracks_the_highest_passing_frame() -> None:
    t = tracker(close_after=2)
    seq: list[Frame] = [
        (0.0, True, 0.3),
        (1.0, True, 0.5),
        (2.0, True, 0.9),
        (3.0, False, 0.95),  # fails (e.g. on margin): not the peak
        (4.0, True, 0.9),  # a tie keeps the first
        (5.0, True, 0.4),
    ]
    events = run_all(t, seq)
    opened, closed = events
    assert (opened.peak_score, opened.peak_ts) == (0.3, 0.0)
    assert (closed.peak_score, closed.peak_ts, closed.end_ts) == (0.9, 2.0, 5.0)


def test_peak_includes_frames_before_the_rule_fired() -> None:
    t = tracker(k=2, n=3)
    [(_, opened)] = feed(t, [(0.0, True, 0.8), (1.0, False, 0.1), (2.0, True, 0.4)])
    assert (opened.start_ts, opened.peak_score, opened.peak_ts) == (0.0, 0.8, 0.0)
    t = tracker(k=2, n=3)
    [(_, opened)] = feed(t, [(0.0, True, 0.8), (1.0, False, 0.1), (2.0, True, 0.8)])
    assert (opened.peak_score, opened.peak_ts) == (0.8, 0.0)  # a tie keeps the first


def test_peak_keeps_the_decision_there() -> None:
    t = tracker(close_after=1)
    d1 = decision("pol/lab", 0.31, True, margin=0.05, top_prompt="red triangle")
    d2 = decision("pol/lab", 0.42, True, margin=0.12, top_prompt="a photo of a red triangle")
    d3 = decision("pol/lab", 0.35, True, margin=0.07, top_prompt="a red triangle")
    out = []
    for ts, d in [(0.0, d1), (1.0, d2), (2.0, d3)]:
        out += t.update(ts=ts, passed=d.passed, score=d.score, decision=d)
    out += t.update(ts=3.0, passed=False, score=0.1)
    opened, closed = out
    assert (opened.threshold, opened.margin, opened.top_prompt) == (0.3, 0.05, "red triangle")
    assert (closed.peak_score, closed.peak_ts) == (0.42, 1.0)
    assert (closed.threshold, closed.margin, closed.top_prompt) == (
        0.3,
        0.12,
        "a photo of a red triangle",
    )


def test_peak_fields_are_none_without_a_decision() -> None:
    [opened, _] = run_all(tracker(), frames("P"))
    assert (opened.threshold, opened.margin, opened.top_prompt) == (None, None, None)


# --------------------------------------------------------------------------------------------
# stream end


def test_finish_closes_an_open_incident() -> None:
    t = tracker(close_after=5)
    feed(t, frames("P P F P F"))
    assert t.is_open
    [closed] = t.finish(ts=10.0)
    assert (closed.state, closed.start_ts, closed.end_ts) == ("closed", 0.0, 3.0)
    assert not t.is_open
    assert t.finish() == []


def test_finish_with_nothing_open() -> None:
    t = tracker(k=2, n=3)
    feed(t, frames("F P F"))
    assert t.finish() == []


def test_finish_forgets_a_pending_run() -> None:
    t = tracker(min_duration_s=2.0)
    feed(t, frames("P P"))
    assert t.finish(ts=1.5) == []
    # Later frames (after the end) start from scratch.
    assert feed(t, [(2.0, True, PASS), (3.0, True, PASS)]) == []
    assert [e.start_ts for _, e in feed(t, [(4.0, True, PASS)])] == [2.0]


def test_finish_ts_moves_the_replay_watermark() -> None:
    t = tracker()
    feed(t, frames("F"))
    t.finish(ts=10.0)
    assert t.last_ts == 10.0
    assert t.update(ts=9.0, passed=True, score=PASS) == []
    assert len(t.update(ts=11.0, passed=True, score=PASS)) == 1


# --------------------------------------------------------------------------------------------
# replays and out-of-order frames


def test_replayed_and_out_of_order_frames_are_ignored() -> None:
    seq = frames("F P P F F P F F")
    clean = tracker(k=2, n=3, close_after=2)
    expected = run_all(clean, seq)
    assert expected  # the sequence does something

    t = tracker(k=2, n=3, close_after=2)
    got = []
    for i, (ts, passed, score) in enumerate(seq):
        got += t.update(ts=ts, passed=passed, score=score)
        # replays of everything so far, with the opposite outcome: all ignored
        for ts2, passed2, _ in seq[: i + 1]:
            assert t.update(ts=ts2, passed=not passed2, score=0.99) == []
    got += t.finish()
    assert got == expected


# --------------------------------------------------------------------------------------------
# event ids


def test_open_and_closed_share_an_id() -> None:
    opened, closed = run_all(tracker(), frames("P P F"))
    assert opened.state != closed.state
    assert opened.event_id("cam-1", 3) == closed.event_id("cam-1", 3)
    uuid.UUID(opened.event_id("cam-1", 3))  # a well-formed UUID


def test_ids_are_the_same_on_replay() -> None:
    seq = frames("F P P F F P", t0=1712345678.25, dt=0.5)
    a = run_all(tracker(close_after=2), seq)
    b = run_all(tracker(close_after=2), seq)
    assert [e.event_id("s", 1) for e in a] == [e.event_id("s", 1) for e in b]
    assert len({e.event_id("s", 1) for e in a}) == 2  # two incidents


def test_ids_differ_by_start_stream_version_policy_and_label() -> None:
    base = IncidentEvent("open", "pol", "lab", 12.0, None, 0.5, 12.0, None, None, None)
    ids = {
        base.event_id("s", 1),
        base.event_id("t", 1),
        base.event_id("s", 2),
        IncidentEvent("open", "pol2", "lab", 12.0, None, 0.5, 12.0, None, None, None).event_id(
            "s", 1
        ),
        IncidentEvent("open", "pol", "lab2", 12.0, None, 0.5, 12.0, None, None, None).event_id(
            "s", 1
        ),
        IncidentEvent("open", "pol", "lab", 12.002, None, 0.5, 12.0, None, None, None).event_id(
            "s", 1
        ),
    }
    assert len(ids) == 6


def test_ids_count_start_to_the_millisecond() -> None:
    def at(start: float, **kw: object) -> IncidentEvent:
        fields: dict[str, object] = {
            "state": "open",
            "policy": "pol",
            "label": "lab",
            "start_ts": start,
            "end_ts": None,
            "peak_score": 0.5,
            "peak_ts": start,
            "threshold": None,
            "margin": None,
            "top_prompt": None,
        }
        fields.update(kw)
        return IncidentEvent(**fields)  # type: ignore[arg-type]

    assert at(5.0).event_id("s", 1) == at(5.0000001).event_id("s", 1)
    assert at(5.0).event_id("s", 1) != at(5.001).event_id("s", 1)
    # state, end, peak and shadow do not change the id
    other = at(5.0, state="closed", end_ts=9.0, peak_score=0.9, peak_ts=7.0, shadow=True)
    assert at(5.0).event_id("s", 1) == other.event_id("s", 1)


# --------------------------------------------------------------------------------------------
# streams


def rules() -> dict[str, tuple[Temporal, str]]:
    return {
        "weapons": (Temporal(k=2, n=3, close_after=2), "enforce"),
        "spam": (Temporal(close_after=1), "shadow"),
    }


def stream_frames() -> list[tuple[float, list[Decision]]]:
    marks = {
        "weapons/gun": "F P P F P F F F P P",
        "weapons/knife": "P F F P F F F P F F",
        "spam/word": "F F P P F F P F F P",
    }
    out = []
    for i in range(10):
        ds = []
        for key, pattern in marks.items():
            passed = pattern.split()[i] == "P"
            ds.append(decision(key, (0.4 + 0.01 * i) if passed else 0.1, passed))
        out.append((100.0 + i, ds))
    return out


def run_stream(
    state: StreamTemporalState, seq: list[tuple[float, list[Decision]]]
) -> list[IncidentEvent]:
    out = []
    for ts, ds in seq:
        out += state.update(ts, ds)
    return out


def test_stream_tracks_each_label_separately() -> None:
    state = StreamTemporalState("cam-1", rules())  # type: ignore[arg-type]
    events = run_stream(state, stream_frames()) + state.finish(110.0)
    assert list(state.trackers) == ["weapons/gun", "weapons/knife", "spam/word"]
    summary = [(e.key, e.state, e.start_ts, e.end_ts, e.shadow) for e in events]
    assert summary == [
        ("weapons/gun", "open", 101.0, None, False),
        ("spam/word", "open", 102.0, None, True),
        ("spam/word", "closed", 102.0, 103.0, True),
        ("weapons/gun", "closed", 101.0, 104.0, False),
        ("spam/word", "open", 106.0, None, True),
        ("spam/word", "closed", 106.0, 106.0, True),
        ("weapons/gun", "open", 108.0, None, False),
        ("spam/word", "open", 109.0, None, True),
        ("weapons/gun", "closed", 108.0, 109.0, False),
        ("spam/word", "closed", 109.0, 109.0, True),
    ]


def test_stream_rules_from_a_callback() -> None:
    asked: list[str] = []

    def rule(policy: str) -> tuple[Temporal, str]:
        asked.append(policy)
        return Temporal(), "shadow" if policy == "spam" else "enforce"

    state = StreamTemporalState("s", rule)  # type: ignore[arg-type]
    events = state.update(1.0, [decision("a/x", 0.5, True), decision("spam/y", 0.5, True)])
    state.update(2.0, [decision("a/x", 0.5, True), decision("spam/y", 0.5, True)])
    assert asked == ["a", "spam"]  # once per tracker, lazily
    assert [(e.key, e.shadow) for e in events] == [("a/x", False), ("spam/y", True)]


def test_stream_ignores_replayed_frames() -> None:
    state = StreamTemporalState("s", rules())  # type: ignore[arg-type]
    assert len(state.update(1.0, [decision("spam/w", 0.5, True)])) == 1
    assert state.update(1.0, [decision("weapons/gun", 0.5, True)]) == []
    assert state.update(0.5, [decision("spam/w", 0.1, False)]) == []
    assert list(state.trackers) == ["spam/w"]


def test_stream_unknown_policy_and_bad_key() -> None:
    state = StreamTemporalState("s", rules())  # type: ignore[arg-type]
    with pytest.raises(KeyError, match="nope"):
        state.update(1.0, [decision("nope/x", 0.5, True)])
    with pytest.raises(ConfigError, match="policy/label"):
        state.update(2.0, [decision("no-slash", 0.5, True)])


def test_temporal_rules_from_a_policy_set() -> None:
    text = """
id: {id}
version: 1
description: d
owner: o
severity: low
action: flag
mode: {mode}
labels: [{{name: x, prompts: [x], threshold: 0.3}}]
temporal: {{k: 2, n: 4, close_after: 3}}
"""
    loaded = [
        LoadedPolicy(parse_policy(text.format(id=i, mode=m)), Path(f"{i}.yaml"), "0")
        for i, m in [("a", "enforce"), ("b", "shadow")]
    ]
    got = temporal_rules(LoadedPolicies(loaded))
    assert got == {
        "a": (Temporal(k=2, n=4, close_after=3), "enforce"),
        "b": (Temporal(k=2, n=4, close_after=3), "shadow"),
    }
    assert temporal_rules([lp.policy for lp in loaded]) == got


# --------------------------------------------------------------------------------------------
# checkpoints


def roundtrip(d: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(json.dumps(d, allow_nan=False))
    return out


CHECKPOINT_CASES = [
    ({"k": 2, "n": 3, "close_after": 2}, "F P F P P F P F F P P P F F F P"),
    ({"k": 3, "n": 5, "min_duration_s": 3.0, "close_after": 2}, "P P F P P P P F P F F P P P P"),
    ({"close_after": 3, "cooldown_s": 4.0}, "P P F F F P P P P P P F F F F P"),
    ({"k": 2, "n": 2, "min_duration_s": 1.0, "cooldown_s": 2.0}, "P P P F P P P F F P P P"),
]


@pytest.mark.parametrize(("rule", "pattern"), CHECKPOINT_CASES)
def test_tracker_restored_at_every_split_continues_the_same(
    rule: dict[str, float], pattern: str
) -> None:
    seq = [(ts, p, s + 0.01 * (i % 5)) for i, (ts, p, s) in enumerate(frames(pattern, dt=0.5))]
    expected = run_all(tracker(**rule), seq)
    assert expected
    for split in range(len(seq) + 1):
        first = tracker(**rule)
        got = [e for _, e in feed(first, seq[:split])]
        saved = roundtrip(first.to_dict())
        second = IncidentTracker.from_dict(saved)
        assert second.to_dict() == saved
        got += [e for _, e in feed(second, seq[split:])] + second.finish()
        assert got == expected, f"split at {split}"


def test_stream_restored_at_every_split_continues_the_same() -> None:
    seq = stream_frames()
    expected = run_stream(StreamTemporalState("cam", rules()), seq)  # type: ignore[arg-type]
    for split in range(len(seq) + 1):
        first = StreamTemporalState("cam", rules())  # type: ignore[arg-type]
        got = run_stream(first, seq[:split])
        saved = roundtrip(first.to_dict())
        second = StreamTemporalState.from_dict(saved, rules())  # type: ignore[arg-type]
        assert second.stream_id == "cam"
        assert second.to_dict() == saved
        got += run_stream(second, seq[split:])
        assert got == expected, f"split at {split}"


def test_restored_tracker_keeps_its_saved_rule_and_shadow() -> None:
    state = StreamTemporalState("s", rules())  # type: ignore[arg-type]
    state.update(1.0, [decision("spam/w", 0.5, True)])
    changed = {"spam": (Temporal(k=3, n=3), "enforce"), "weapons": rules()["weapons"]}
    restored = StreamTemporalState.from_dict(state.to_dict(), changed)  # type: ignore[arg-type]
    t = restored.trackers["spam/w"]
    assert (t.temporal, t.shadow) == (Temporal(close_after=1), True)


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda d: d.update(format=2),
        lambda d: d.pop("window"),
        lambda d: d.update(last_ts="soon"),
        lambda d: d.update(temporal={"k": 5, "n": 2}),
        lambda d: d.update(window=[{"ts": 1.0}]),
        lambda d: d.update(shadow="yes"),
    ],
)
def test_bad_tracker_checkpoints_are_refused(corrupt: Callable[[dict[str, Any]], object]) -> None:
    t = tracker(k=2, n=3)
    feed(t, frames("P"))
    data = t.to_dict()
    corrupt(data)
    with pytest.raises(ConfigError, match="checkpoint"):
        IncidentTracker.from_dict(data)


def test_bad_stream_checkpoints_are_refused() -> None:
    with pytest.raises(ConfigError, match="checkpoint"):
        StreamTemporalState.from_dict({"format": 1}, {})
    t = tracker().to_dict()
    dup = {"format": 1, "stream_id": "s", "last_ts": None, "trackers": [t, t]}
    with pytest.raises(ConfigError, match="two 'pol/lab'"):
        StreamTemporalState.from_dict(dup, {})


# --------------------------------------------------------------------------------------------
# properties

rule_strategy = st.builds(
    lambda n, k_frac, min_d, close_after, cooldown: Temporal(
        k=max(1, round(n * k_frac)),
        n=n,
        min_duration_s=min_d,
        close_after=close_after,
        cooldown_s=cooldown,
    ),
    n=st.integers(1, 6),
    k_frac=st.floats(0.0, 1.0),
    min_d=st.sampled_from([0.0, 0.0, 0.5, 1.0, 2.5]),
    close_after=st.integers(1, 4),
    cooldown=st.sampled_from([0.0, 0.0, 1.0, 3.0]),
)
frame_strategy = st.lists(
    st.tuples(
        st.sampled_from([0.25, 0.5, 1.0]),  # time since the previous frame
        st.booleans(),
        st.floats(0.0, 1.0, allow_nan=False),
        st.booleans(),  # also replay the previous frame
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None, database=None)
@given(rule=rule_strategy, steps=frame_strategy, split=st.integers(0, 60))
def test_invariants(
    rule: Temporal, steps: list[tuple[float, bool, float, bool]], split: int
) -> None:
    seq: list[Frame] = []
    ts = 0.0
    for dt, passed, score, _ in steps:
        ts += dt
        seq.append((ts, passed, score))

    t = IncidentTracker(rule, policy="p", label="l")
    events: list[tuple[float, IncidentEvent]] = []
    for i, ((ts, passed, score), (_, _, _, replay)) in enumerate(zip(seq, steps, strict=True)):
        if i == split:  # checkpoint and restore mid-stream
            t = IncidentTracker.from_dict(roundtrip(t.to_dict()))
        events += [(ts, e) for e in t.update(ts=ts, passed=passed, score=score)]
        if replay:
            assert t.update(ts=ts, passed=not passed, score=1.0) == []
    end = seq[-1][0] if seq else 0.0
    events += [(end, e) for e in t.finish(ts=end)]

    # the same as a run without replays or checkpoints
    plain = IncidentTracker(rule, policy="p", label="l")
    assert [e for _, e in events] == run_all(plain, seq)

    passing = {ts: score for ts, passed, score in seq if passed}
    states = [e.state for _, e in events]
    assert states == ["open", "closed"] * (len(states) // 2)  # alternate; all closed at the end
    prev_end: float | None = None
    for (fired, opened), (closed_at, closed) in zip(events[::2], events[1::2], strict=True):
        assert opened.end_ts is None
        assert fired in passing  # opens on a passing frame...
        assert fired - opened.start_ts >= rule.min_duration_s  # ...once the run is long enough
        assert closed.start_ts == opened.start_ts
        assert closed.end_ts is not None
        assert closed.start_ts <= closed.peak_ts <= closed.end_ts <= closed_at
        assert opened.start_ts <= opened.peak_ts <= fired
        assert closed.peak_score >= opened.peak_score
        assert {closed.start_ts, closed.end_ts, closed.peak_ts} <= passing.keys()
        assert closed.peak_score == passing[closed.peak_ts]
        incident = [(ts, s) for ts, s in passing.items() if closed.start_ts <= ts <= closed.end_ts]
        best = max(s for _, s in incident)
        assert closed.peak_score == best
        assert closed.peak_ts == min(ts for ts, s in incident if s == best)  # the first to reach it
        if prev_end is not None:
            assert opened.start_ts > prev_end
            assert opened.start_ts - prev_end >= rule.cooldown_s
        prev_end = closed.end_ts
        ids = {opened.event_id("s", 1), closed.event_id("s", 1)}
        assert len(ids) == 1
