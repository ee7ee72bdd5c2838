"""Hash banks: our file format, ThreatExchange and HMA formats, hostile files, live reload."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import pytest

from pipeline.errors import BankError, HashError
from pipeline.hashes.bank import BankBuilder, read_bank, write_bank
from pipeline.hashes.formats import export_bank, import_bank, te_csv_file_name
from pipeline.hashes.signals import parse_pdq, parse_vpdq
from pipeline.hashes.store import BankStore, bank_files
from pipeline.policies.schema import HashPolicy

DATA = Path(__file__).parent / "data" / "hashes"
P1 = "36636697f623e809c90bc9d9c8f184abd8f024b5340f783578243d2ecbf8c7da"
P2 = "a7e4b4d49c34926d689b6899792c65f067d0db4e8b46ca138a0f9b2f64d175f0"
P3 = "9acc6d33613384cc5b335b3c64d39bccd8cc653392cc6d376b3494da6b316138"
P4 = "48b4da52964ba5a52db4595ad2c996b62d96a969d36952966a96ad698569d2d6"
M1 = "9f00d647a0be7facc37c29f0be387143"
M2 = "a1eeefab9d3470deeac92307b8c8e69d"
HEADER = "# clipguard-bank 1\nsignal_type\thash\tentry_id\ttags\tsource\n"


def _entries(bank: object) -> list[tuple[str, str, str, tuple[str, ...]]]:
    return sorted((e.signal_type, e.hash_text(), e.entry_id, e.tags) for e in bank.entries())  # type: ignore[attr-defined]


# --- our format -----------------------------------------------------------------------------


def test_read_our_fixture() -> None:
    bank = read_bank(DATA / "known.bank.tsv")
    assert bank.name == "known"
    assert bank.description == "fixtures for the bank tests"
    assert bank.counts() == {"pdq": 1, "vpdq": 1, "md5": 1}
    assert bank.pdq.entry_id(0) == "scene-1"
    assert bank.pdq.tags(0) == ("spam", "ads")
    assert bank.pdq.source(0) == "case:1"
    assert bank.pdq.hashes[0].tobytes() == bytes.fromhex(P1)
    (video,) = bank.vpdq
    assert [f.pdq.hex() for f in video.frames] == [P3, P2]
    assert [f.timestamp for f in video.frames] == [0.0, 1.0]
    assert bank.tag_counts() == {"ads": 1, "spam": 1, "terror": 1}


def test_write_then_read_round_trips(tmp_path: Path) -> None:
    bank = read_bank(DATA / "known.bank.tsv")
    path = write_bank(bank, tmp_path)
    assert path == tmp_path / "known.bank.tsv"
    again = read_bank(path)
    assert _entries(again) == _entries(bank)
    assert again.description == bank.description
    assert not list(tmp_path.glob(".*.tmp"))  # the temporary file was renamed away


def _bad(tmp_path: Path, body: str, name: str = "bad") -> Path:
    p = tmp_path / f"{name}.bank.tsv"
    p.write_text(body, encoding="utf-8")
    return p


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("", ":1: a bank file starts with"),
        ("# clipguard-bank 2\n", ":1: a bank file starts with"),
        ("# clipguard-bank 1\nhash\tid\n", ":2: expected the column header"),
        ("# clipguard-bank 1\n", "no column header"),
        (HEADER + f"pdq\t{P1}\ta\t\t\nsha1\t{P1}\tb\t\t\n", ":4: unknown signal type 'sha1'"),
        (HEADER + f"pdq\t{P1[:-1]}\ta\t\t\n", ":3: a PDQ hash is 64 hex digits"),
        (HEADER + f"pdq\t{P1[:-1]}z\ta\t\t\n", ":3: a PDQ hash is 64 hex digits"),
        (HEADER + f"md5\t{P1}\ta\t\t\n", ":3: an MD5 hash is 32 hex digits"),
        (HEADER + f"pdq\t{P1}\ta\t\t\npdq\t{P2}\ta\t\t\n", ":4: duplicate entry id 'a'"),
        (HEADER + f"pdq\t{P1}\tbad id\t\t\n", ":3: entry id 'bad id'"),
        (HEADER + f"pdq\t{P1}\ta\tok,not ok\t\n", ":3: tag 'not ok'"),
        (HEADER + f"pdq\t{P1}\ta\t\n", ":3: expected 5 tab-separated fields, found 4"),
        (HEADER + f"vpdq\t{P1},101,0.0\tv\t\t\n", ":3: vPDQ frame quality 101"),
        (HEADER + f"vpdq\t{P1},50,-1\tv\t\t\n", ":3: vPDQ frame timestamp"),
        (HEADER + f"vpdq\t{P1},50,nan\tv\t\t\n", ":3: vPDQ frame timestamp"),
        (HEADER + "vpdq\t;\tv\t\t\n", ":3: a vPDQ hash needs at least one frame"),
    ],
)
def test_invalid_bank_files_name_file_and_line(tmp_path: Path, body: str, message: str) -> None:
    path = _bad(tmp_path, body)
    with pytest.raises(BankError) as e:
        read_bank(path)
    assert message in str(e.value)
    assert str(path) in str(e.value)


def test_bank_file_bounds(tmp_path: Path) -> None:
    body = HEADER + "".join(f"pdq\t{P1}\te{i}\t\t\n" for i in range(5))
    path = _bad(tmp_path, body)
    with pytest.raises(BankError, match="over the 100-byte limit"):
        read_bank(path, max_bytes=100)
    with pytest.raises(BankError, match=":7: over the limit of 4 entries"):
        read_bank(path, max_entries=4)
    assert len(read_bank(path)) == 5
    long_line = _bad(tmp_path, HEADER + "pdq\t" + "a" * (17 << 20) + "\n", name="long")
    with pytest.raises(BankError, match=":3: line longer than"):
        read_bank(long_line)
    binary = tmp_path / "binary.bank.tsv"
    binary.write_bytes(HEADER.encode() + b"pdq\t\xff\xfe\n")
    with pytest.raises(BankError, match=":3: not UTF-8"):
        read_bank(binary)
    with pytest.raises(BankError, match=r"ends in \.bank\.tsv"):
        read_bank(tmp_path / "bank.txt")
    with pytest.raises(BankError, match="cannot read"):
        read_bank(tmp_path / "missing.bank.tsv")
    fifo = tmp_path / "fifo.bank.tsv"
    os.mkfifo(fifo)  # nobody writes it: a blocking open would hang
    with pytest.raises(BankError, match="not a regular file"):
        read_bank(fifo)
    folder = tmp_path / "folder.bank.tsv"
    folder.mkdir()
    with pytest.raises(BankError, match="a folder"):
        read_bank(folder)


def test_builder_checks_names_and_sources() -> None:
    b = BankBuilder()
    b.add("pdq", P1.upper(), "x")  # upper-case hex is accepted and lowered
    with pytest.raises(HashError, match="source"):
        b.add("pdq", P2, "y", source="two\tfields")
    with pytest.raises(BankError, match="bank name"):
        b.build("../escape")
    assert b.build("ok").pdq.hashes[0].tobytes().hex() == P1


def test_signal_parsers_reject_garbage() -> None:
    assert parse_pdq(f"  {P1}\n") == bytes.fromhex(P1)
    for bad in ("", "0x" + P1[2:], P1 + "0", "g" * 64):
        with pytest.raises(HashError):
            parse_pdq(bad)
    with pytest.raises(HashError, match="hex,quality,timestamp"):
        parse_vpdq(f"{P1},50")


# --- ThreatExchange and HMA formats ---------------------------------------------------------


def test_import_te_signals_fixture() -> None:
    bank = import_bank(DATA / "signals.txt", "te-signals", name="te")
    # the duplicate pdq line is dropped, as the exchange does
    assert bank.counts() == {"pdq": 2, "vpdq": 1, "md5": 1}
    assert [bank.pdq.hashes[i].tobytes().hex() for i in range(2)] == [P1, P2]
    assert bank.md5.hashes[0].tobytes().hex() == M1
    assert [f.pdq.hex() for f in bank.vpdq[0].frames] == [P3, P2]
    assert bank.pdq.source(0) == "te-signals:signals.txt"
    # ids are derived from the hash: a re-import gives the same ids
    again = import_bank(DATA / "signals.txt", "te-signals", name="te")
    assert _entries(again) == _entries(bank)


def test_import_te_signals_with_a_configured_type(tmp_path: Path) -> None:
    path = tmp_path / "hashes.txt"
    path.write_text(f"{P1}\n{P2}\n")
    bank = import_bank(path, "te-signals", name="plain", signal_type="pdq")
    assert bank.counts()["pdq"] == 2
    with pytest.raises(BankError, match=":1: unknown signal type"):
        import_bank(path, "te-signals", name="plain")


def test_threatexchange_reads_our_te_signals_export(tmp_path: Path) -> None:
    file_api = pytest.importorskip("threatexchange.exchanges.impl.file_api")
    from threatexchange.signal_type.md5 import VideoMD5Signal
    from threatexchange.signal_type.pdq.signal import PdqSignal

    bank = import_bank(DATA / "signals.txt", "te-signals", name="te")
    out = export_bank(bank, tmp_path / "out.txt", "te-signals")
    config = file_api.FileCollaborationConfig(name="ours", filename=str(out))
    api = file_api.LocalFileSignalExchangeAPI.for_collab(config)
    (delta,) = list(api.fetch_iter([PdqSignal, VideoMD5Signal], None))
    keys = set(delta.updates)
    assert ("pdq", P1) in keys and ("pdq", P2) in keys and ("video_md5", M1) in keys
    (vpdq_key,) = [k for k in keys if k[0] == "vpdq"]
    assert json.loads(vpdq_key[1]) == [f"{P3},100,0.000", f"{P2},100,1.000"]
    assert PdqSignal.validate_signal_str(P1) == P1
    assert VideoMD5Signal.validate_signal_str(M1) == M1
    # and our importer reads it back unchanged
    assert _entries(import_bank(out, "te-signals", name="te")) == _entries(bank)


def test_import_te_csv_fixtures() -> None:
    hma1 = import_bank(DATA / "simple.HASH_PDQ.te", "te-csv", name="gifct")
    assert hma1.counts() == {"pdq": 2, "vpdq": 0, "md5": 0}
    assert hma1.pdq.entry_id(0) == "3142001"
    assert hma1.pdq.tags(0) == ("true_positive", "violating")
    assert "descriptor:4101001" in hma1.pdq.source(0)
    assert "added:2026-01-05T10:00:00+0000" in hma1.pdq.source(0)
    cli = import_bank(DATA / "cli" / "simple.HASH_VIDEO_MD5.te", "te-csv", name="md5s")
    assert cli.counts()["md5"] == 2
    assert cli.md5.entry_id(0) == "4102001"  # the CLI form has no indicator id: descriptor id
    assert cli.md5.tags(0) == ("media_type_video",)
    assert cli.md5.hashes[1].tobytes().hex() == M2


def test_threatexchange_reads_our_te_csv_export(tmp_path: Path) -> None:
    ser = pytest.importorskip("threatexchange.cli.dataset.simple_serialization")
    bank = import_bank(DATA / "simple.HASH_PDQ.te", "te-csv", name="gifct")
    out = export_bank(bank, tmp_path / te_csv_file_name("pdq"), "te-csv")
    assert out.name == "simple.HASH_PDQ.te"
    with out.open(newline="") as f:
        rows = list(csv.reader(f))
    parsed = [ser.HMASerialization.from_csv_row(r, "HASH_PDQ") for r in rows]
    assert [(p.indicator, p.indicator_id) for p in parsed] == [(P1, "3142001"), (P2, "3142002")]
    assert parsed[0].rollup.labels == {"true_positive", "violating"}
    assert _entries(import_bank(out, "te-csv", name="gifct")) == _entries(bank)


def test_te_csv_export_refuses_what_it_cannot_hold(tmp_path: Path) -> None:
    with pytest.raises(BankError, match="no vPDQ"):
        export_bank(read_bank(DATA / "known.bank.tsv"), tmp_path / "x.te", "te-csv")
    mixed = import_bank(DATA / "hma-content.jsonl", "hma-json", name="mixed")
    b = BankBuilder()
    for e in mixed.entries():
        if e.signal_type != "vpdq":
            b.add_entry(e)
    with pytest.raises(BankError, match="one indicator type"):
        export_bank(b.build("m"), tmp_path / "x.te", "te-csv")
    assert not (tmp_path / "x.te").exists()


def test_te_csv_errors(tmp_path: Path) -> None:
    with pytest.raises(BankError, match="cannot tell the indicator type"):
        import_bank(DATA / "signals.txt", "te-csv", name="x")
    path = tmp_path / "simple.HASH_PDQ.te"
    path.write_text(f"{P1},1,2,3,4,5\n")
    with pytest.raises(BankError, match=":1: expected 4 or 5 CSV fields, found 6"):
        import_bank(path, "te-csv", name="x")
    path.write_text(f"{P1},1,notanumber,,\n")
    with pytest.raises(BankError, match=":1: descriptor id"):
        import_bank(path, "te-csv", name="x")
    path.write_text(f"{P1[:10]},1,2,,\n")
    with pytest.raises(BankError, match=":1: a PDQ hash is 64 hex digits"):
        import_bank(path, "te-csv", name="x")
    other = tmp_path / "simple.URI.te"
    other.write_text("https://example.com,1,2,,\n")
    with pytest.raises(BankError, match="unsupported indicator type 'URI'"):
        import_bank(other, "te-csv", name="x")


def test_import_hma_json_fixture() -> None:
    bank = import_bank(DATA / "hma-content.jsonl", "hma-json", name="hma")
    assert bank.counts() == {"pdq": 3, "vpdq": 1, "md5": 1}
    ids = {e.entry_id: e for e in bank.entries()}
    # a content with two signals gives one entry each, from its metadata content id
    assert ids["case-881.pdq"].hash.hex() == P1
    assert ids["case-881.md5"].hash.hex() == M1
    assert ids["case-881.pdq"].tags == ("spam", "ads")
    assert ids["hma-13"].hash.hex() == P2
    assert ids["added-by-api"].hash.hex() == P3  # the note of a POST .../signal body
    (video,) = bank.vpdq
    assert [(f.pdq.hex(), f.quality) for f in video.frames] == [(P3, 100), (P4, 49)]


def test_hma_json_export_is_the_add_signal_body(tmp_path: Path) -> None:
    bank = read_bank(DATA / "known.bank.tsv")
    out = export_bank(bank, tmp_path / "hma.jsonl", "hma-json")
    bodies = [json.loads(line) for line in out.read_text().splitlines()]
    assert bodies[0] == {"pdq": P1, "note": "scene-1"}
    assert bodies[1] == {"video_md5": "1a02499daca26312356e47fff8039632", "note": "file-1"}
    assert json.loads(bodies[2]["vpdq"]) == [f"{P3},100,0.000", f"{P2},100,1.000"]
    again = import_bank(out, "hma-json", name="known")
    assert [e.entry_id for e in again.entries()] == ["scene-1", "file-1", "video-1"]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("[1, 2]", "expected a JSON object"),
        ("{not json", "not a JSON object"),
        ("[" * 100_000 + "]" * 100_000, "not a JSON object"),
        ('{"note": "x"}', "no signals"),
        ('{"sha1": "abc"}', "unknown HMA signal type 'sha1'"),
        ('{"pdq": 12}', "not a string"),
        ('{"pdq": "abc"}', "a PDQ hash is 64 hex digits"),
        ('{"signals": []}', "'signals' is an object"),
        ('{"vpdq": "[1]"}', "JSON list of frame strings"),
    ],
)
def test_hma_json_errors(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "hma.jsonl"
    path.write_text(f'{{"pdq": "{P1}"}}\n{line}\n')
    with pytest.raises(BankError) as e:
        import_bank(path, "hma-json", name="x")
    assert f"{path}:2:" in str(e.value) and message in str(e.value)


def test_vpdq_file_round_trip(tmp_path: Path) -> None:
    bank = import_bank(DATA / "clip-7.vpdq.txt", "vpdq-file", name="videos")
    (video,) = bank.vpdq
    assert video.entry_id == "clip-7"
    assert [(f.pdq.hex(), f.quality, f.timestamp) for f in video.frames] == [
        (P3, 100, 0.0),
        (P2, 100, 1.0),
        (P4, 49, 2.0),
    ]
    out = export_bank(bank, tmp_path / "clip-7.txt", "vpdq-file")
    assert out.read_text() == (DATA / "clip-7.vpdq.txt").read_text()
    bad = tmp_path / "bad.txt"
    bad.write_text(f"0,100,{P3},0.000\n1,{P2},1.000\n")
    with pytest.raises(BankError, match=":2: expected 'frame_number,quality,hex,timestamp'"):
        import_bank(bad, "vpdq-file", name="x")
    with pytest.raises(BankError, match="exactly one vPDQ entry"):
        export_bank(read_bank(DATA / "known.bank.tsv"), tmp_path / "v.txt", "vpdq-file")


def test_import_limits(tmp_path: Path) -> None:
    with pytest.raises(BankError, match="over the 10-byte limit"):
        import_bank(DATA / "signals.txt", "te-signals", name="x", max_bytes=10)
    with pytest.raises(BankError, match="over the limit of 2 entries"):
        import_bank(DATA / "signals.txt", "te-signals", name="x", max_entries=2)
    with pytest.raises(BankError, match="unknown bank format"):
        import_bank(DATA / "signals.txt", "csv", name="x")  # type: ignore[arg-type]


# --- live reload ------------------------------------------------------------------------------


def _touch_later(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def test_store_reloads_changed_files_and_keeps_the_last_good_bank(tmp_path: Path) -> None:
    shutil.copy(DATA / "known.bank.tsv", tmp_path / "known.bank.tsv")
    store = BankStore([tmp_path])
    first = store.snapshot
    assert set(first.banks) == {"known"}
    assert store.refresh() is False and store.snapshot is first

    # a new bank appears
    extra = _bad(tmp_path, HEADER + f"pdq\t{P2}\tx1\t\t\n", name="extra")
    assert store.refresh() is True
    second = store.snapshot
    assert set(second.banks) == {"known", "extra"}
    assert first.banks.keys() == {"known"}  # the old snapshot is untouched

    # a broken edit keeps the last good bank and reports the error
    extra.write_text(HEADER + f"pdq\t{P2[:-2]}\tx1\t\t\n")
    _touch_later(extra)
    assert store.refresh() is False
    assert store.reload_errors == 1
    assert set(store.snapshot.banks) == {"known", "extra"}
    assert store.snapshot.banks["extra"] is second.banks["extra"]
    assert ":3: a PDQ hash" in store.snapshot.errors[extra]
    assert store.refresh() is False and store.reload_errors == 1  # unchanged: not re-read
    _touch_later(extra)  # saved again as it was: the same error, counted once
    assert store.refresh() is False and store.reload_errors == 1

    # fixed: the new content is in force and the error is gone
    extra.write_text(HEADER + f"pdq\t{P3}\tx1\t\t\npdq\t{P4}\tx2\t\t\n")
    _touch_later(extra)
    assert store.refresh() is True
    assert len(store.snapshot.banks["extra"]) == 2 and not store.snapshot.errors
    assert store.snapshot.banks["known"] is second.banks["known"]  # unchanged: not re-read

    # removed: the bank goes away
    extra.unlink()
    assert store.refresh() is True
    assert set(store.snapshot.banks) == {"known"}


def test_store_first_load_must_succeed(tmp_path: Path) -> None:
    _bad(tmp_path, "garbage\n")
    with pytest.raises(BankError, match="starts with"):
        BankStore([tmp_path])
    with pytest.raises(BankError, match="no such bank file"):
        BankStore([tmp_path / "nowhere"])
    (tmp_path / "bad.bank.tsv").unlink()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    shutil.copy(DATA / "known.bank.tsv", tmp_path / "a" / "known.bank.tsv")
    shutil.copy(DATA / "known.bank.tsv", tmp_path / "b" / "known.bank.tsv")
    assert len(bank_files([tmp_path])) == 2
    with pytest.raises(BankError, match="already defined"):
        BankStore([tmp_path])


def test_store_matches_through_its_snapshot(tmp_path: Path) -> None:
    shutil.copy(DATA / "known.bank.tsv", tmp_path / "known.bank.tsv")
    snap = BankStore([tmp_path]).snapshot
    (hit,) = snap.matcher.match_md5(bytes.fromhex("1a02499daca26312356e47fff8039632"))
    assert (hit.bank, hit.entry_id, hit.source) == ("known", "file-1", "case:2")
    assert len(snap.video) == 1


# --- the hash policy's settings -----------------------------------------------------------------


def test_hash_policy_defaults_and_validation() -> None:
    doc = {
        "id": "known-bad",
        "version": 1,
        "kind": "hash",
        "description": "Known bad content.",
        "owner": "tns@example.com",
        "severity": "critical",
        "action": "block",
        "banks": ["known", "gifct"],
    }
    p = HashPolicy.model_validate(doc)
    assert (p.max_distance, p.min_quality, p.mode, p.dihedral) == (31, 50, "enforce", False)
    assert p.signals == ["pdq", "vpdq", "md5"]
    assert (p.video.query_match_percent, p.video.compared_match_percent) == (80.0, 0.0)
    assert (p.temporal.k, p.temporal.n) == (1, 1)
    shadow = HashPolicy.model_validate({**doc, "mode": "shadow", "max_distance": 20})
    assert shadow.mode == "shadow" and shadow.max_distance == 20
    for bad in (
        {"kind": "clip"},
        {"banks": []},
        {"banks": ["a", "a"]},
        {"banks": ["../x"]},
        {"max_distance": 300},
        {"min_quality": -1},
        {"signals": ["sha1"]},
        {"mode": "audit"},
        {"threshold": 0.3},
        {"max_distance": "31"},
    ):
        with pytest.raises(ValueError):
            HashPolicy.model_validate({**doc, **bad})


def test_package_exports_are_pinned_and_resolve() -> None:
    import pipeline.hashes as hashes

    assert hashes.__all__ == sorted(hashes.__all__, key=lambda n: (not n.isupper(), n))
    assert set(hashes.__all__) == {
        "DIHEDRAL_NAMES", "FORMATS", "SIGNAL_TYPES", "Bank", "BankBuilder", "BankEntry",
        "BankFormat", "BankSnapshot", "BankStore", "DihedralHashes", "FrameResult", "HashMatch",
        "IndexedBank", "Matcher", "PdqHash", "PdqIndex", "RangeResult",
        "SignalType", "StreamWindow", "VideoMatch", "VideoMatcher",
        "VpdqComparison", "VpdqFrame", "brute_force_search", "export_bank", "hamming",
        "import_bank", "md5_file", "md5_stream", "pdq_dihedral", "pdq_hash", "read_bank",
        "vpdq_compare", "write_bank",
    }  # fmt: skip
    for name in hashes.__all__:
        assert getattr(hashes, name) is not None
    with pytest.raises(AttributeError):
        hashes.nothing_here
