"""The temporal rules over whole stored streams at once: pass/fail arrays in, incidents out.

:class:`~pipeline.policies.temporal.IncidentTracker` applies a policy's
:class:`~pipeline.policies.schema.Temporal` rule one frame at a time, which is what a live
stream needs and about a million times too slow for a backtest over stored frames.
:func:`find_incidents` gives the same incidents (same first passing frame, last passing frame,
peak, and so the same event ids) for many streams laid end to end, with NumPy doing the
per-frame work and a compiled loop (numba) stepping once per incident. No library implements
these rules (they are clipguard's own), hence the hand-written kernel;
``tests/test_store_temporal.py`` proves it equal to the tracker on random sequences
(hypothesis) and on real streams.

How it works, for frames ``0..N-1`` of one stream (each stream restarts the same reasoning):

- The tracker's k-of-n window is cleared when an incident opens and when it closes; frames in
  a cooldown are not added to it. Call ``p`` the frame from which the window fills again. For
  the first ``n - 1`` frames after ``p`` the window only grows, so the count of passing frames
  never drops there: at most one *run* (a stretch where the k-of-n condition holds) starts in
  that stretch, at the ``k``-th passing frame after ``p``. From ``p + n - 1`` on, the window is
  the plain last-``n`` window, whatever ``p`` was: its runs, and the frame where each opens
  (the first passing frame at least ``min_duration_s`` after the run's first passing frame)
  are computed once for the whole array.
- An open incident closes at the first frame ending ``close_after`` failing frames in a row
  (all after the opening frame, which passed), also computed once; its end is the last passing
  frame before that, its peak the first highest-scoring passing frame from its start to its
  end. A stream's end closes an incident still open, like :meth:`IncidentTracker.finish`.
- After a close, ``p`` is the next frame, or the first frame at or after the cooldown's end.

Time comparisons use the tracker's own float expressions (``ts - start < min_duration_s``,
``ts < last_pass + cooldown_s``), so boundary frames fall the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Final

import numba
import numpy as np
import numpy.typing as npt

from pipeline.policies.schema import Temporal

__all__ = ["IncidentArrays", "StreamLayout", "find_incidents"]

_Index = npt.NDArray[np.int64]
_NONE: Final = -1


@dataclass(frozen=True, eq=False)
class StreamLayout:
    """Frames of several streams laid end to end: stream ``i`` holds frames
    ``starts[i]`` to ``starts[i + 1] - 1``. Build with :meth:`of`; shared by every label's
    :func:`find_incidents` call."""

    starts: _Index  # (S,) first frame of each stream, increasing, starts[0] == 0
    stream: _Index  # (N,) stream of each frame
    first: _Index  # (N,) first frame of the frame's stream
    last: _Index  # (N,) last frame of the frame's stream
    index: _Index  # (N,) 0..N-1

    @classmethod
    def of(cls, starts: npt.ArrayLike, frames: int) -> StreamLayout:
        """The layout of ``frames`` frames whose streams begin at ``starts`` (empty when
        ``frames`` is 0)."""
        s = np.asarray(starts, dtype=np.int64).reshape(-1)
        if frames == 0:
            empty = np.zeros(0, dtype=np.int64)
            return cls(starts=empty, stream=empty, first=empty, last=empty, index=empty)
        if len(s) == 0 or s[0] != 0 or np.any(np.diff(s) <= 0) or s[-1] >= frames:
            raise ValueError("stream starts must begin at 0 and strictly increase below the count")
        bounds = np.append(s, frames)
        stream = np.repeat(np.arange(len(s), dtype=np.int64), np.diff(bounds))
        return cls(
            starts=s,
            stream=stream,
            first=s[stream],
            last=bounds[1:][stream] - 1,
            index=np.arange(frames, dtype=np.int64),
        )

    def __len__(self) -> int:
        return int(self.index.shape[0])


@dataclass(frozen=True, eq=False)
class IncidentArrays:
    """Incidents as frame indices, in stream and time order.

    ``closed`` is the frame whose failure closed the incident (the ``close_after``-th failing
    frame in a row), or -1 when the stream's end closed it."""

    start: _Index  # first passing frame (IncidentEvent.start_ts)
    end: _Index  # last passing frame (end_ts)
    peak: _Index  # first highest-scoring passing frame (peak_ts, peak_score)
    opened: _Index  # the frame at which the rule opened it
    closed: _Index  # see above
    stream: _Index  # the stream (index into StreamLayout.starts)

    def __len__(self) -> int:
        return int(self.start.shape[0])


