"""Frames stored with their PDQ hash, and hash banks backtested on them.

``clipguard scan --store`` of real H.264 clips made here (textured, tests/knownclips.py) keeps
each sampled frame's PDQ hash beside its embedding; a bank that gets one of the clips
afterwards (``clipguard banks add --video``) is run over the store with ``clipguard banks
backtest``, which finds that clip's frames and nothing of the other. The matching itself is
checked against brute-force Hamming search over every stored hash, and stores written before
the hash columns (format 1) stay readable every way the store is read.
"""

from __future__ import annotations

import json
from pathlib import Path

import knownclips
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from consumers.cli import main
from pipeline.errors import StoreError
from pipeline.hashes.bank import BankBuilder
from pipeline.hashes.match import Matcher
from pipeline.hashes.pdq import DihedralHashes, PdqHash
from pipeline.hashes.signals import hamming
from pipeline.policies.bundled import DEMO_POLICIES
from pipeline.policies.judge import FrameRef
from pipeline.store import (
    FrameFilter,
    FrameInfo,
    StoreWriter,
    delete_streams,
    frame_table,
    open_store,
)
from pipeline.store.bankmatch import match_stored_frames
from pipeline.store.records import frames_value, read_frames_value
from pipeline.store.schema import FILE_SCHEMA, HASH_COLUMNS, RECORD_SCHEMA, frame_hashes

pytestmark = pytest.mark.usefixtures("policy_cache")


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(list(argv))
    return code, capsys.readouterr().out


def _info(stream: str, at: float = 1.7e9) -> FrameInfo:
    return FrameInfo(
        model="m",
        weights_sha256="a" * 64,
        preprocess="pad@8",
        policy_set="s" * 16,
        policy_versions={"p": 1},
        stream_id=stream,
        scored_at=at,
    )


def _refs(n: int, seq: int = 0) -> list[FrameRef]:
    return [FrameRef(seq=seq, frame_index=i, ts=seq + i / 2) for i in range(n)]


