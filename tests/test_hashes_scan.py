"""Known content in ``clipguard scan``: a folder holding an exact copy of a banked file, a
re-encoded and resized copy of it, and an unrelated clip, scanned with the demo model, the demo
policies and a hash policy against a bank made with ``clipguard banks add`` (the file's MD5 and
its vPDQ). The exact copy is found by MD5, the re-encoded one by vPDQ; the summary and the
report list the matches; a rerun after the bank changed scans again."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import knownclips
import pytest

from consumers.cli import main
from pipeline.policies.bundled import DEMO_POLICIES

pytestmark = pytest.mark.usefixtures("policy_cache", "one_torch_thread")

_POLICY = """\
id: known-files
version: 1
kind: hash
description: Files and videos we have seen before.
owner: trust-and-safety@example.com
severity: critical
action: block
banks: [known]
"""
DEMO = DEMO_POLICIES


def _matches(entry: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {(m["label"], m["signal_type"], m["entry_id"]) for m in entry["hash_matches"]}


def test_a_folder_scan_finds_the_copy_by_md5_and_the_reencode_by_vpdq(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clip = knownclips.frames(2, 4.0)
    original = knownclips.write(tmp_path / "original.mp4", clip)
    library = tmp_path / "library"
    library.mkdir()
    shutil.copyfile(original, library / "copy.mp4")
    knownclips.write(library / "sub" / "reencoded.mkv", knownclips.resized(clip, 0.75), crf=32)
    knownclips.write(library / "unrelated.mp4", knownclips.frames(5, 4.0))
    banks = tmp_path / "banks"
    for how, entry in (("--file", "file-1"), ("--video", "clip-7")):
        argv = ["banks", "add", "known", how, str(original), "--id", entry, "--dir", str(banks)]
        assert main(argv) == 0
    policy = tmp_path / "known-files.yaml"
    policy.write_text(_POLICY)
    out = tmp_path / "out"
    argv = [
        "scan", str(library), "--policies", str(DEMO), "--policies", str(policy),
        "--banks", str(banks), "--out", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    capsys.readouterr()

    summary = json.loads((out / "summary.json").read_text())
    files = {Path(f["source"]).name: f for f in summary["files"]}
    copy, reencoded, unrelated = files["copy.mp4"], files["reencoded.mkv"], files["unrelated.mp4"]
    assert copy["md5"] == hashlib.md5(original.read_bytes()).hexdigest()
    assert reencoded["md5"] not in (None, copy["md5"])
    assert ("md5", "md5", "file-1") in _matches(copy)
    assert ("vpdq", "vpdq", "clip-7") in _matches(copy)
    assert ("vpdq", "vpdq", "clip-7") in _matches(reencoded)
    assert not any(m[1] == "md5" for m in _matches(reencoded))  # not the same bytes
    assert _matches(unrelated) == set()
    assert not [f for f in unrelated["flags"] if f["policy"] == "known-files"]
    vpdq = next(m for m in reencoded["hash_matches"] if m["label"] == "vpdq")
    assert vpdq["query_match_percent"] >= 80.0 and vpdq["bank"] == "known"
    # the whole-file matches are incidents over the whole file, in flags.jsonl too
    flags = [json.loads(line) for line in (out / "flags.jsonl").read_text().splitlines()]
    mine = [f for f in flags if f["policy"] == "known-files" and f["state"] == "closed"]
    by_file = {(Path(f["source"]).name, f["label"]) for f in mine}
    assert {("copy.mp4", "md5"), ("copy.mp4", "vpdq"), ("reencoded.mkv", "vpdq")} <= by_file
    assert all(f["match"]["entry_id"] in ("file-1", "clip-7") for f in mine)
    assert all(f["severity"] == "critical" and f["action"] == "block" for f in mine)
    report = (out / "report.html").read_text()
    assert "Known content" in report and "clip-7" in report and "file-1" in report
    assert "hash banks known" in report  # the hash policy in the policies table

    # again: nothing new; then the bank changes, and the folder is scanned again
    assert main(argv) == 0
    again = json.loads((out / "summary.json").read_text())
    assert {f["this_run"] for f in again["files"]} == {"skipped"}
    argv2 = ["banks", "add", "known", "--pdq", "cd" * 32, "--id", "new", "--dir", str(banks)]
    assert main(argv2) == 0
    assert main(argv) == 0
    changed = json.loads((out / "summary.json").read_text())
    assert {f["this_run"] for f in changed["files"]} == {"scanned"}
    capsys.readouterr()


def test_a_hash_policy_naming_a_missing_bank_stops_the_scan(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    knownclips.write(tmp_path / "clip.mp4", knownclips.frames(5, 1.0))
    policy = tmp_path / "known-files.yaml"
    policy.write_text(_POLICY)
    code = main(
        [
            "scan",
            str(tmp_path / "clip.mp4"),
            "--policies",
            str(policy),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert code == 1
    assert "no bank named 'known' is loaded (no banks are configured)" in capsys.readouterr().err