def find_incidents(
    ts: npt.NDArray[np.float64],
    passed: npt.NDArray[np.bool_],
    score: npt.NDArray[np.floating],
    rule: Temporal,
    layout: StreamLayout | None = None,
) -> IncidentArrays:
    """The incidents ``rule`` finds in frames with times ``ts``, pass flags ``passed`` and
    scores ``score`` (one label), streams laid out as ``layout`` (default: one stream). Within
    a stream ``ts`` must strictly increase (the tracker ignores any other frame: drop those
    first). Every stream is finished at its last frame."""
    frames = int(ts.shape[0])
    if passed.shape != (frames,) or score.shape != (frames,):
        raise ValueError(f"ts, passed and score must have one value per frame ({frames})")
    lay = layout if layout is not None else StreamLayout.of([0] if frames else [], frames)
    if len(lay) != frames:
        raise ValueError(f"a layout of {len(lay)} frames for {frames} frames")
    if frames == 0 or not passed.any():
        return _collect([], [], [], [], [], [])
    return _Kernel(ts, passed, score, rule, lay).run()


# --------------------------------------------------------------------------------------------


class _Kernel:
    """One label's arrays and what is computed once for them; :meth:`run` steps per
    incident."""

    def __init__(
        self,
        ts: npt.NDArray[np.float64],
        passed: npt.NDArray[np.bool_],
        score: npt.NDArray[np.floating],
        rule: Temporal,
        lay: StreamLayout,
    ) -> None:
        self.ts, self.passed, self.score, self.lay = ts, passed, score, lay
        self.k, self.n = rule.k, rule.n
        self.min_s, self.close_after, self.cooldown = (
            rule.min_duration_s,
            rule.close_after,
            rule.cooldown_s,
        )
        self.pass_idx: _Index = np.flatnonzero(passed).astype(np.int64)
        # k of the last n frames (the window starting no earlier than the stream's first
        # frame), its runs, the last passing frame so far and the frames that close: one
        # compiled pass (_windows)
        holds, last_pass, run_start, run_end, close_at = _windows(
            passed, lay.first, lay.last, self.k, self.n, self.close_after
        )
        self.holds: npt.NDArray[np.bool_] = holds
        self.run_start: _Index = run_start
        self.run_end: _Index = run_end
        # the first passing frame in each run's first window, and the frame where it opens
        low = np.maximum(run_start - (self.n - 1), lay.first[run_start])
        self.run_first = self.pass_idx[np.searchsorted(self.pass_idx, low)]
        run_open = self._run_opens()
        self.good = np.flatnonzero(run_open != _NONE)
        self.good_start = self.run_start[self.good]
        self.run_open = run_open
        self.last_pass: _Index = last_pass
        self.close_at: _Index = close_at

    def _run_opens(self) -> _Index:
        """Per run: the first passing frame of it at least ``min_duration_s`` after its first
        passing frame, or -1."""
        if self.min_s <= 0:
            return self.run_start.copy()  # a run begins on a passing frame
        opens = np.full(len(self.run_start), _NONE, dtype=np.int64)
        q = self.pass_idx
        run = np.searchsorted(self.run_start, q, side="right") - 1
        inside = run >= 0
        inside[inside] = q[inside] <= self.run_end[run[inside]]
        q, run = q[inside], run[inside]
        ok = ~(self.ts[q] - self.ts[self.run_first[run]] < self.min_s)
        q, run = q[ok], run[ok]
        first_of_run, where = np.unique(run, return_index=True)
        opens[first_of_run] = q[where]
        return opens

    def run(self) -> IncidentArrays:
        lay = self.lay
        out = np.empty((5, len(self.pass_idx)), dtype=np.int64)  # an incident a passing frame
        count = _steps(
            self.ts,
            self.holds,
            self.pass_idx,
            self.run_start,
            self.run_end,
            self.run_open,
            self.run_first,
            self.good,
            self.good_start,
            self.last_pass,
            self.close_at,
            lay.last,
            lay.stream,
            self.k,
            self.n,
            float(self.min_s),
            float(self.cooldown),
            out,
        )
        start, end, opened, closed, stream = (np.ascontiguousarray(c[:count]) for c in out)
        incidents = IncidentArrays(
            start=start, end=end, peak=start, opened=opened, closed=closed, stream=stream
        )
        return replace(incidents, peak=self._peaks(incidents.start, incidents.end))

    def _peaks(self, start: _Index, end: _Index) -> _Index:
        """Per incident, its first highest-scoring passing frame from ``start`` to ``end``
        (incidents disjoint and in order), for all incidents at once: the frames of every
        incident gathered, each incident's best by ``maximum.reduceat``, its first frame
        reaching it."""
        if len(start) == 0:
            return start
        lengths = end - start + 1
        offsets = np.cumsum(lengths) - lengths
        incident = np.repeat(np.arange(len(start)), lengths)
        frames = np.arange(int(lengths.sum()), dtype=np.int64) + (start - offsets)[incident]
        masked = np.where(self.passed[frames], self.score[frames], -np.inf)
        if np.isnan(masked).any():  # argmax takes a NaN as the highest: one incident at a time
            pieces = zip(start.tolist(), offsets.tolist(), lengths.tolist(), strict=True)
            return np.asarray(
                [a + int(np.argmax(masked[o : o + n])) for a, o, n in pieces], dtype=np.int64
            )
        best = np.maximum.reduceat(masked, offsets)
        hits = np.flatnonzero(masked == best[incident])
        _, first = np.unique(incident[hits], return_index=True)
        peaks: _Index = frames[hits[first]]
        return peaks