def _flip(h: bytes, bits: int, rng: np.random.Generator) -> bytes:
    """``h`` with ``bits`` distinct bits flipped."""
    out = bytearray(h)
    for b in rng.choice(256, size=bits, replace=False).tolist():
        out[b // 8] ^= 1 << (b % 8)
    return bytes(out)


# --------------------------------------------------------------------------------------------
# end to end: scan --store, a bank made afterwards, banks backtest


def test_a_bank_added_after_a_scan_finds_the_stored_frames_of_its_clip(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clips = tmp_path / "clips"
    known = knownclips.write(clips / "known.mp4", knownclips.frames(2, 3.0))
    knownclips.write(clips / "other.mp4", knownclips.frames(5, 3.0))
    store = tmp_path / "store"
    code, _ = _run(
        capsys,
        "scan", str(clips), "--policies", str(DEMO_POLICIES), "--store", str(store),
        "--out", str(tmp_path / "out"),
    )  # fmt: skip
    assert code == 0
    frames = open_store(store).frames()
    assert frames.num_rows == 6  # 3 s of each clip at 1 frame a second
    assert frames.column("pdq").null_count == 0
    qualities = frames.column("pdq_quality").to_pylist()
    assert all(q >= 50 for q in qualities)  # textured: every frame is matchable

    # the known clip joins a bank only now (vPDQ: its frames, one a second, full size)
    banks = tmp_path / "banks"
    argv = ["banks", "add", "known", "--video", str(known), "--id", "case-9", "--tags", "spam"]
    assert main([*argv, "--dir", str(banks)]) == 0
    out_file = tmp_path / "matches.jsonl"
    code, text = _run(
        capsys,
        "banks", "backtest", "known", "--dir", str(banks), "--store", str(store),
        "--out", str(out_file),
    )  # fmt: skip
    assert code == 0
    assert "6 stored frames read, 6 with a PDQ hash (0 under quality 50); 3 frames matched" in text
    lines = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert {Path(m["stream_id"]).name for m in lines} == {"known.mp4"}
    assert sorted({m["ts"] for m in lines}) == [0.0, 1.0, 2.0]
    for m in lines:
        assert (m["bank"], m["entry_id"], m["signal_type"]) == ("known", "case-9", "vpdq")
        assert m["tags"] == ["spam"] and 0 <= m["distance"] <= 31
    assert "case-9" in text  # the table of matches

    # the same bank, other streams only: nothing
    code, text = _run(
        capsys,
        "banks", "backtest", "known", "--dir", str(banks), "--store", str(store),
        "--stream", str(clips / "other.mp4"),
    )  # fmt: skip
    assert code == 0 and "3 stored frames read" in text and "0 frames matched" in text


# --------------------------------------------------------------------------------------------
# matching equals brute force


def test_matching_stored_frames_equals_brute_force(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    entries = [rng.bytes(32) for _ in range(40)]
    builder = BankBuilder()
    for i, h in enumerate(entries):
        builder.add("pdq", h.hex(), f"e{i}", ["t"], "test")
    bank = builder.build("known", "")
    writer = StoreWriter(tmp_path)
    stored: dict[str, tuple[bytes, int] | None] = {}
    for s in range(3):
        hashes: list[tuple[bytes, int] | None] = []
        for i in range(60):
            kind = i % 4
            if kind == 0:  # near an entry: 0 to 40 bits away
                h = _flip(entries[int(rng.integers(40))], int(rng.integers(0, 41)), rng)
            else:
                h = rng.bytes(32)
            hashes.append(None if kind == 3 else (h, int(rng.integers(30, 101))))
        table = frame_table(_info(f"cam{s}"), _refs(60, s), np.eye(60, 8), None, hashes)
        writer.write(table, f"part-{s}")
        ids = table.column("frame_id").to_pylist()
        stored.update(zip(ids, hashes, strict=True))
    writer.write(table, "replayed")  # the last segment again: read once

    found = match_stored_frames(open_store(tmp_path), Matcher({"known": bank}))
    expected = set()
    for frame, h in stored.items():
        if h is not None and h[1] >= 50:
            for i, e in enumerate(entries):
                if hamming(h[0], e) <= 31:
                    expected.add((frame, f"e{i}", hamming(h[0], e)))
    got = {(m.frame_id, m.match.entry_id, m.match.distance) for m in found.matches}
    assert got == expected and len(expected) > 5
    assert found.frames == 180
    assert found.hashed == sum(h is not None for h in stored.values())
    assert found.low_quality == sum(h is not None and h[1] < 50 for h in stored.values())

    stricter = match_stored_frames(
        open_store(tmp_path),
        Matcher({"known": bank}),
        max_distance=10,
        flt=FrameFilter(streams=("cam1",)),
    )
    assert {m.stream_id for m in stricter.matches} <= {"cam1"}
    assert all(m.match.distance <= 10 for m in stricter.matches)
    assert {(m.frame_id, m.match.entry_id) for m in stricter.matches} == {
        (f, e) for f, e, d in expected if d <= 10 and f in _ids_of(tmp_path, "cam1")
    }


def _ids_of(store: Path, stream: str) -> set[str]:
    table = open_store(store).frames(FrameFilter(streams=(stream,)), ("frame_id",))
    return set(table.column("frame_id").to_pylist())


# --------------------------------------------------------------------------------------------
# the columns, format 1 stores and hostile values


def test_frame_hashes_take_each_frames_own_hash_and_check_it() -> None:
    class _F:
        def __init__(self, pdq: PdqHash | DihedralHashes | None) -> None:
            self.pdq = pdq

    plain, turned = PdqHash(b"\x01" * 32, 80), DihedralHashes((b"\x02" * 32,) * 8, 60)
    assert frame_hashes([_F(None), _F(None)]) is None  # type: ignore[list-item]
    got = frame_hashes([_F(plain), _F(None), _F(turned)])  # type: ignore[list-item]
    assert got == [(b"\x01" * 32, 80), None, (b"\x02" * 32, 60)]
    table = frame_table(_info("cam"), _refs(3), np.eye(3, 8), None, got)
    assert table.column("pdq").to_pylist() == [b"\x01" * 32, None, b"\x02" * 32]
    assert table.column("pdq_quality").to_pylist() == [80, None, 60]
    for bad in ([(b"\x01" * 31, 80)], [(b"\x01" * 32, 101)], [(b"\x01" * 32, -1)]):
        with pytest.raises(StoreError, match="not a PDQ hash"):
            frame_table(_info("cam"), _refs(1), np.eye(1, 8), None, bad)
    with pytest.raises(StoreError, match="3 frames with 1 PDQ hashes"):
        frame_table(_info("cam"), _refs(3), np.eye(3, 8), None, [None])


def _format_1_file(store: Path) -> Path:
    """A frame file as written before the hash columns (format 1): 4 frames of ``old-cam``,
    1 of ``old-cam-2``."""
    table = pa.concat_tables(
        [
            frame_table(_info("old-cam"), _refs(4), np.eye(4, 8)),
            frame_table(_info("old-cam-2"), _refs(1), np.eye(1, 8)),
        ]
    )
    old = table.drop_columns([*HASH_COLUMNS, "model"])
    old = old.replace_schema_metadata({b"clipguard.store": b"1"})
    path = store / "model=m" / "date=2023-11-14" / "old.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(old, path)
    return path


def test_format_1_files_and_records_stay_readable(tmp_path: Path) -> None:
    _format_1_file(tmp_path)
    store = open_store(tmp_path)
    # a store of format 1 files only: the columns are there, null
    frames = store.frames()
    assert frames.num_rows == 5 and frames.column("pdq").null_count == 5
    table = store.sql("SELECT count(*) AS n, count(pdq) AS hashed FROM frames")
    assert table.to_pylist() == [{"n": 5, "hashed": 0}]
    # beside a file of format 2, both ways of reading
    hashes = [(bytes([i]) * 32, 90) for i in range(2)]
    StoreWriter(tmp_path).write(
        frame_table(_info("new-cam"), _refs(2), np.eye(2, 8), None, hashes), "new"
    )
    assert store.frames().num_rows == 7
    query = "SELECT stream_id, pdq_quality FROM frames ORDER BY stream_id, ts"
    rows = [(r["stream_id"], r["pdq_quality"]) for r in store.sql(query).to_pylist()]
    assert rows == [("new-cam", 90)] * 2 + [("old-cam", None)] * 4 + [("old-cam-2", None)]
    found = match_stored_frames(store, Matcher({"b": _bank_of(hashes[0][0])}))
    assert (found.frames, found.hashed, found.matched_frames) == (7, 2, 1)
    # a format 1 file rewritten (one of its streams deleted) keeps the rest, hash columns null
    assert delete_streams(store, ["old-cam"]) == 4
    kept = store.frames(FrameFilter(streams=("old-cam-2",)))
    assert kept.num_rows == 1 and kept.column("pdq").to_pylist() == [None]
    assert store.frames().num_rows == 3
    # a frames record of format 1 (a worker from before): read with the columns null
    record = frame_table(_info("cam"), _refs(2), np.eye(2, 8))
    old = record.drop_columns(list(HASH_COLUMNS))
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, old.schema) as w:
        w.write_table(old)
    back = read_frames_value(sink.getvalue().to_pybytes())
    assert back.schema.equals(RECORD_SCHEMA) and back.column("pdq").null_count == 2
    assert read_frames_value(frames_value(record)).equals(record)


def test_a_store_file_with_a_malformed_hash_column_is_refused(tmp_path: Path) -> None:
    table = frame_table(_info("cam"), _refs(2), np.eye(2, 8)).drop_columns(["model"])
    bad = table.set_column(
        FILE_SCHEMA.get_field_index("pdq"), "pdq", pa.array([b"short", b"x" * 40], pa.binary())
    )
    path = tmp_path / "model=m" / "date=2023-11-14" / "bad.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(bad, path)
    with pytest.raises(StoreError):
        match_stored_frames(open_store(tmp_path), Matcher({"b": _bank_of(b"\x00" * 32)}))
    quality = table.set_column(
        FILE_SCHEMA.get_field_index("pdq"), "pdq", pa.array([b"\x00" * 32] * 2, pa.binary(32))
    ).set_column(
        FILE_SCHEMA.get_field_index("pdq_quality"), "pdq_quality", pa.array([500, 50], pa.int16())
    )
    pq.write_table(quality, path)
    with pytest.raises(StoreError, match="quality 500"):
        match_stored_frames(open_store(tmp_path), Matcher({"b": _bank_of(b"\x00" * 32)}))


def _bank_of(h: bytes):
    builder = BankBuilder()
    builder.add("pdq", h.hex(), "only", [], "test")
    return builder.build("b", "")
