"""The cosine cache beside a store: a cached backtest finds exactly what an uncached one
finds, a rewritten store file is never served from the cache, corrupt or hostile entries are
ignored (and replaced), the cache keeps to its bound, and a store where it cannot be written
(or on another filesystem) is backtested uncached. Real Parquet stores and cache files."""

from __future__ import annotations

import dataclasses
import json
import os
import struct
from pathlib import Path

import crc32c
import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pytest

from pipeline.models import DEMO_MODEL, load_clip
from pipeline.policies import load_policies
from pipeline.policies.bundled import DEMO_POLICIES
from pipeline.policies.compile import PolicyCompiler
from pipeline.policies.judge import FrameRef
from pipeline.policies.snapshot import PolicySet
from pipeline.store import (
    FrameFilter,
    FrameInfo,
    StoreWriter,
    backtest,
    frame_table,
    open_store,
    snapshot_bytes,
)
from pipeline.store.cosinecache import CACHE_DIR, CosineCache
from pipeline.store.location import StoreLocation
from pipeline.store.results import BacktestResult

pytestmark = pytest.mark.usefixtures("policy_cache")

STREAMS = 6
FRAMES = 240  # per stream


@pytest.fixture(scope="module")
def model():  # type: ignore[no-untyped-def]
    return load_clip(DEMO_MODEL)


def _compile(model, threshold: float | None = None, rolled: bool = False) -> PolicySet:  # type: ignore[no-untyped-def]
    """The demo policies (another threshold; ``rolled``: every prompt row's values rotated,
    rows the cache has not seen)."""
    policies = load_policies([DEMO_POLICIES])
    if threshold is not None:
        policies = type(policies)(
            [
                dataclasses.replace(
                    lp,
                    policy=lp.policy.model_copy(
                        update={
                            "version": lp.policy.version + 1,
                            "labels": [
                                lab.model_copy(update={"threshold": threshold})
                                for lab in lp.policy.labels
                            ],
                        }
                    ),
                )
                for lp in policies
            ]
        )
    compiled = PolicyCompiler(model).compile(policies).compiled
    if rolled:
        compiled = dataclasses.replace(compiled, matrix=np.roll(compiled.matrix, 1, axis=1))
    return PolicySet.of(policies, compiled)


