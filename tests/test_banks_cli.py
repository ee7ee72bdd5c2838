"""``clipguard banks`` commands, driven through their argparse parser."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import cv2
import pytest

from consumers.cli.banks import add_parser
from pipeline.demo import scenes as synthetic
from pipeline.demo.video import demo_shots, write_video
from pipeline.errors import BankError, HashError
from pipeline.hashes.bank import read_bank
from pipeline.hashes.files import hash_video_file
from pipeline.hashes.pdq import pdq_hash

DATA = Path(__file__).parent / "data" / "hashes"


def _run(*argv: str) -> tuple[int, str]:
    parser = argparse.ArgumentParser(prog="clipguard")
    add_parser(parser.add_subparsers())
    args = parser.parse_args(list(argv))
    out = io.StringIO()
    return args.func(args, out), out.getvalue()


def test_import_list_stats_export(tmp_path: Path) -> None:
    banks = tmp_path / "banks"
    rc, out = _run(
        "banks", "import", str(DATA / "signals.txt"), "--format", "te-signals",
        "--bank", "te", "--dir", str(banks), "--description", "from a file exchange",
    )  # fmt: skip
    assert rc == 0 and "4 entries imported" in out
    rc, out = _run(
        "banks", "import", str(DATA / "simple.HASH_PDQ.te"), "--format", "te-csv",
        "--bank", "te", "--dir", str(banks), "--merge",
    )  # fmt: skip
    assert rc == 0 and "2 entries imported" in out
    bank = read_bank(banks / "te.bank.tsv")
    assert bank.counts() == {"pdq": 4, "vpdq": 1, "md5": 1}
    assert bank.description == "from a file exchange"

    rc, out = _run("banks", "list", "--dir", str(banks))
    assert rc == 0 and out.startswith("te\t4 pdq, 1 vpdq, 1 md5\tfrom a file exchange")
    rc, out = _run("banks", "stats", "te", "--dir", str(banks))
    assert rc == 0
    assert "entries      6 (4 pdq, 1 vpdq, 1 md5)" in out
    assert "tag          violating\t1" in out and "PDQ index (flat)" in out

    target = tmp_path / "out.jsonl"
    rc, out = _run("banks", "export", "te", "--dir", str(banks), "--format", "hma-json",
                   "--out", str(target))  # fmt: skip
    assert rc == 0 and "6 entries of te" in out
    assert len([json.loads(line) for line in target.read_text().splitlines()]) == 6


def test_replacing_import_and_merge_conflicts(tmp_path: Path) -> None:
    args = ("--bank", "x", "--dir", str(tmp_path))
    _run("banks", "import", str(DATA / "signals.txt"), "--format", "te-signals", *args)
    with pytest.raises(BankError, match="duplicate entry id"):
        _run("banks", "import", str(DATA / "signals.txt"), "--format", "te-signals", *args,
             "--merge")  # fmt: skip
    _run("banks", "import", str(DATA / "clip-7.vpdq.txt"), "--format", "vpdq-file", *args)
    assert read_bank(tmp_path / "x.bank.tsv").counts() == {"pdq": 0, "vpdq": 1, "md5": 0}


def test_add_entries_from_text_and_files(tmp_path: Path) -> None:
    d = ("--dir", str(tmp_path))
    scene = synthetic.generate_batch(5, 1, size=128)[0][0]
    image = tmp_path / "known.png"
    cv2.imwrite(str(image), scene[:, :, ::-1])
    video = write_video(tmp_path / "known.mp4", demo_shots(shot_seconds=1.0)[:3], fps=10)
    rc, out = _run("banks", "add", "k", "--image", str(image), "--id", "img-1", "--tags",
                   "spam, ads", "--source", "case:9", *d)  # fmt: skip
    assert rc == 0 and "added pdq entry img-1" in out
    _run("banks", "add", "k", "--video", str(video), "--id", "vid-1", *d)
    _run("banks", "add", "k", "--file", str(video), "--id", "file-1", *d)
    _run("banks", "add", "k", "--md5", "00" * 16, "--id", "md5-1", *d)
    _run("banks", "add", "k", "--pdq", "ab" * 32, "--id", "pdq-1", *d)
    bank = read_bank(tmp_path / "k.bank.tsv")
    entries = {e.entry_id: e for e in bank.entries()}
    assert entries["img-1"].hash == pdq_hash(scene).hash
    assert entries["img-1"].tags == ("spam", "ads") and entries["img-1"].source == "case:9"
    assert entries["vid-1"].frames == hash_video_file(video)
    assert len(entries["vid-1"].frames) == 3  # one frame a second of a 3 s video
    import hashlib

    assert entries["file-1"].hash == hashlib.md5(video.read_bytes()).digest()
    with pytest.raises(HashError, match="64 hex digits"):
        _run("banks", "add", "k", "--pdq", "abc", "--id", "bad", *d)
    with pytest.raises(BankError, match="duplicate entry id 'pdq-1'"):
        _run("banks", "add", "k", "--pdq", "cd" * 32, "--id", "pdq-1", *d)
    assert len(read_bank(tmp_path / "k.bank.tsv")) == 5  # a failed add changes nothing


def test_parser_is_cheap_and_agrees_with_the_library() -> None:
    import subprocess
    import sys

    from consumers.cli.banks import FORMATS
    from pipeline.hashes.formats import FORMATS as LIBRARY_FORMATS

    assert FORMATS == LIBRARY_FORMATS
    code = (
        "import argparse, sys; from consumers.cli.banks import add_parser; "
        "add_parser(argparse.ArgumentParser().add_subparsers()); "
        "print(sorted(m for m in ('numba', 'pdqhash', 'numpy', 'av') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_list_reports_broken_files_and_missing_banks(tmp_path: Path) -> None:
    (tmp_path / "broken.bank.tsv").write_text("nonsense\n")
    rc, out = _run("banks", "list", "--dir", str(tmp_path))
    assert rc == 1 and "broken.bank.tsv\terror:" in out
    with pytest.raises(BankError, match="no bank 'nope'"):
        _run("banks", "stats", "nope", "--dir", str(tmp_path))
    with pytest.raises(SystemExit):
        _run("banks", "import", str(DATA / "signals.txt"), "--format", "xml", "--bank", "x")
