"""The frame store end to end: ``clipguard scan --store`` of real H.264 clips made here (a red
triangle from 2 s to 5 s, the word SPAM from 3 s to 6 s, a clean clip) with the demo model,
then backtests, searches and lifecycle commands over the Parquet files it wrote; and the
backtest against the live judge on random multi-stream, tiled traffic.

Timing: clips are 128 px at 5 fps, scanned at 1 frame a second (tests/scanclips.py)."""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import re
import shutil
from pathlib import Path

import cv2
import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from scanclips import clip, showing, write_clip

from consumers.cli import main
from pipeline.errors import StoreError
from pipeline.models import DEMO_MODEL, load_clip
from pipeline.policies import load_policies
from pipeline.policies.compile import PolicyCompiler
from pipeline.policies.judge import FrameRef, Judge
from pipeline.policies.snapshot import PolicySet
from pipeline.store import (
    FrameFilter,
    FrameInfo,
    StoreWriter,
    backtest,
    delete_streams,
    frame_table,
    open_store,
    prune,
    read_snapshot,
    search,
    snapshot_bytes,
    stats,
)
from pipeline.store.results import HISTOGRAM_BINS, LabelDiff
from pipeline.store.schema import embeddings_of

ROOT = Path(__file__).resolve().parent.parent
from pipeline.policies.bundled import DEMO_POLICIES  # noqa: E402

pytestmark = pytest.mark.usefixtures("policy_cache")


def _run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def model():
    return load_clip(DEMO_MODEL)


