"""A first backtest of a store: margins and top prompts computed only for the frames an
incident can report give exactly what every frame's would, and the cosine cache written
behind (after the answer) holds every row, so the next run reads no embedding; a store file
rewritten before the writer ran, corrupt entries and the writer's bound leave the results
right. Real Parquet stores, real cache files, the real writer thread."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from pipeline.policies.judge import FrameRef
from pipeline.store import FrameInfo, StoreWriter, frame_table, snapshot_bytes
from pipeline.store.cosinecache import CACHE_DIR, CosineCache
from pipeline.store.results import BacktestResult
from tests.test_store_cosinecache import _compile, _entries, _run, _spoil, _write
from tests.test_store_cosinecache import model as model  # the module's fixture

pytestmark = pytest.mark.usefixtures("policy_cache")


def _doc(r: BacktestResult) -> dict[str, object]:
    """Everything a backtest reports (incidents with margins and top prompts, both sides,
    histograms, counts), but its duration."""
    doc = r.to_json()
    doc.pop("seconds")
    doc["baseline_incidents"] = [i.to_json() for i in r.baseline_incidents]
    return doc


def _behind(model, policies, where, cache: CosineCache) -> BacktestResult:  # type: ignore[no-untyped-def]
    from pipeline.store import backtest, open_store

    return backtest(
        policies,
        open_store(where),
        model=model.name,
        weights_sha256=model.fingerprint(),
        cache=cache,
        write_behind=True,
    )


def _held(cache: CosineCache, monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Make ``cache``'s disk slow: nothing is written until the event is set."""
    release = threading.Event()
    real_put = cache.put

    def slow_put(key, cosines):  # type: ignore[no-untyped-def]
        release.wait(30)
        return real_put(key, cosines)

    monkeypatch.setattr(cache, "put", slow_put)
    return release


def _stored(model, tmp_path: Path):  # type: ignore[no-untyped-def]
    """The demo policies as deployed, the same with a threshold of 0.2, a store written under
    the deployed ones, and the edit's backtest without a cache (the reference)."""
    deployed = _compile(model)
    edited = _compile(model, threshold=0.2)
    where = tmp_path / "store"
    _write(where, model, deployed)
    return deployed, edited, where, _run(model, edited, where, False)