@numba.njit(cache=True, nogil=True)  # type: ignore[misc]
def _windows(passed, first, last, k, n, close_after):  # type: ignore[no-untyped-def]
    """Per frame: whether k of the last n frames of its stream pass (``holds``) and the last
    passing frame up to it (-1: none yet, across streams); the frames where a run of
    ``holds`` starts and ends (within a stream), and the failing frames ending
    ``close_after`` failing frames in a row in their stream."""
    frames = passed.shape[0]
    counts = np.zeros(frames + 1, np.int64)
    for i in range(frames):
        counts[i + 1] = counts[i] + (1 if passed[i] else 0)
    holds = np.empty(frames, np.bool_)
    for i in range(frames):
        holds[i] = counts[i + 1] - counts[max(i - (n - 1), first[i])] >= k
    last_pass = np.empty(frames, np.int64)
    starts = np.empty(frames, np.int64)
    ends = np.empty(frames, np.int64)
    closes = np.empty(frames, np.int64)
    n_starts = n_ends = n_closes = 0
    seen = _NONE
    for i in range(frames):
        if holds[i] and (i == first[i] or not holds[i - 1]):
            starts[n_starts] = i
            n_starts += 1
        if holds[i] and (i == last[i] or not holds[i + 1]):
            ends[n_ends] = i
            n_ends += 1
        if passed[i]:
            seen = i
        last_pass[i] = seen
        if not passed[i] and i - max(seen, first[i] - 1) == close_after:
            closes[n_closes] = i
            n_closes += 1
    return (
        holds,
        last_pass,
        starts[:n_starts].copy(),
        ends[:n_ends].copy(),
        closes[:n_closes].copy(),
    )


# The per-incident steps, compiled: one pass over the incidents of every stream with the arrays
# _Kernel computed (a Python loop of a few NumPy calls per incident cost about 30 us each).