@pytest.fixture(scope="module")
def scanned(tmp_path_factory: pytest.TempPathFactory):
    """A scan of three clips into --out and --store; (out folder, store folder, clips)."""
    base = tmp_path_factory.mktemp("store-scan")
    clips = base / "clips"
    write_clip(clips / "triangle.mp4", clip(8, showing("triangle", "red", 1), 2, 5, 11), "mp4")
    write_clip(clips / "spam.mkv", clip(8, showing("SPAM", "yellow", 2), 3, 6, 12), "matroska")
    write_clip(clips / "clean.ts", clip(4, None, 0, 0, 13), "mpegts")
    out, store = base / "out", base / "store"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLIPGUARD_POLICY_CACHE", str(tmp_path_factory.getbasetemp() / "pc"))
        code, _, err = _run("scan", str(clips), "--out", str(out), "--store", str(store))
    assert code == 0, err
    return out, store, clips


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _copy_store(store: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    return copy


# --------------------------------------------------------------------------------------------
# what a scan stores


def test_scan_store_writes_hive_partitioned_parquet_with_every_scored_frame(scanned, model) -> None:
    out, store, _ = scanned
    scores = _lines(out / "scores.jsonl")
    files = sorted(store.glob("model=*/date=*/*.parquet"))
    assert len(files) == 3  # one per input
    today = dt.datetime.now(dt.UTC).date().isoformat()
    assert {f.parent.name for f in files} == {f"date={today}"}
    assert {f.parent.parent.name for f in files} == {f"model={DEMO_MODEL}"}
    # any engine reading Hive partitions sees the same frames: DuckDB directly on the files
    rows = duckdb.sql(
        f"SELECT * FROM read_parquet('{store}/*/*/*.parquet', hive_partitioning = true)"
    ).to_arrow_table()
    assert rows.num_rows == len(scores)
    assert set(rows.column("model").to_pylist()) == {DEMO_MODEL}
    assert len(set(rows.column("frame_id").to_pylist())) == rows.num_rows
    assert set(rows.column("weights_sha256").to_pylist()) == {model.fingerprint()}
    assert set(rows.column("preprocess").to_pylist()) == {f"pad@{model.input_resolution}"}
    assert set(rows.column("policy_set").to_pylist()) == {s["policy_set"] for s in scores}
    versions = rows.column("policy_versions")[0].as_py()
    assert dict(versions) == {"red-triangle": 1, "spam-text": 1}
    stored = {(r["stream_id"], r["ts"]) for r in rows.select(["stream_id", "ts"]).to_pylist()}
    assert stored == {(s["stream_id"], s["ts"]) for s in scores}
    # float16, unit length
    emb = embeddings_of(rows.column("embedding"))
    assert emb.dtype == np.float16 and emb.shape == (len(scores), model.embed_dim)
    np.testing.assert_allclose(np.linalg.norm(emb.astype(np.float32), axis=1), 1.0, atol=2e-3)
    # thumbnails: JPEGs of the model's input picture
    for data in rows.column("thumbnail").to_pylist():
        picture = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        assert picture is not None and max(picture.shape[:2]) <= 128
    assert (store / "_policy_sets").is_dir()


def test_scan_store_without_thumbnails(tmp_path: Path, scanned) -> None:
    _, _, clips = scanned
    store = tmp_path / "store"
    code, _, err = _run(
        "scan",
        str(clips / "clean.ts"),
        "--out",
        str(tmp_path / "o"),
        "--store",
        str(store),
        "--no-thumbnails",
    )
    assert code == 0, err
    table = open_store(store).frames(columns=("frame_id", "thumbnail"))
    assert table.num_rows == 4 and table.column("thumbnail").null_count == 4


# --------------------------------------------------------------------------------------------
# backtest


def _closed(out: Path) -> set[tuple]:
    return {
        (
            f["event_id"],
            f["stream_id"],
            f["policy"],
            f["label"],
            f["start_ts"],
            f["end_ts"],
            f["peak_ts"],
        )
        for f in _lines(out / "flags.jsonl")
        if f["state"] == "closed"
    }


def test_backtest_of_the_same_policies_reproduces_the_scans_incidents(
    scanned, tmp_path: Path
) -> None:
    out, store, _ = scanned
    report = tmp_path / "bt"
    code, stdout, err = _run(
        "policy", "backtest", str(DEMO_POLICIES), "--store", str(store), "--out", str(report)
    )
    assert code == 0, err
    doc = json.loads((report / "backtest.json").read_text())
    found = {
        (
            i["event_id"],
            i["stream_id"],
            i["policy"],
            i["label"],
            i["start_ts"],
            i["end_ts"],
            i["peak_ts"],
        )
        for i in doc["incidents"]
    }
    expected = _closed(out)
    assert len(expected) == 2  # the triangle and the SPAM sign
    assert found == expected
    assert doc["summary"] == {
        "incidents": 2,
        "baseline_incidents": 2,
        "added": 0,
        "removed": 0,
        "changed": 0,
    }
    assert doc["frames"] == len(_lines(out / "scores.jsonl"))
    page = (report / "report.html").read_text()
    assert "default-src 'none'" in page and "red-triangle/red-triangle" in page
    assert "+0 added" in stdout


def _edited(tmp_path: Path, threshold: float) -> Path:
    folder = tmp_path / "edited"
    shutil.copytree(DEMO_POLICIES, folder)
    path = folder / "red-triangle.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["labels"][0]["threshold"] = threshold
    doc["version"] = 2
    path.write_text(yaml.safe_dump(doc))
    return folder


def _compile(model, folder: Path) -> PolicySet:
    return PolicyCompiler(model).compile(load_policies([folder]))


def test_a_lowered_threshold_adds_the_incidents_it_would_have_opened(
    scanned, model, tmp_path: Path
) -> None:
    out, store_dir, clips = scanned
    store = open_store(store_dir)
    edited = _compile(model, _edited(tmp_path, threshold=-0.99))  # every frame passes
    result = backtest(edited, store, model=model.name, weights_sha256=model.fingerprint())
    diff = result.labels["red-triangle/red-triangle"]
    frames = store.frames(columns=("stream_id", "ts")).to_pylist()
    span = {}
    for r in frames:
        lo, hi = span.get(r["stream_id"], (r["ts"], r["ts"]))
        span[r["stream_id"]] = (min(lo, r["ts"]), max(hi, r["ts"]))
    # one incident per stream, from its first frame to its last; the triangle's one changed
    added = {(i.stream_id, i.start_ts, i.end_ts, i.policy_version) for i in diff.added}
    assert added == {
        (str(clips / name), *span[str(clips / name)], 2) for name in ("spam.mkv", "clean.ts")
    }
    assert [(new.start_ts, new.end_ts) for new, _ in diff.changed] == [
        span[str(clips / "triangle.mp4")]
    ]
    assert diff.removed == [] and diff.frames_passing == len(frames)
    assert result.labels["spam-text/spam-text"].unchanged == 1
    # raised out of reach: the triangle's incident is removed
    strict = _compile(model, _edited(tmp_path / "strict", threshold=0.99))
    result = backtest(strict, store, model=model.name, weights_sha256=model.fingerprint())
    removed = result.labels["red-triangle/red-triangle"].removed
    scan_ids = {e[0] for e in _closed(out)}
    assert [i.event_id for i in removed] == [
        i for i in scan_ids if i in {r.event_id for r in removed}
    ]
    assert len(removed) == 1 and removed[0].stream_id == str(clips / "triangle.mp4")


def test_a_policy_for_another_model_or_other_weights_is_refused(
    scanned, model, tmp_path: Path
) -> None:
    _, store, _ = scanned
    folder = tmp_path / "other"
    folder.mkdir()
    doc = yaml.safe_load((DEMO_POLICIES / "red-triangle.yaml").read_text())
    doc["model"] = "ViT-B/32"
    doc.pop("examples")
    (folder / "red-triangle.yaml").write_text(yaml.safe_dump(doc))
    code, _, err = _run(
        "policy",
        "backtest",
        str(folder),
        "--store",
        str(store),
        "--model",
        DEMO_MODEL,
        "--out",
        str(tmp_path / "o"),
    )
    assert code == 1 and "written for model ViT-B/32" in err
    policies = _compile(model, DEMO_POLICIES)
    with pytest.raises(StoreError, match="other weights"):
        backtest(policies, open_store(store), model=model.name, weights_sha256="0" * 64)
    with pytest.raises(StoreError, match="written for model clipguard-demo"):
        backtest(policies, open_store(store), model="ViT-B/32", weights_sha256="0" * 64)


def test_replayed_frames_count_once(scanned, model, tmp_path: Path) -> None:
    out, store_dir, _ = scanned
    store_dir = _copy_store(store_dir, tmp_path)
    for f in list(store_dir.glob("model=*/date=*/*.parquet")):  # every file stored twice
        shutil.copy(f, f.with_name("replay-" + f.name))
    store = open_store(store_dir)
    policies = _compile(model, DEMO_POLICIES)
    result = backtest(policies, store, model=model.name, weights_sha256=model.fingerprint())
    assert result.rows == 2 * result.frames
    assert {(i.event_id, i.start_ts, i.end_ts) for i in result.incidents} == {
        (e[0], e[4], e[5]) for e in _closed(out)
    }
    query = PolicyCompiler(model).encode_text(["a red triangle"])[0]
    hits = search(store, query, model=model.name, top=10)
    assert len({h.frame_id for h in hits}) == 10


def test_files_of_format_2_read_as_those_of_format_3(scanned, model, tmp_path: Path) -> None:
    """Format 3 files hold the embeddings as fixed_size_binary; a store whose files hold them
    as binary (format 2) gives the same frames, backtest and search, and a rewrite of such a
    file writes format 3."""
    _, store_dir, clips = scanned
    files = sorted(store_dir.glob("model=*/date=*/*.parquet"))
    width = 2 * model.embed_dim
    for f in files:
        meta = pq.ParquetFile(f).schema_arrow
        assert meta.field("embedding").type == pa.binary(width)
        assert meta.metadata[b"clipguard.store"] == b"3"
    old_dir = _copy_store(store_dir, tmp_path)
    parts = sorted(old_dir.glob("model=*/date=*/*.parquet"))
    assert len({f.parent for f in parts}) == 1  # one day: one file of format 2 holds them all
    table = pa.concat_tables([pq.read_table(f) for f in parts])
    at = table.schema.get_field_index("embedding")
    binary = table.column(at).cast(pa.binary())
    table = table.set_column(at, pa.field("embedding", pa.binary(), nullable=False), binary)
    for f in parts:
        f.unlink()
    pq.write_table(table.replace_schema_metadata({b"clipguard.store": b"2"}), parts[0])
    new, old = open_store(store_dir), open_store(old_dir)
    assert new.frames().equals(old.frames())
    ids, emb = new.embeddings(FrameFilter(model=model.name))
    old_ids, old_emb = old.embeddings(FrameFilter(model=model.name))
    assert ids == old_ids and emb.tobytes() == old_emb.tobytes() and len(ids) == 20
    blobs = "SELECT frame_id, embedding FROM frames ORDER BY frame_id"
    assert new.sql(blobs).to_pylist() == old.sql(blobs).to_pylist()
    policies = _compile(model, _edited(tmp_path, threshold=0.2))
    results = [
        backtest(policies, s, model=model.name, weights_sha256=model.fingerprint(), cache=False)
        for s in (new, old)
    ]
    a, b = (r.to_json() for r in results)
    a.pop("seconds"), b.pop("seconds")
    assert a == b and results[0].labels["red-triangle/red-triangle"].added
    query = PolicyCompiler(model).encode_text(["a red triangle"])[0]
    hits = [search(s, query, model=model.name, top=20, cache=False) for s in (new, old)]
    assert [(h.frame_id, h.score) for h in hits[0]] == [(h.frame_id, h.score) for h in hits[1]]
    # a rewrite (one stream deleted) of format 2 files writes format 3 with the same vectors
    kept = FrameFilter(model=model.name, streams=(str(clips / "triangle.mp4"),))
    before = old.embeddings(kept)[1].tobytes()
    assert delete_streams(old, [str(clips / "spam.mkv")]) > 0
    assert old.embeddings(kept)[1].tobytes() == before
    rewritten = pq.ParquetFile(parts[0]).schema_arrow
    assert rewritten.field("embedding").type == pa.binary(width)
    assert rewritten.metadata[b"clipguard.store"] == b"3"


def test_fixed_size_embeddings_of_an_odd_width_or_missing_are_refused() -> None:
    odd = pa.FixedSizeBinaryArray.from_buffers(pa.binary(3), 2, [None, pa.py_buffer(b"\0" * 6)])
    with pytest.raises(StoreError, match="odd byte size"):
        embeddings_of(odd)
    with pytest.raises(StoreError, match="missing"):
        embeddings_of(pa.array([b"\0\0", None], pa.binary(2)))
    two = np.arange(12, dtype="<f2").reshape(3, 4)
    column = pa.FixedSizeBinaryArray.from_buffers(pa.binary(8), 3, [None, pa.py_buffer(two)])
    assert np.array_equal(embeddings_of(column.slice(1, 2)), two[1:])


def test_backtest_of_a_time_range_and_a_stream(scanned, model) -> None:
    _, store_dir, clips = scanned
    store = open_store(store_dir)
    policies = _compile(model, DEMO_POLICIES)
    one = FrameFilter(streams=(str(clips / "spam.mkv"),))
    result = backtest(
        policies, store, model=model.name, weights_sha256=model.fingerprint(), flt=one
    )
    assert result.streams == [str(clips / "spam.mkv")] and len(result.incidents) == 1
    future = FrameFilter(since=dt.datetime.now(dt.UTC) + dt.timedelta(days=1))
    with pytest.raises(StoreError, match="no frames"):
        backtest(policies, store, model=model.name, weights_sha256=model.fingerprint(), flt=future)


# --------------------------------------------------------------------------------------------
# the backtest against the live judge


def test_backtest_equals_the_judge_on_random_tiled_streams(model, tmp_path: Path) -> None:
    """Random embeddings near and far from the labels' rows, 2 tiles a frame, 6 streams in
    segments spread over several files in shuffled order: the backtest's incidents are
    exactly the flag events the judge publishes frame by frame."""
    policies = _compile(model, DEMO_POLICIES)
    rng = np.random.default_rng(7)
    rows = policies.compiled.matrix[[lab.row for lab in policies.compiled.labels]]
    judge = Judge(model.name)
    writer = StoreWriter(tmp_path / "store")
    writer.write_snapshot(
        policies.id,
        snapshot_bytes(policies, model=model.name, weights_sha256=model.fingerprint()),
    )
    expected = set()
    tables = []
    for s in range(6):
        stream = f"cam-{s}"
        state, facts = judge.new_state(stream, policies), {}
        t = 0.0
        for seq in range(8):
            refs, emb = [], []
            for index in range(5):
                t += float(rng.choice([0.2, 0.5, 1.0]))
                for tile in range(2):
                    target = rows[rng.integers(len(rows))]
                    # cosines about 0, 0.45, 0.55, 0.63, 0.9 with the label (cutoffs near 0.55)
                    scale = rng.choice([0.0, 0.0, 5.0, 6.5, 8.0, 20.0])
                    v = target * scale + rng.normal(size=target.shape)
                    emb.append(v / np.linalg.norm(v))
                    refs.append(FrameRef(seq=seq, frame_index=index, ts=round(t, 3), tile=tile))
            emb16 = np.asarray(emb, np.float16).astype(np.float32)  # what the store keeps
            out = judge.judge(state, refs, emb16, policies, facts=facts)
            expected |= {
                (f.event_id, f.start_ts, f.end_ts, f.peak_ts)
                for f in out.flags
                if f.state == "closed"
            }
            info = FrameInfo(
                model=model.name,
                weights_sha256=model.fingerprint(),
                preprocess="tiles@64",
                policy_set=policies.id,
                policy_versions={"red-triangle": 1, "spam-text": 1},
                stream_id=stream,
                scored_at=1.78e9 + s,
                segment_partition=s % 2,
                segment_offset=seq,
            )
            tables.append(frame_table(info, refs, emb16))
        end = judge.finish(state, policies, facts=facts)
        expected |= {(f.event_id, f.start_ts, f.end_ts, f.peak_ts) for f in end.flags}
    order = rng.permutation(len(tables))
    for n, chunk in enumerate(np.array_split(order, 5)):
        writer.write(pa.concat_tables([tables[i] for i in chunk]), f"part-{n}")
    result = backtest(
        policies,
        open_store(tmp_path / "store"),
        model=model.name,
        weights_sha256=model.fingerprint(),
    )
    found = {(i.event_id, i.start_ts, i.end_ts, i.peak_ts) for i in result.incidents}
    assert len(expected) >= 10
    assert found == expected
    assert result.frames == 6 * 8 * 5 and result.rows == 2 * result.frames
    assert not result.added and not result.removed and not result.changed


# --------------------------------------------------------------------------------------------
# search


def test_search_by_text_and_by_image_finds_the_concept_first(scanned, tmp_path: Path) -> None:
    _, store, clips = scanned
    out = tmp_path / "s"
    code, _, err = _run(
        "store",
        "search",
        "a red triangle",
        "--store",
        str(store),
        "--top",
        "3",
        "--out",
        str(out),
    )
    assert code == 0, err
    hits = json.loads((out / "search.json").read_text())["hits"]
    assert [h["stream_id"] for h in hits] == [str(clips / "triangle.mp4")] * 3
    assert all(2.0 <= h["ts"] < 5.0 for h in hits)  # shown from 2 s to 5 s
    page = (out / "gallery.html").read_text()
    assert page.count("data:image/jpeg;base64,") == 3
    picture = DEMO_POLICIES / "examples" / "red-triangle-1.png"
    code, stdout, err = _run("store", "search", str(picture), "--store", str(store), "--top", "1")
    assert code == 0, err
    assert str(clips / "triangle.mp4") in stdout.splitlines()[0]
    # the matrix cache elsewhere, or none: the same frames
    argv = ("store", "search", "a red triangle", "--store", str(store), "--top", "3")
    code, plain, err = _run(*argv, "--no-cache")
    assert code == 0, err
    elsewhere = tmp_path / "matrices"
    for _ in range(2):  # cold, then warm
        code, cached, err = _run(*argv, "--cache-dir", str(elsewhere))
        assert code == 0, err
        assert cached == plain and plain.count("triangle.mp4") == 3
    assert list(elsewhere.glob("*.f16"))


def test_search_equals_brute_force_over_every_stored_frame(scanned, model) -> None:
    _, store_dir, _ = scanned
    store = open_store(store_dir)
    query = PolicyCompiler(model).encode_text(["the word SPAM"])[0]
    ids, emb = store.embeddings(FrameFilter(model=model.name))
    sims = emb.astype(np.float32) @ query
    hits = search(store, query, model=model.name, top=7)
    assert [h.frame_id for h in hits] == [ids[i] for i in np.argsort(-sims, kind="stable")[:7]]
    with pytest.raises(StoreError, match="top"):
        search(store, query, model=model.name, top=0)
    with pytest.raises(StoreError, match="values"):
        search(store, query[:5], model=model.name)


# --------------------------------------------------------------------------------------------
# lifecycle


def test_stats_delete_and_prune(scanned, tmp_path: Path) -> None:
    out, store_dir, clips = scanned
    store_dir = _copy_store(store_dir, tmp_path)
    store = open_store(store_dir)
    total = len(_lines(out / "scores.jsonl"))
    s = stats(store)
    assert (s.frames, s.streams, s.files, s.thumbnails) == (total, 3, 3, total)
    assert s.models == {DEMO_MODEL: total} and s.policy_sets == 1
    code, stdout, _ = _run("store", "stats", "--store", str(store_dir), "--json")
    assert code == 0 and json.loads(stdout)["frames"] == total
    spam = str(clips / "spam.mkv")
    assert delete_streams(store, [spam]) == 8
    left = store.frames(columns=("stream_id",)).column("stream_id").to_pylist()
    assert spam not in left and len(left) == total - 8
    today = dt.datetime.now(dt.UTC).date()
    assert prune(store, today) == []
    code, _, _ = _run(
        "store", "prune", "--store", str(store_dir), "--before", str(today + dt.timedelta(1))
    )
    assert code == 0 and stats(store).frames == 0


# --------------------------------------------------------------------------------------------
# hostile input


def test_snapshots_round_trip_and_bad_ones_are_refused(model) -> None:
    policies = _compile(model, DEMO_POLICIES)
    data = snapshot_bytes(policies, model=model.name, weights_sha256=model.fingerprint())
    back = read_snapshot(data)
    assert back.id == policies.id and back.model == model.name
    np.testing.assert_array_equal(back.policies.compiled.matrix, policies.compiled.matrix)
    assert back.policies.compiled.labels == policies.compiled.labels
    assert dict(back.policies.rules) == dict(policies.rules)
    doc = json.loads(data)
    for broken in (
        b"{not json",
        json.dumps({**doc, "id": "0" * 16}).encode(),  # does not hash to its id
        json.dumps({**doc, "matrix": {**doc["matrix"], "rows": 1}}).encode(),
        json.dumps({**doc, "extra": 1}).encode(),
        b" " * (33 * 1024 * 1024),
    ):
        with pytest.raises(StoreError):
            read_snapshot(broken)


def test_bad_records_and_files_are_refused(tmp_path: Path) -> None:
    odd = pa.array([b"\x00\x01\x02", b"\x00\x01\x02\x03"], pa.binary())
    with pytest.raises(StoreError, match="sizes"):
        embeddings_of(odd)
    with pytest.raises(StoreError, match="missing"):
        embeddings_of(pa.array([b"\x00\x00", None], pa.binary()))
    with pytest.raises(StoreError, match="record schema"):
        StoreWriter(tmp_path).write(pa.table({"x": [1]}), "name")
    with pytest.raises(StoreError, match="file name"):
        StoreWriter(tmp_path).location.file_path("m", "2026-01-01", "../escape")
    with pytest.raises(StoreError, match="before"):
        FrameFilter(since=dt.datetime(2026, 2, 1), until=dt.datetime(2026, 1, 1))
    with pytest.raises(StoreError, match="policy set id"):
        open_store(tmp_path).policy_set("../x")
    # a file that is not Parquet where a frame file belongs
    bad = tmp_path / "model=m" / "date=2026-01-01" / "bad.parquet"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"PAR1 not really")
    with pytest.raises(StoreError):
        open_store(tmp_path).frames(FrameFilter(model="m"))


