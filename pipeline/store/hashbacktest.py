"""Backtesting hash policies on stored traffic: re-match the stored PDQ column, temporal rules,
diff.

:func:`backtest_hashes` answers for ``kind: hash`` policies what
:func:`pipeline.store.backtest.backtest` answers for CLIP policies, with the same
:class:`~pipeline.store.results.BacktestResult` (so the same ``backtest.json``, report page and
retro events):

1. **Frames.** The stored frames with a PDQ hash (:func:`~pipeline.store.bankmatch.
   hashed_frames`: the ``pdq`` and ``pdq_quality`` columns, tile 0, each frame id once), of
   every model unless the filter names one. Frames stored without a hash are counted, not
   judged: the live judge gives unhashed frames no hash decision either.
2. **Order.** Per stream in time order; a frame whose time does not advance past the stream's
   previous one is dropped, as the live tracker ignores it.
3. **Judging.** Each stream's frames go through :func:`pipeline.policies.hashing.judge_frames`,
   the worker's own judging of hash policies: the policy's banks, ``max_distance`` and
   ``min_quality``, PDQ entries and the frames of banked videos, and the vPDQ window over the
   stream. The baseline judges each frame with the hash policies of the set in force when it
   was stored (its snapshot in the store), or with ``against``.
4. **Temporal rules** per policy over all streams at once
   (:func:`pipeline.store.temporal.find_incidents`), giving the live event ids; each incident
   carries the bank entry matched at its peak (``match``).
5. **Diff** per policy (``policy/match``): added, removed, changed, unchanged; passing frames;
   histograms of the PDQ similarity ``1 - distance / 256``.

Both sides match against the banks given, as they are now: the store keeps no history of
banks, so the baseline is the deployed policy versions against today's banks. A stored frame
keeps its own hash only, so the mirrored and rotated copies a ``dihedral: true`` policy
matches live are not found here.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from pipeline.errors import StoreError
from pipeline.hashes.pdq import PdqHash
from pipeline.hashes.store import BankSnapshot
from pipeline.policies.hashing import judge_frames, similarity
from pipeline.policies.schema import HASH_LABEL, HashPolicy, LoadedPolicies
from pipeline.policies.temporal import incident_event_id
from pipeline.store.bankmatch import BankBacktest, HashedFrame, hashed_frames
from pipeline.store.query import FrameFilter, FrameStore
from pipeline.store.results import BacktestResult, Incident, LabelDiff, fill_diffs
from pipeline.store.temporal import StreamLayout, find_incidents

__all__ = ["backtest_hashes", "combine"]

_F32 = npt.NDArray[np.float32]


def backtest_hashes(
    policies: LoadedPolicies,
    store: FrameStore,
    banks: BankSnapshot,
    *,
    flt: FrameFilter | None = None,
    against: LoadedPolicies | None = None,
    allow_empty: bool = False,
) -> BacktestResult:
    """Judge with the hash policies of ``policies`` the hashed stored frames ``flt`` keeps,
    find their incidents, and compare with ``against``'s hash policies or, by default, those
    of the policy sets stored with the frames (see the module docstring). :class:`StoreError`
    when no stored frame has a hash (unless ``allow_empty``: a result of no frames, as beside
    a CLIP backtest of a store kept before frames were hashed), or a stored set's snapshot is
    missing (then pass ``against``)."""
    started = time.perf_counter()
    counts = BankBacktest()
    frames = _in_order([f for batch in hashed_frames(store, flt, counts) for f in batch])
    if not frames and not allow_empty:
        raise StoreError(_nothing(counts, flt))
    sets = _Sets(store, against)
    codes = np.asarray([sets.code(f.policy_set) for f in frames], dtype=np.int64)
    streams = [(name, list(group)) for name, group in _by_stream(frames)]
    layout = StreamLayout.of(np.cumsum([0] + [len(g) for _, g in streams[:-1]]), len(frames))
    ts = np.asarray([f.ts for f in frames], dtype=np.float64)
    new_policies = [hp.policy for hp in policies.hashes]
    new = _judge(streams, banks, len(frames), lambda _code: new_policies, np.zeros_like(codes))
    old = _judge(streams, banks, len(frames), sets.policies, codes)
    new_found = [
        i for p in new_policies for i in _incidents(new.get(_key(p)), {0: p}, p, frames, ts, layout)
    ]
    old_found = [
        i
        for key, arrays in old.items()
        for i in _incidents(arrays, sets.versions(key), None, frames, ts, layout)
    ]
    labels = _diff(new_policies, sets, new, old, new_found, old_found)
    models = sorted({f.model for f in frames})
    return BacktestResult(
        model=flt.model if flt is not None and flt.model else ", ".join(models),
        weights_sha256="",
        policy_set=policies.digest,
        baseline=sets.ids,
        since=flt.since if flt is not None else None,
        until=flt.until if flt is not None else None,
        streams=[name for name, _ in streams],
        rows=counts.frames,
        other_weights=0,
        frames=len(frames),
        incidents=_sorted(new_found),
        baseline_incidents=_sorted(old_found),
        labels=labels,
        seconds=time.perf_counter() - started,
        stream_spans={name: (group[0].ts, group[-1].ts) for name, group in streams if group},
    )


def combine(clip: BacktestResult, hashes: BacktestResult) -> BacktestResult:
    """One result of a CLIP backtest and a hash backtest of the same policy set (their labels
    are distinct: a hash policy's only label is ``match``). Frames and rows are the CLIP
    backtest's."""
    return BacktestResult(
        model=clip.model,
        weights_sha256=clip.weights_sha256,
        policy_set=clip.policy_set,
        baseline=list(dict.fromkeys([*clip.baseline, *hashes.baseline])),
        since=clip.since,
        until=clip.until,
        streams=list(dict.fromkeys([*clip.streams, *hashes.streams])),
        rows=clip.rows,
        other_weights=clip.other_weights,
        frames=clip.frames,
        incidents=_sorted([*clip.incidents, *hashes.incidents]),
        baseline_incidents=_sorted([*clip.baseline_incidents, *hashes.baseline_incidents]),
        labels={**clip.labels, **hashes.labels},
        seconds=clip.seconds + hashes.seconds,
        stream_spans=_spans(clip.stream_spans, hashes.stream_spans),
    )


def _spans(*parts: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
    """Per stream, the first and last judged frame's time over several results."""
    out: dict[str, tuple[float, float]] = {}
    for part in parts:
        for name, (first, last) in part.items():
            seen = out.get(name)
            out[name] = (first, last) if seen is None else (min(seen[0], first), max(seen[1], last))
    return out


def _key(p: HashPolicy) -> str:
    return f"{p.id}/{HASH_LABEL}"


def _sorted(found: list[Incident]) -> list[Incident]:
    return sorted(found, key=lambda i: (i.stream_id, i.start_ts, i.key))


def _nothing(counts: BankBacktest, flt: FrameFilter | None) -> str:
    where = f" of model {flt.model}" if flt is not None and flt.model else ""
    return (
        f"refused: none of the {counts.frames} stored frames{where} in this range has a PDQ "
        "hash (a worker stores them while it hashes frames, `clipguard scan --store` always)"
    )


def _in_order(frames: list[HashedFrame]) -> list[HashedFrame]:
    """Stream and time order; frames whose time does not advance in their stream dropped."""
    frames.sort(key=lambda f: (f.stream_id, f.ts, f.seq, f.frame_index))
    kept: list[HashedFrame] = []
    for f in frames:
        if kept and kept[-1].stream_id == f.stream_id and f.ts <= kept[-1].ts:
            continue
        kept.append(f)
    return kept


def _by_stream(frames: Sequence[HashedFrame]) -> Any:
    return itertools.groupby(frames, key=lambda f: f.stream_id)


class _Sets:
    """The baseline: the policy sets in force for the frames (snapshots read on sight), or
    one set given for all of them."""

    def __init__(self, store: FrameStore, against: LoadedPolicies | None) -> None:
        self.store = store
        self.against = against
        self.ids: list[str] = [] if against is None else [against.digest]
        self.hashes: list[tuple[HashPolicy, ...]] = (
            [] if against is None else [tuple(hp.policy for hp in against.hashes)]
        )
        self._index: dict[str, int] = {}

    def code(self, set_id: str) -> int:
        if self.against is not None:
            return 0
        if set_id not in self._index:
            stored = self.store.policy_set(set_id)
            if stored is None:
                raise StoreError(
                    f"the store keeps no snapshot of policy set {set_id}, in force for some "
                    "of these frames: compare with --against POLICIES"
                )
            self._index[set_id] = len(self.ids)
            self.ids.append(set_id)
            self.hashes.append(stored.policies.hashes)
        return self._index[set_id]

    def policies(self, code: int) -> Sequence[HashPolicy]:
        return self.hashes[code]

    def versions(self, key: str) -> dict[int, HashPolicy]:
        """Per set (code) that has it, the policy of ``key`` as that set had it."""
        return {c: p for c, ps in enumerate(self.hashes) for p in ps if _key(p) == key}


@dataclass(eq=False)
class _Arrays:
    """One hash policy's decisions on every frame (frames it did not judge: NaN, not
    passing)."""

    score: _F32
    passed: npt.NDArray[np.bool_]
    origin: npt.NDArray[np.int64]  # the set (code) that judged the frame; -1: none
    match: list[dict[str, Any] | None] = field(default_factory=list)

    @classmethod
    def empty(cls, n: int) -> _Arrays:
        return cls(
            np.full(n, np.nan, np.float32),
            np.zeros(n, bool),
            np.full(n, -1, np.int64),
            [None] * n,
        )


def _judge(
    streams: Sequence[tuple[str, list[HashedFrame]]],
    banks: BankSnapshot,
    total: int,
    policies_of: Any,
    codes: npt.NDArray[np.int64],
) -> dict[str, _Arrays]:
    """Every stream's frames judged as the worker judges them, each run of frames stored
    under one set with that set's hash policies (``policies_of(code)``); the stream's vPDQ
    windows carry over from one run to the next, as they do live across a reload."""
    out: dict[str, _Arrays] = {}
    first = 0
    for _, frames in streams:
        windows: dict[str, Any] = {}
        runs = itertools.groupby(range(len(frames)), key=lambda i: int(codes[first + i]))
        for code, run in runs:
            at = [first + i for i in run]
            policies = policies_of(code)
            if not policies:
                continue
            judged = judge_frames(
                policies,
                [PdqHash(frames[i - first].pdq, frames[i - first].quality) for i in at],
                [frames[i - first].ts for i in at],
                banks,
                windows=windows,
            )
            for i, decisions in zip(at, judged.decisions, strict=True):
                for d in decisions:
                    a = out.setdefault(d.key, _Arrays.empty(total))
                    a.score[i], a.passed[i], a.origin[i] = d.score, d.passed, code
                    a.match[i] = None if d.match is None else d.match.model_dump(mode="json")
        first += len(frames)
    return out


def _incidents(
    arrays: _Arrays | None,
    versions: Mapping[int, HashPolicy],
    rule_of: HashPolicy | None,
    frames: Sequence[HashedFrame],
    ts: npt.NDArray[np.float64],
    layout: StreamLayout,
) -> list[Incident]:
    """The incidents of one policy: the rule of ``rule_of`` (default: the last set's version),
    the facts (version, severity, ...) of the version in force at each incident's start."""
    if arrays is None or not versions:
        return []
    rule = (rule_of or versions[max(versions)]).temporal
    found = find_incidents(ts, arrays.passed, arrays.score, rule, layout)
    out = []
    for start, end, peak in zip(
        found.start.tolist(), found.end.tolist(), found.peak.tolist(), strict=True
    ):
        p = versions.get(int(arrays.origin[start]), rule_of or versions[max(versions)])
        f, top = frames[start], frames[peak]
        out.append(
            Incident(
                event_id=incident_event_id(f.stream_id, p.id, p.version, HASH_LABEL, f.ts),
                stream_id=f.stream_id,
                policy=p.id,
                label=HASH_LABEL,
                policy_version=p.version,
                severity=p.severity,
                action=p.action,
                mode=p.mode,
                start_ts=f.ts,
                end_ts=frames[end].ts,
                peak_ts=top.ts,
                peak_score=round(float(arrays.score[peak]), 6),
                threshold=similarity(p.max_distance),
                margin=None,
                top_prompt="",
                peak_seq=top.seq,
                peak_frame_index=top.frame_index,
                peak_tile=0,
                match=arrays.match[peak],
            )
        )
    return out


def _diff(
    policies: Sequence[HashPolicy],
    sets: _Sets,
    new: Mapping[str, _Arrays],
    old: Mapping[str, _Arrays],
    new_found: Sequence[Incident],
    old_found: Sequence[Incident],
) -> dict[str, LabelDiff]:
    out: dict[str, LabelDiff] = {}
    for p in policies:
        out[_key(p)] = LabelDiff(
            _key(p), mode=p.mode, kind="pdq", cutoff=similarity(p.max_distance)
        )
    for ps in sets.hashes:
        for p in ps:
            if _key(p) not in out:
                out[_key(p)] = LabelDiff(
                    _key(p), mode="", kind="pdq", cutoff=similarity(p.max_distance)
                )
    fill_diffs(out, new, old, new_found, old_found)
    return out