def _tables(model, policies: PolicySet, seed: int) -> list[pa.Table]:  # type: ignore[no-untyped-def]
    """Per stream, FRAMES frames at 1 fps: noise, with runs of frames near a label's row."""
    rng = np.random.default_rng(seed)
    rows = policies.compiled.matrix[[lab.row for lab in policies.compiled.labels]]
    out = []
    for s in range(STREAMS):
        emb = rng.normal(size=(FRAMES, rows.shape[1]))
        for start in rng.choice(FRAMES - 20, size=6, replace=False):
            length = int(rng.integers(3, 15))
            emb[start : start + length] += rng.uniform(4, 12) * rows[rng.integers(len(rows))]
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        info = FrameInfo(
            model=model.name,
            weights_sha256=model.fingerprint(),
            preprocess="pad@64",
            policy_set=policies.id,
            policy_versions={lp.policy.id: lp.policy.version for lp in policies},
            stream_id=f"cam-{s}",
            scored_at=1.78e9 + s * 3600,
            segment_partition=s % 2,
            segment_offset=s,
        )
        refs = [FrameRef(seq=i // 4, frame_index=i % 4, ts=float(i)) for i in range(FRAMES)]
        out.append(frame_table(info, refs, emb))
    return out


def _write(where: str | Path | StoreLocation, model, policies: PolicySet, seed: int = 1) -> None:  # type: ignore[no-untyped-def]
    """Three files of two streams each, row groups of 200 rows (several a file)."""
    writer = StoreWriter(where, row_group_size=200)
    writer.write_snapshot(
        policies.id,
        snapshot_bytes(policies, model=model.name, weights_sha256=model.fingerprint()),
    )
    tables = _tables(model, policies, seed)
    for n in range(3):
        writer.write(pa.concat_tables(tables[2 * n : 2 * n + 2]), f"part-{n}")


def _run(model, policies: PolicySet, where, cache, flt=None) -> BacktestResult:  # type: ignore[no-untyped-def]
    return backtest(
        policies,
        open_store(where),
        model=model.name,
        weights_sha256=model.fingerprint(),
        flt=flt,
        cache=cache,
    )


def _same(a: BacktestResult, b: BacktestResult) -> None:
    """The same incidents (ids, times, peaks), scores equal to float32 rounding."""

    def incidents(r: BacktestResult) -> list[tuple[object, ...]]:
        return [
            (i.event_id, i.start_ts, i.end_ts, i.peak_ts, i.top_prompt)
            for i in [*r.incidents, *r.baseline_incidents]
        ]

    assert incidents(a) == incidents(b)
    peaks = [i.peak_score for r in (a, b) for i in [*r.incidents, *r.baseline_incidents]]
    half = len(peaks) // 2
    np.testing.assert_allclose(peaks[:half], peaks[half:], rtol=0, atol=1e-5)  # 6-decimal peaks
    assert a.rows == b.rows and a.frames == b.frames
    for key, d in a.labels.items():
        e = b.labels[key]
        assert (len(d.added), len(d.removed), len(d.changed)) == (
            len(e.added),
            len(e.removed),
            len(e.changed),
        )


def _entries(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.cos"))


def test_a_cached_backtest_finds_exactly_what_an_uncached_one_finds(model, tmp_path: Path) -> None:
    deployed = _compile(model)
    edited = _compile(model, threshold=0.2)
    _write(tmp_path / "store", model, deployed)
    plain = _run(model, edited, tmp_path / "store", False)
    assert len(plain.incidents) >= 10 and plain.added  # the edit finds more
    assert not (tmp_path / "store" / CACHE_DIR).exists()  # cache=False writes nothing

    cold = CosineCache(tmp_path / "store" / CACHE_DIR / "cosines")
    assert cold.empty()  # no folder yet: the scan reads embeddings ahead from the first group
    _same(_run(model, edited, tmp_path / "store", cold), plain)
    # one entry per row group (3 files of 480 rows: 200, 200, 80), each with every row
    assert cold.hits == 0 and len(_entries(cold.folder)) == 9
    assert not cold.empty()

    warm = CosineCache(cold.folder)
    _same(_run(model, edited, tmp_path / "store", warm), plain)
    assert warm.misses == 0 and warm.hits == cold.misses  # no embedding read at all

    # another edit of thresholds only: the same rows, every cosine from the cache
    other = _compile(model, threshold=0.3)
    again = CosineCache(cold.folder)
    _same(
        _run(model, other, tmp_path / "store", again), _run(model, other, tmp_path / "store", False)
    )
    assert again.misses == 0

    # other prompts (rows the cache has not seen): computed and added to the entries, which
    # keep the first prompts' cosines too
    moved = _compile(model, threshold=0.2, rolled=True)
    first = CosineCache(cold.folder)
    _same(
        _run(model, moved, tmp_path / "store", first),
        _run(model, moved, tmp_path / "store", False),
    )
    assert first.hits > 0 and first.misses > 0  # the stored set's rows hit, the new ones miss
    for policies in (moved, edited):
        both = CosineCache(cold.folder)
        _run(model, policies, tmp_path / "store", both)
        assert both.misses == 0

    # a time range and a stream: the cached whole-group cosines, the right rows taken
    flt = FrameFilter(streams=("cam-1", "cam-4"))
    _same(
        _run(model, edited, tmp_path / "store", CosineCache(cold.folder), flt),
        _run(model, edited, tmp_path / "store", False, flt),
    )

    # the default: the store's own _cache folder
    _same(_run(model, edited, tmp_path / "store", True), plain)
    assert _entries(tmp_path / "store" / CACHE_DIR / "cosines")


def test_a_rewritten_store_file_is_never_served_from_the_cache(model, tmp_path: Path) -> None:
    deployed = _compile(model)
    edited = _compile(model, threshold=0.2)
    _write(tmp_path / "store", model, deployed, seed=1)
    cache = tmp_path / "store" / CACHE_DIR / "cosines"
    before = _run(model, edited, tmp_path / "store", CosineCache(cache))
    # the same files rewritten with other frames (a delete or a replay rewrites files too)
    _write(tmp_path / "store", model, deployed, seed=2)
    fresh = _run(model, edited, tmp_path / "store", False)
    assert {i.event_id for i in fresh.incidents} != {i.event_id for i in before.incidents}
    stale = CosineCache(cache)
    _same(_run(model, edited, tmp_path / "store", stale), fresh)
    assert stale.hits == 0 and stale.rejected > 0  # every old entry refused, then replaced
    again = CosineCache(cache)
    _same(_run(model, edited, tmp_path / "store", again), fresh)
    assert again.misses == 0


def _spoil(entries: list[Path]) -> None:
    """Damage entries in every way a disk, a crash or a hostile writer might."""
    flip = bytearray(entries[0].read_bytes())
    flip[-3] ^= 0x40  # a bit of a value: the checksum no longer matches
    entries[0].write_bytes(bytes(flip))
    entries[1].write_bytes(entries[1].read_bytes()[:-8])  # truncated
    entries[2].unlink()
    entries[2].symlink_to(entries[3])  # a link (to another row's entry)
    entries[4].unlink()
    os.mkfifo(entries[4])  # a pipe: must not block the reader
    magic = entries[5].read_bytes()[:8]
    entries[5].write_bytes(magic + struct.pack("<I", 1 << 30) + b"{}")  # huge header
    entries[6].write_bytes(magic + struct.pack("<I", 5) + b"{nope" + b"\0" * 64)
    entries[7].write_bytes(b"PAR1" + os.urandom(100))  # not an entry at all
    # a well-formed entry, right checksums, for the right row group and rows, of values that
    # are not cosines
    data = entries[8].read_bytes()
    head_len = struct.unpack("<I", data[8:12])[0]
    fields = json.loads(data[12 : 12 + head_len])
    bad = np.full(fields["count"], np.nan, "<f4")
    fields["crc32c"] = [crc32c.crc32c(bad)] * len(fields["rows"])
    new = json.dumps(fields, separators=(",", ":")).encode()
    payload = bad.tobytes() * len(fields["rows"])
    entries[8].write_bytes(data[:8] + struct.pack("<I", len(new)) + new + payload)


def test_corrupt_and_hostile_cache_entries_are_ignored_and_replaced(model, tmp_path: Path) -> None:
    deployed = _compile(model)
    edited = _compile(model, threshold=0.2)
    _write(tmp_path / "store", model, deployed)
    plain = _run(model, edited, tmp_path / "store", False)
    folder = tmp_path / "store" / CACHE_DIR / "cosines"
    _run(model, edited, tmp_path / "store", CosineCache(folder))
    entries = _entries(folder)
    assert len(entries) == 9
    _spoil(entries)
    spoiled = CosineCache(folder)
    _same(_run(model, edited, tmp_path / "store", spoiled), plain)
    assert spoiled.rejected == 8  # each spoiled entry refused (entries[3] is whole)
    healed = CosineCache(folder)
    _same(_run(model, edited, tmp_path / "store", healed), plain)
    assert healed.misses == 0 and healed.rejected == 0
    assert all(p.is_file() and not p.is_symlink() for p in _entries(folder))


def test_the_cache_keeps_to_its_bound(model, tmp_path: Path) -> None:
    deployed = _compile(model)
    _write(tmp_path / "store", model, deployed)
    folder = tmp_path / "cache"
    plain = _run(model, deployed, tmp_path / "store", False)
    full = CosineCache(folder)
    _same(_run(model, deployed, tmp_path / "store", full), plain)
    sizes = [p.stat().st_size for p in _entries(folder)]
    bound = sum(sizes) // 2
    small = CosineCache(folder, max_bytes=bound)
    _same(_run(model, deployed, tmp_path / "store", small), plain)
    left = sum(p.stat().st_size for p in _entries(folder))
    assert 0 < left <= bound
    with pytest.raises(ValueError, match="max_bytes"):
        CosineCache(folder, max_bytes=-1)


def test_without_a_writable_cache_or_off_the_local_disk_the_backtest_runs_uncached(
    model, tmp_path: Path
) -> None:
    deployed = _compile(model)
    edited = _compile(model, threshold=0.2)
    _write(tmp_path / "store", model, deployed)
    plain = _run(model, edited, tmp_path / "store", False)
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the cache folder would go")
    cache = CosineCache(blocked / "cosines")
    _same(_run(model, edited, tmp_path / "store", cache), plain)
    assert not cache.writable and cache.hits == 0

    # a store on another filesystem (pyarrow's in-memory one): no default cache
    remote = StoreLocation(pafs._MockFileSystem(), "bucket/frames", "mock://bucket/frames")
    _write(remote, model, deployed)
    assert CosineCache.beside(remote) is None
    _same(_run(model, edited, remote, True), plain)


def test_the_backtest_command_takes_a_cache_folder_or_none(model, tmp_path: Path) -> None:
    import contextlib
    import io

    from consumers.cli import main

    deployed = _compile(model)
    _write(tmp_path / "store", model, deployed)

    def run(*extra: str) -> dict[str, object]:
        out = tmp_path / "report"
        argv = ["policy", "backtest", str(DEMO_POLICIES), "--store", str(tmp_path / "store")]
        with contextlib.redirect_stdout(io.StringIO()):
            assert main([*argv, "--out", str(out), *extra]) == 0
        doc = json.loads((out / "backtest.json").read_text())
        doc.pop("seconds", None)
        return doc  # type: ignore[no-any-return]

    plain = run("--no-cache")
    assert not (tmp_path / "store" / CACHE_DIR).exists()
    elsewhere = tmp_path / "elsewhere"
    assert run("--cache-dir", str(elsewhere)) == plain
    entries = _entries(elsewhere)
    assert entries and not (tmp_path / "store" / CACHE_DIR).exists()
    assert run("--cache-dir", str(elsewhere)) == plain  # warm
    assert _entries(elsewhere) == entries
    assert run() == plain  # the store's own cache
    assert _entries(tmp_path / "store" / CACHE_DIR / "cosines")