@numba.njit(cache=True, nogil=True)  # type: ignore[misc]
def _steps(  # type: ignore[no-untyped-def]
    ts,
    holds,
    pass_idx,
    run_start,
    run_end,
    run_open,
    run_first,
    good,
    good_start,
    last_pass,
    close_at,
    last_of,
    stream_of,
    k,
    n,
    min_s,
    cooldown,
    out,
):
    """Write each incident's start, end, opening frame, closing frame and stream into the
    columns of ``out``; the number of incidents."""
    frames = ts.shape[0]
    count = 0
    p = 0
    while p < frames:
        last = last_of[p]
        opened, start = _next_open(
            ts, holds, pass_idx, run_start, run_end, run_open, run_first, good, good_start,
            k, n, min_s, p, last,
        )  # fmt: skip
        if opened == _NONE:
            p = last + 1
            continue
        c = np.searchsorted(close_at, opened, side="right")
        closing = close_at[c] if c < close_at.shape[0] else frames
        if closing > last:  # still open at the stream's end: finish() closes it
            end, closed, p = last_pass[last], _NONE, last + 1
        else:
            end, closed, p = last_pass[closing], closing, closing + 1
            if cooldown > 0 and p <= last:
                until = ts[end] + cooldown
                p += np.searchsorted(ts[p : last + 1], until, side="left")
        out[0, count] = start
        out[1, count] = end
        out[2, count] = opened
        out[3, count] = closed
        out[4, count] = stream_of[opened]
        count += 1
    return count


@numba.njit(cache=True, nogil=True)  # type: ignore[misc]
def _next_open(  # type: ignore[no-untyped-def]
    ts, holds, pass_idx, run_start, run_end, run_open, run_first, good, good_start, k, n, min_s,
    p, last,
):  # fmt: skip
    """The frame at which an incident opens, the window having restarted at ``p``, and the
    first passing frame of its run; (-1, -1) if none opens before ``last`` (the stream's last
    frame)."""
    q = np.searchsorted(pass_idx, p, side="left")
    if q >= pass_idx.shape[0] or pass_idx[q] > last:
        return _NONE, _NONE
    first = pass_idx[q]
    full = min(p + n - 1, last + 1)  # from here on the window is the last n frames
    kth = q + k - 1
    local = pass_idx[kth] if kth < pass_idx.shape[0] else last + 1
    begin = _NONE
    if local < full:
        begin = local
    elif full <= last and holds[full]:
        begin = full
    after = full
    if begin != _NONE:
        end = full - 1 if begin < full else full
        if full <= last and holds[full]:
            r = np.searchsorted(run_start, full, side="right") - 1
            end = run_end[r]
        opened = _open_within(ts, pass_idx, min_s, begin, end, first)
        if opened != _NONE:
            return opened, first
        after = end + 1
    g = np.searchsorted(good_start, after, side="left")
    if g < good.shape[0] and good_start[g] <= last:
        r = good[g]
        return run_open[r], run_first[r]
    return _NONE, _NONE


@numba.njit(cache=True, nogil=True)  # type: ignore[misc]
def _open_within(ts, pass_idx, min_s, begin, end, first):  # type: ignore[no-untyped-def]
    """The first passing frame in ``begin..end`` at least ``min_s`` seconds after ``first``
    (``begin`` is a passing frame), or -1."""
    if min_s <= 0:
        return begin
    t0 = ts[first]
    # a guess by binary search, then settled with the tracker's own comparison
    i = begin + np.searchsorted(ts[begin : end + 1], t0 + min_s, side="left")
    while i > begin and not (ts[i - 1] - t0 < min_s):
        i -= 1
    while i <= end and ts[i] - t0 < min_s:
        i += 1
    q = np.searchsorted(pass_idx, i, side="left")
    if q < pass_idx.shape[0] and pass_idx[q] <= end:
        return pass_idx[q]
    return _NONE


def _collect(*columns: list[int]) -> IncidentArrays:
    start, end, peak, opened, closed, stream = (np.asarray(c, dtype=np.int64) for c in columns)
    return IncidentArrays(
        start=start, end=end, peak=peak, opened=opened, closed=closed, stream=stream
    )
