"""The matrix cache beside a store: a cached search returns exactly what an uncached one
returns (ties included, in store order) and what a brute-force product over the stored frames
ranks first; a rewritten store file is never served from the cache; corrupt or hostile entries
are ignored (and replaced); the cache keeps to its bound; a store where it cannot be written,
or on another filesystem, is searched uncached. Real Parquet stores and cache files."""

from __future__ import annotations

import json
import os
import struct
import threading
from pathlib import Path

import crc32c
import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from pipeline.errors import StoreError
from pipeline.policies.judge import FrameRef
from pipeline.store import FrameFilter, FrameInfo, StoreWriter, frame_table, open_store, search
from pipeline.store.cosinecache import CACHE_DIR
from pipeline.store.halfs import half_dots
from pipeline.store.location import StoreLocation
from pipeline.store.matrixcache import CHECK_ROWS, MatrixCache
from pipeline.store.search import SearchHit

MODEL = "test-model"
WEIGHTS = "c" * 64
DIM = 32
FILES = 5
STREAM_ROWS = 3000  # two streams a file: 6000 rows, row groups of 5000 and 1000
TIED = 40  # frames holding the very same embedding, spread over every file


def _query() -> np.ndarray:
    return np.random.default_rng(7).normal(size=DIM).astype(np.float32)