def test_the_record_layout_document_lists_every_column() -> None:
    from pipeline.store import RECORD_SCHEMA

    doc = (ROOT / "schemas" / "embeddings.md").read_text()
    documented = re.findall(r"^\| `(\w+)` \|", doc, flags=re.MULTILINE)
    assert documented == RECORD_SCHEMA.names


def test_frames_records_round_trip_and_bad_ones_are_refused(model) -> None:
    from pipeline.store.records import frames_value, read_frames_value

    info = FrameInfo(
        model=model.name,
        weights_sha256="a" * 64,
        preprocess="pad@64",
        policy_set="s" * 16,
        policy_versions={"p": 1},
        stream_id="cam",
        scored_at=1.7e9,
    )
    refs = [FrameRef(seq=0, frame_index=i, ts=float(i)) for i in range(3)]
    table = frame_table(info, refs, np.eye(3, 8, dtype=np.float32), [b"jpg"] * 3)
    data = frames_value(table)
    assert read_frames_value(data).equals(table)
    for broken in (b"", b"garbage" * 10, data[: len(data) // 2], b"\x00" * (33 * 1024 * 1024)):
        with pytest.raises(StoreError):
            read_frames_value(broken)
    other = pa.table({"x": [1]})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, other.schema) as w:
        w.write_table(other)
    with pytest.raises(StoreError, match="schema"):
        read_frames_value(sink.getvalue().to_pybytes())


def test_exported_names() -> None:
    """The store's public API, which the studio and the commands use: pinned."""
    import pipeline.store as store

    assert set(store.__all__) == {
        "FILE_SCHEMA",
        "RECORD_SCHEMA",
        "THUMBNAIL_SIZE",
        "BacktestResult",
        "FrameFilter",
        "FrameInfo",
        "FrameRecorder",
        "FrameStore",
        "Incident",
        "LabelDiff",
        "SearchHit",
        "StoreLocation",
        "StoreStats",
        "StoreWriter",
        "StoredFile",
        "StoredPolicySet",
        "backtest",
        "delete_streams",
        "frame_id",
        "frame_table",
        "open_location",
        "open_store",
        "prune",
        "read_snapshot",
        "retro_events",
        "scan_file_name",
        "search",
        "snapshot_bytes",
        "stats",
    }
    for name in store.__all__:
        assert hasattr(store, name), name


def test_histograms_count_each_finite_score_in_the_bin_its_edges_give() -> None:
    """The histograms' equal bins (NumPy's arithmetic path) place every score as comparing it
    with the edges would, scores on an edge and float32 rounding included."""
    rng = np.random.default_rng(7)
    for trial in range(60):
        new = (rng.random(5000) * rng.random() + rng.random()).astype(np.float32)
        old = rng.normal(0.3, 0.1, 3000).astype(np.float32)
        if trial % 2:
            new = np.round(new, 2).astype(np.float32)  # many scores on or next to an edge
        new[::97], old[::89] = np.nan, -np.inf
        diff = LabelDiff(key="p/l", mode="enforce", kind="cosine", cutoff=0.25 + trial / 100)
        diff.fill_histograms(new, old if trial % 3 else None)
        finite = [x[np.isfinite(x)].astype(np.float64) for x in (new, old)]
        shown = [*finite[: 2 if trial % 3 else 1], np.array([diff.cutoff])]
        lo, hi = min(float(x.min()) for x in shown), max(float(x.max()) for x in shown)
        edges = np.linspace(lo, hi, HISTOGRAM_BINS + 1)  # compared value by value (sorted)
        assert diff.bins == [round(float(e), 6) for e in edges]
        assert diff.histogram == np.histogram(finite[0], bins=edges)[0].tolist()
        assert sum(diff.histogram) == np.isfinite(new).sum()
        want_old = np.histogram(finite[1], bins=edges)[0] if trial % 3 else [0] * HISTOGRAM_BINS
        assert diff.baseline_histogram == list(want_old)
