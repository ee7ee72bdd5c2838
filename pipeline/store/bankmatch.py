"""Stored frames against hash banks: which frames of stored traffic a bank would have matched.

A bank added today (a hash list received from an industry programme, a clip reported this
morning) is run over the frames the store already keeps, as a policy edit is backtested: the
frames stored with their PDQ hash (the ``pdq`` and ``pdq_quality`` columns, store format 2)
are matched exactly, as the worker matches live frames (:class:`~pipeline.hashes.match.Matcher`:
the banks' PDQ entries and, with ``vpdq``, every frame of their videos; Hamming distance at
most ``max_distance``, frames under ``min_quality`` skipped). Frames stored without a hash
(format 1 files, or stored while nothing took one) are counted, not matched.

Each frame is matched once: replayed frames (the same ``frame_id``) are read once, and the
tiles of one frame (fit ``tiles``) share its hash, so only tile 0 is matched. Columns are read
in record batches (:meth:`~pipeline.store.query.FrameStore.batches`); memory grows with the
frame ids seen and the matches, not with the store.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Final

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.errors import StoreError
from pipeline.hashes.match import HashMatch, Matcher
from pipeline.hashes.pdq import PdqHash
from pipeline.hashes.signals import DEFAULT_MAX_DISTANCE, DEFAULT_MIN_QUALITY, SignalType
from pipeline.store.query import FrameFilter, FrameStore

__all__ = ["BankBacktest", "HashedFrame", "StoredMatch", "hashed_frames", "match_stored_frames"]

_COLUMNS: Final = (
    "frame_id",
    "model",
    "stream_id",
    "source",
    "scored_at",
    "ts",
    "seq",
    "frame_index",
    "tile",
    "policy_set",
    "pdq",
    "pdq_quality",
)
_FRAME_SIGNALS: Final[tuple[SignalType, ...]] = ("pdq", "vpdq")


@dataclass(frozen=True, slots=True)
class HashedFrame:
    """A stored frame with its PDQ hash (tile 0, the frame's own hash)."""

    frame_id: str
    model: str
    stream_id: str
    source: str | None
    scored_at: dt.datetime
    ts: float
    seq: int
    frame_index: int
    policy_set: str  # the policy set in force when it was stored
    pdq: bytes
    quality: int


@dataclass(frozen=True, slots=True)
class StoredMatch(HashedFrame):
    """A stored frame and one bank entry it matches."""

    match: HashMatch

    @classmethod
    def of(cls, frame: HashedFrame, match: HashMatch) -> StoredMatch:
        known: dict[str, Any] = {f.name: getattr(frame, f.name) for f in fields(HashedFrame)}
        return cls(**known, match=match)

    def to_json(self) -> dict[str, Any]:
        """As a JSON-ready mapping (one line of ``clipguard banks backtest --out``)."""
        m = self.match
        return {
            "frame_id": self.frame_id,
            "model": self.model,
            "stream_id": self.stream_id,
            "source": self.source,
            "scored_at": self.scored_at.isoformat(),
            "ts": self.ts,
            "seq": self.seq,
            "frame_index": self.frame_index,
            "bank": m.bank,
            "entry_id": m.entry_id,
            "signal_type": m.signal_type,
            "distance": m.distance,
            "quality": m.quality,
            "tags": list(m.tags),
        }


@dataclass
class BankBacktest:
    """What :func:`match_stored_frames` found."""

    frames: int = 0  # stored frames read (tile 0, each frame id once)
    hashed: int = 0  # of which stored with a PDQ hash
    low_quality: int = 0  # of those, under min_quality (not matched)
    matches: list[StoredMatch] = field(default_factory=list)  # by store order, nearest first

    @property
    def matched_frames(self) -> int:
        """Frames with at least one match."""
        return len({m.frame_id for m in self.matches})


def match_stored_frames(
    store: FrameStore,
    matcher: Matcher,
    *,
    banks: Sequence[str] | None = None,
    flt: FrameFilter | None = None,
    max_distance: int = DEFAULT_MAX_DISTANCE,
    min_quality: int = DEFAULT_MIN_QUALITY,
    signals: Collection[SignalType] = _FRAME_SIGNALS,
    batch_size: int = 64 * 1024,
) -> BankBacktest:
    """Match every stored frame ``flt`` keeps (default: all) that has a PDQ hash against
    ``banks`` of ``matcher`` (default: all); see the module docstring. :class:`StoreError`
    when a stored hash or quality is malformed."""
    out = BankBacktest()
    for rows in hashed_frames(store, flt, out, batch_size=batch_size):
        hashes = [PdqHash(r.pdq, r.quality) for r in rows]
        results = matcher.match_frames(
            hashes,
            banks=banks,
            max_distance=max_distance,
            min_quality=min_quality,
            signals=[s for s in signals if s in _FRAME_SIGNALS],
        )
        for r, result in zip(rows, results, strict=True):
            if result.skipped:
                out.low_quality += 1
            out.matches += [StoredMatch.of(r, m) for m in result.matches]
    return out


def hashed_frames(
    store: FrameStore,
    flt: FrameFilter | None,
    out: BankBacktest,
    *,
    batch_size: int = 64 * 1024,
    seen: set[str] | None = None,
) -> Iterator[list[HashedFrame]]:
    """The stored frames ``flt`` keeps that have a hash, batch by batch (tile 0, each frame id
    once), counting in ``out`` every frame read and every one with a hash. :class:`StoreError`
    when a stored quality is malformed."""
    seen = set() if seen is None else seen
    for batch in store.batches(_COLUMNS, flt, batch_size=batch_size):
        batch = batch.filter(pc.equal(batch.column("tile"), 0))
        if not batch.num_rows:
            continue
        data = {name: _values(batch.column(name)) for name in _COLUMNS}
        rows: list[HashedFrame] = []
        for i, frame_id in enumerate(data["frame_id"]):
            if frame_id in seen:
                continue
            seen.add(frame_id)
            out.frames += 1
            pdq, quality = data["pdq"][i], data["pdq_quality"][i]
            if pdq is None:
                continue
            if quality is None or not 0 <= quality <= 100:
                raise StoreError(f"frame {frame_id}: a stored PDQ hash with quality {quality}")
            out.hashed += 1
            rows.append(
                HashedFrame(
                    frame_id,
                    data["model"][i],
                    data["stream_id"][i],
                    data["source"][i],
                    data["scored_at"][i],
                    data["ts"][i],
                    data["seq"][i],
                    data["frame_index"][i],
                    data["policy_set"][i],
                    pdq,
                    quality,
                )
            )
        if rows:
            yield rows


def _values(column: pa.Array) -> list[Any]:
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    return list(column.to_pylist())