def _write(where: str | Path | StoreLocation, seed: int = 1) -> None:
    """FILES files of two streams each; ``TIED`` frames (8 a file) hold one embedding close
    to the query, so the top results cut through a tie."""
    writer = StoreWriter(where, row_group_size=5000)
    rng = np.random.default_rng(seed)
    close = _query() + 0.05 * rng.normal(size=DIM)
    for n in range(FILES):
        tables = []
        for s in (2 * n, 2 * n + 1):
            emb = rng.normal(size=(STREAM_ROWS, DIM))
            emb[rng.choice(STREAM_ROWS, TIED // FILES // 2, replace=False)] = close
            info = FrameInfo(
                model=MODEL,
                weights_sha256=WEIGHTS,
                preprocess="pad@64",
                policy_set="p" * 16,
                policy_versions={"p": 1},
                stream_id=f"cam-{s}",
                scored_at=1.78e9 + s * 3600,
                segment_partition=s % 2,
                segment_offset=s,
            )
            refs = [FrameRef(seq=i // 4, frame_index=i % 4, ts=float(i)) for i in range(len(emb))]
            tables.append(frame_table(info, refs, emb / np.linalg.norm(emb, axis=1)[:, None]))
        writer.write(pa.concat_tables(tables), f"part-{n}")


def _brute_force(
    where: Path, query: np.ndarray, top: int, streams: tuple[str, ...] = ()
) -> list[str]:
    """The ids of the ``top`` frames nearest ``query`` by a plain NumPy product over every
    stored frame read in store order (file, row), ties to the first."""
    ids, rows = [], []
    for f in open_store(where).files(FrameFilter(model=MODEL)):
        table = pq.read_table(f.path, columns=["frame_id", "stream_id", "embedding"])
        keep = [not streams or s in streams for s in table.column("stream_id").to_pylist()]
        table = table.filter(pa.array(keep))
        ids += table.column("frame_id").to_pylist()
        for value in table.column("embedding").to_pylist():
            rows.append(np.frombuffer(value, "<f2"))
    q = query / np.linalg.norm(query)
    sims = np.stack(rows).astype(np.float32) @ q.astype(np.float32)
    return [ids[i] for i in np.argsort(-sims, kind="stable")[:top]]


def _found(hits: list[SearchHit]) -> list[tuple[str, float, str, float]]:
    return [(h.frame_id, h.score, h.stream_id, h.ts) for h in hits]


def _search(where, cache, top: int = 20, flt=None) -> list[SearchHit]:  # type: ignore[no-untyped-def]
    return search(open_store(where), _query(), model=MODEL, top=top, flt=flt, cache=cache)


def _entries(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.f16"))


def test_half_dots_gives_a_row_the_same_result_wherever_it_is_stored() -> None:
    rng = np.random.default_rng(0)
    rows = (rng.normal(size=(301, 512)) / 22).astype(np.float16)
    rows[0, :4] = [np.inf, -np.inf, 0, -0.0]
    rows[1, 7] = np.nan
    q = rng.normal(size=512).astype(np.float32)
    whole = np.empty(301, np.float32)
    half_dots(rows, q, whole)
    # each row alone, and the rows at an odd offset in a bigger buffer: the same bits
    raw = np.zeros(301 * 512 + 3, np.uint16)
    shifted = raw[3:].reshape(301, 512)
    shifted[:] = rows.view(np.uint16)
    moved = np.empty(301, np.float32)
    half_dots(shifted, q, moved)
    one = np.empty(1, np.float32)
    for i in (2, 150, 300):
        half_dots(rows[i : i + 1], q, one)
        assert one[0] == whole[i]
    assert np.array_equal(whole, moved, equal_nan=True)
    assert not np.isfinite(whole[0]) and np.isnan(whole[1])  # infinities, and a NaN
    np.testing.assert_allclose(whole[2:], rows[2:].astype(np.float32) @ q, rtol=0, atol=2e-6)
    with pytest.raises(ValueError, match="query"):
        half_dots(rows, q[:5], whole)
    with pytest.raises(ValueError, match="float16"):
        half_dots(rows.astype(np.float32), q, whole)  # type: ignore[arg-type]


def test_a_cached_search_returns_exactly_what_an_uncached_one_returns(tmp_path: Path) -> None:
    where = tmp_path / "store"
    _write(where)
    plain = _search(where, False)
    assert not (where / CACHE_DIR).exists()  # cache=False writes nothing
    # the top 20 cut through the 40 tied frames: the first in store order are kept
    assert len({h.score for h in plain}) == 1
    assert [h.frame_id for h in plain] == _brute_force(where, _query(), 20)
    cold = MatrixCache(where / CACHE_DIR / "matrices")
    assert _found(_search(where, cold)) == _found(plain)
    assert cold.hits == 0 and len(_entries(cold.folder)) == 2 * FILES  # one per row group
    warm = MatrixCache(cold.folder)
    assert _found(_search(where, warm)) == _found(plain)
    assert warm.misses == 0 and warm.hits == 2 * FILES
    # past the ties, and with a stream filter (rows taken from whole cached groups)
    wide = _search(where, MatrixCache(cold.folder), top=60)
    assert _found(wide) == _found(_search(where, False, top=60))
    assert [h.frame_id for h in wide] == _brute_force(where, _query(), 60)
    flt = FrameFilter(streams=("cam-1", "cam-6"))
    picked = _search(where, MatrixCache(cold.folder), top=30, flt=flt)
    assert {h.stream_id for h in picked} == {"cam-1", "cam-6"}
    assert _found(picked) == _found(_search(where, False, top=30, flt=flt))
    assert [h.frame_id for h in picked] == _brute_force(where, _query(), 30, ("cam-1", "cam-6"))
    # the default: the store's own _cache folder
    assert _found(_search(where, True)) == _found(plain)
    with pytest.raises(StoreError, match="values"):
        search(open_store(where), _query()[:5], model=MODEL, cache=MatrixCache(cold.folder))


def test_a_rewritten_store_file_is_never_served_from_the_cache(tmp_path: Path) -> None:
    where = tmp_path / "store"
    _write(where, seed=1)
    folder = where / CACHE_DIR / "matrices"
    before = _search(where, MatrixCache(folder))
    _write(where, seed=2)  # the same files rewritten with other frames
    fresh = _search(where, False)
    assert _found(fresh) != _found(before)
    stale = MatrixCache(folder)
    assert _found(_search(where, stale)) == _found(fresh)
    assert stale.hits == 0 and stale.rejected == 2 * FILES  # every old entry refused
    again = MatrixCache(folder)
    assert _found(_search(where, again)) == _found(fresh)
    assert again.misses == 0


def _spoil(entries: list[Path]) -> None:
    """Damage entries in every way a disk, a crash or a hostile writer might."""
    flip = bytearray(entries[0].read_bytes())
    flip[-3] ^= 0x40  # a bit of a value: its chunk's checksum no longer matches
    entries[0].write_bytes(bytes(flip))
    entries[1].write_bytes(entries[1].read_bytes()[:-8])  # truncated
    entries[2].unlink()
    entries[2].symlink_to(entries[3])  # a link (to another row group's entry)
    entries[4].unlink()
    os.mkfifo(entries[4])  # a pipe: must not block the reader
    magic = entries[5].read_bytes()[:8]
    entries[5].write_bytes(magic + struct.pack("<I", 1 << 30) + b"{}")  # huge header
    entries[6].write_bytes(magic + struct.pack("<I", 5) + b"{nope" + b"\0" * 64)
    entries[7].write_bytes(b"PAR1" + os.urandom(100))  # not an entry at all
    # well-formed entries with the right checksums: one of another width (its size fits
    # that width), and another row group's entry under this one's name
    data = entries[8].read_bytes()
    length = struct.unpack("<I", data[8:12])[0]
    fields = json.loads(data[12 : 12 + length])
    count, width = fields["count"], DIM // 2
    body = data[-2 * DIM * count :][: 2 * width * count]
    step = 2 * width * CHECK_ROWS
    fields["dim"] = width
    fields["crc32c"] = [crc32c.crc32c(body[i : i + step]) for i in range(0, len(body), step)]
    head = json.dumps(fields, separators=(",", ":")).encode()
    head = magic + struct.pack("<I", len(head)) + head
    entries[8].write_bytes(head + b"\0" * (-len(head) % 4096) + body)
    entries[9].write_bytes(entries[3].read_bytes())


def test_corrupt_and_hostile_cache_entries_are_ignored_and_replaced(tmp_path: Path) -> None:
    where = tmp_path / "store"
    _write(where)
    plain = _search(where, False, top=60)
    folder = where / CACHE_DIR / "matrices"
    _search(where, MatrixCache(folder))
    entries = sorted(_entries(folder), key=lambda p: -p.stat().st_size)
    assert len(entries) == 10 and entries[0].stat().st_size > 2 * DIM * CHECK_ROWS  # 2 chunks
    _spoil(entries)
    spoiled = MatrixCache(folder)
    assert _found(_search(where, spoiled, top=60)) == _found(plain)
    assert spoiled.rejected == 9 and spoiled.hits == 1  # entries[3] is whole
    healed = MatrixCache(folder)
    assert _found(_search(where, healed, top=60)) == _found(plain)
    assert healed.misses == 0 and healed.rejected == 0
    assert all(p.is_file() and not p.is_symlink() for p in _entries(folder))


def test_the_cache_keeps_to_its_bound(tmp_path: Path) -> None:
    where = tmp_path / "store"
    _write(where)
    plain = _search(where, False)
    folder = tmp_path / "cache"
    _search(where, MatrixCache(folder))
    bound = sum(p.stat().st_size for p in _entries(folder)) // 2
    small = MatrixCache(folder, max_bytes=bound)
    assert _found(_search(where, small)) == _found(plain)
    assert 0 < sum(p.stat().st_size for p in _entries(folder)) <= bound
    with pytest.raises(ValueError, match="max_bytes"):
        MatrixCache(folder, max_bytes=-1)


def test_without_a_writable_cache_or_off_the_local_disk_the_search_runs_uncached(
    tmp_path: Path,
) -> None:
    where = tmp_path / "store"
    _write(where)
    plain = _search(where, False)
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the cache folder would go")
    cache = MatrixCache(blocked / "matrices")
    assert _found(_search(where, cache)) == _found(plain)
    assert not cache.writable and cache.hits == 0
    # a store on another filesystem (pyarrow's in-memory one): no default cache
    remote = StoreLocation(pafs._MockFileSystem(), "bucket/frames", "mock://bucket/frames")
    _write(remote)
    assert MatrixCache.beside(remote) is None
    assert [h.frame_id for h in search(open_store(remote), _query(), model=MODEL, top=20)] == [
        h.frame_id for h in plain
    ]


def test_written_behind_the_search_returns_first_and_fills_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    where = tmp_path / "store"
    _write(where)
    plain = _search(where, False)
    folder = where / CACHE_DIR / "matrices"
    behind = MatrixCache(folder)
    got = search(open_store(where), _query(), model=MODEL, top=20, cache=behind, write_behind=True)
    assert _found(got) == _found(plain)
    behind.flush()  # the writer thread ends once its entries are written
    assert len(_entries(folder)) == 2 * FILES
    warm = MatrixCache(folder)
    assert _found(_search(where, warm)) == _found(plain)
    assert warm.misses == 0 and warm.hits == 2 * FILES

    # at most MAX_BEHIND_BYTES wait: beyond that an entry is left for a later search
    import pipeline.store.matrixcache as matrixcache

    for entry in _entries(folder):
        entry.unlink()
    monkeypatch.setattr(matrixcache, "MAX_BEHIND_BYTES", 5000 * DIM * 2)  # one big group
    small = MatrixCache(folder)
    blocker = threading.Event()
    real_put = small.put

    def slow_put(key, emb):  # type: ignore[no-untyped-def]
        blocker.wait(30)  # the disk is slow: nothing is written while the search runs
        return real_put(key, emb)

    monkeypatch.setattr(small, "put", slow_put)
    got = search(open_store(where), _query(), model=MODEL, top=20, cache=small, write_behind=True)
    assert _found(got) == _found(plain)
    blocker.set()
    small.flush()
    assert 1 <= len(_entries(folder)) < 2 * FILES  # some written, the rest left out
    later = MatrixCache(folder)
    _search(where, later)  # a later search fills in the rest
    assert len(_entries(folder)) == 2 * FILES


def test_the_writer_reads_the_groups_again_and_skips_a_file_rewritten_since(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A search writing behind hands the writer no arrays of its own: the writer reads each
    row group again once the answer is out, and leaves out a file that changed meanwhile."""
    where = tmp_path / "store"
    _write(where)
    folder = where / CACHE_DIR / "matrices"
    cache = MatrixCache(folder)
    offered: list[object] = []
    real_offer = cache._behind.offer

    def offer(item, nbytes, max_bytes):  # type: ignore[no-untyped-def]
        offered.append(item[1])
        return real_offer(item, nbytes, max_bytes)

    monkeypatch.setattr(cache._behind, "offer", offer)
    first = threading.Event()
    blocker = threading.Event()
    real_put = cache.put

    def held_put(key, emb):  # type: ignore[no-untyped-def]
        first.set()
        blocker.wait(30)  # the writer stops after reading its first group
        return real_put(key, emb)

    monkeypatch.setattr(cache, "put", held_put)
    got = search(open_store(where), _query(), model=MODEL, top=20, cache=cache, write_behind=True)
    assert offered and all(callable(x) for x in offered)  # functions, not the search's arrays
    assert first.wait(30)
    store_files = sorted(where.rglob("*.parquet"))
    for f in store_files:  # every stored file changes under the waiting writer
        os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))
    blocker.set()
    cache.flush()
    assert len(_entries(folder)) == 1  # the group read before the change, no other
    later = MatrixCache(folder)
    assert _found(_search(where, later)) == _found(got)  # the stale entry is never served
    assert later.hits == 0 and later.misses == 2 * FILES