def test_written_behind_the_backtest_answers_first_and_the_next_reads_no_embedding(
    model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, edited, where, plain = _stored(model, tmp_path)
    assert len(plain.incidents) >= 10
    folder = where / CACHE_DIR / "cosines"
    first = CosineCache(folder)
    release = _held(first, monkeypatch)
    got = _behind(model, edited, where, first)
    assert _doc(got) == _doc(plain)  # to the last digit: a frame's cosines are batch-free
    assert _entries(folder) == []  # the answer came before any entry
    release.set()
    first.flush()
    assert len(_entries(folder)) == 9  # every row group of the three files
    warm = CosineCache(folder)
    assert _doc(_run(model, edited, where, warm)) == _doc(plain)
    # every row, those computed only for the reported frames too, came from the cache
    assert warm.misses == 0 and warm.hits > 0 and warm.rejected == 0
    # an edit of thresholds only reads the same entries
    lowered = CosineCache(folder)
    assert _doc(_run(model, _compile(model, threshold=0.1), where, lowered)) == _doc(
        _run(model, _compile(model, threshold=0.1), where, False)
    )
    assert lowered.misses == 0


def _write_tiled(where: Path, model, policies) -> None:  # type: ignore[no-untyped-def]
    """Two streams of 2-tile frames whose tiles differ: a frame's best tile, an incident's
    peak, is often not the tile that passes first."""
    rng = np.random.default_rng(7)
    rows = policies.compiled.matrix[[lab.row for lab in policies.compiled.labels]]
    writer = StoreWriter(where, row_group_size=150)
    writer.write_snapshot(
        policies.id, snapshot_bytes(policies, model=model.name, weights_sha256=model.fingerprint())
    )
    for s in range(2):
        frames = 200
        emb = rng.normal(size=(2 * frames, rows.shape[1]))
        for start in rng.choice(frames - 20, size=8, replace=False):
            for tile in range(2):
                at = 2 * start + tile + 2 * np.arange(int(rng.integers(3, 12)))
                emb[at] += rng.uniform(3, 12) * rows[rng.integers(len(rows))]
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        info = FrameInfo(
            model=model.name,
            weights_sha256=model.fingerprint(),
            preprocess="pad@64",
            policy_set=policies.id,
            policy_versions={lp.policy.id: lp.policy.version for lp in policies},
            stream_id=f"tiled-{s}",
            scored_at=1.78e9 + s,
            segment_partition=0,
            segment_offset=s,
        )
        refs = [
            FrameRef(seq=i // 4, frame_index=i % 4, ts=float(i), tile=t)
            for i in range(frames)
            for t in range(2)
        ]
        writer.write(frame_table(info, refs, emb), f"t-{s}")


@pytest.mark.parametrize("tiled", [False, True])
def test_what_incidents_report_is_what_scoring_every_frame_with_every_row_gives(
    model, tmp_path: Path, tiled: bool
) -> None:
    deployed = _compile(model)
    where = tmp_path / "store"
    if tiled:
        _write_tiled(where, model, deployed)
    else:
        _write(where, model, deployed)
    for threshold in (0.2, 0.1, None):
        edited = _compile(model, threshold=threshold)
        lazy = _run(model, edited, where, False)  # margins, top prompts of reported frames
        # a cache filled in the scan computes every row for every frame
        everything = _run(model, edited, where, CosineCache(tmp_path / f"c-{threshold}"))
        assert _doc(lazy) == _doc(everything)
        assert lazy.incidents and lazy.baseline_incidents
        margins = {i.margin for i in [*lazy.incidents, *lazy.baseline_incidents]}
        assert None not in margins and len(margins) > 5  # real margins, not placeholders
        assert len({i.top_prompt for i in lazy.incidents}) > 1


def test_an_entry_for_a_file_rewritten_before_the_writer_ran_is_never_served(
    model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deployed = _compile(model)
    edited = _compile(model, threshold=0.2)
    where = tmp_path / "store"
    _write(where, model, deployed, seed=1)
    folder = where / CACHE_DIR / "cosines"
    first = CosineCache(folder)
    release = _held(first, monkeypatch)
    _behind(model, edited, where, first)
    _write(where, model, deployed, seed=2)  # rewritten while the writer waits for the disk
    release.set()
    first.flush()  # it read the new file's embeddings for the old file's entries
    fresh = _run(model, edited, where, False)
    stale = CosineCache(folder)
    assert _doc(_run(model, edited, where, stale)) == _doc(fresh)
    assert stale.hits == 0  # every entry was keyed to the file as it was: refused
    again = CosineCache(folder)
    assert _doc(_run(model, edited, where, again)) == _doc(fresh)
    assert again.misses == 0


def test_corrupt_entries_are_misses_and_the_writer_replaces_them(model, tmp_path: Path) -> None:
    _, edited, where, plain = _stored(model, tmp_path)
    folder = where / CACHE_DIR / "cosines"
    first = CosineCache(folder)
    _behind(model, edited, where, first)
    first.flush()
    _spoil(_entries(folder))
    spoiled = CosineCache(folder)
    assert _doc(_behind(model, edited, where, spoiled)) == _doc(plain)
    assert spoiled.rejected == 8
    spoiled.flush()
    healed = CosineCache(folder)
    assert _doc(_run(model, edited, where, healed)) == _doc(plain)
    assert healed.misses == 0 and healed.rejected == 0


def test_entries_past_the_writers_bound_are_left_for_a_later_run(
    model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pipeline.store.cosinecache as cosinecache

    deployed, edited, where, plain = _stored(model, tmp_path)
    folder = where / CACHE_DIR / "cosines"
    # room for the cosines a first run keeps of two row groups of 200 frames: their labels'
    # rows (the others are computed on the writer thread)
    per_group = 200 * 4 * len(deployed.compiled.labels)
    monkeypatch.setattr(cosinecache, "MAX_BEHIND_BYTES", 2 * per_group + 100)
    small = CosineCache(folder)
    release = _held(small, monkeypatch)
    assert _doc(_behind(model, edited, where, small)) == _doc(plain)
    release.set()
    small.flush()
    assert 1 <= len(_entries(folder)) < 9
    monkeypatch.setattr(cosinecache, "MAX_BEHIND_BYTES", 512 << 20)
    later = CosineCache(folder)
    assert _doc(_behind(model, edited, where, later)) == _doc(plain)
    later.flush()
    warm = CosineCache(folder)
    assert _doc(_run(model, edited, where, warm)) == _doc(plain)
    assert warm.misses == 0 and len(_entries(folder)) == 9


def test_frames_of_other_weights_in_a_row_group_are_counted_and_left_out(
    model, tmp_path: Path
) -> None:
    import pyarrow as pa

    from pipeline.store import StoreWriter, snapshot_bytes
    from tests.test_store_cosinecache import _tables

    deployed = _compile(model)
    edited = _compile(model, threshold=0.2)
    tables = _tables(model, deployed, seed=3)
    other = []
    for t in tables[3:]:  # half the streams scored with other weights, in the same files
        at = t.schema.get_field_index("weights_sha256")
        column = t.schema.field(at)  # its type and nullability kept
        other.append(t.set_column(at, column, pa.array(["f" * 64] * len(t), column.type)))
    for where, parts in (("mixed", [*tables[:3], *other]), ("alone", tables[:3])):
        writer = StoreWriter(tmp_path / where, row_group_size=500)  # groups of both weights
        writer.write_snapshot(
            deployed.id,
            snapshot_bytes(deployed, model=model.name, weights_sha256=model.fingerprint()),
        )
        writer.write(pa.concat_tables(parts), "part-0")
    alone = _run(model, edited, tmp_path / "alone", False)
    for cache in (False, CosineCache(tmp_path / "cache")):
        mixed = _run(model, edited, tmp_path / "mixed", cache)
        assert mixed.other_weights == sum(len(t) for t in other)
        assert mixed.rows == alone.rows + mixed.other_weights
        a, b = _doc(mixed), _doc(alone)
        for doc in (a, b):
            doc.pop("rows"), doc.pop("other_weights")
        assert a == b
