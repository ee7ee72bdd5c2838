"""``clipguard policy backtest`` of a hash policy (``kind: hash``) on a store written by a real
scan.

A stream made here (textured H.264, tests/knownclips.py) holds a known clip between unrelated
content; one frame of that clip is banked as a PDQ entry. The clip's frames drift a pixel every
few frames, so their distance to the banked frame grows with their time from it: the distance
threshold decides how many of them match. The scan (with the policy at 31 bits: the deployed
version) keeps every sampled frame's PDQ hash; the backtest of the policy as deployed finds the
scan's own incident (same event id, the bank entry at its peak), and a lowered and a raised
threshold give the incidents this test works out from the stored hashes by brute force.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import knownclips
import pytest
from knownclips import HASH_POLICY, SCAN_FPS, ScannedStore, hash_policy
from streaming import read_topic

from consumers.cli import main
from pipeline.hashes.bank import read_bank
from pipeline.hashes.signals import hamming
from pipeline.policies.bundled import DEMO_POLICIES
from pipeline.store import open_store

pytestmark = pytest.mark.usefixtures("policy_cache", "one_torch_thread")


@pytest.fixture(scope="module")
def scanned(tmp_path_factory: pytest.TempPathFactory) -> ScannedStore:
    return ScannedStore(tmp_path_factory.mktemp("hashbacktest"))


def _flags(s: ScannedStore) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (s.out / "flags.jsonl").read_text().splitlines()]


def _expected(s: ScannedStore, distance: int) -> list[tuple[str, float, float, str]]:
    """The incidents at ``distance`` bits worked out from the stored hashes: the bank's one
    PDQ hash against every stored frame by brute force; with the default temporal rule (one
    frame opens, one failing frame closes) an incident is a run of consecutive matching
    frames of a stream (quality at least 50)."""
    (entry,) = read_bank(s.banks / "known.bank.tsv").entries()
    banked = bytes.fromhex(entry.hash_text())
    frames = open_store(s.store).frames().to_pylist()
    out = []
    for stream in sorted({f["stream_id"] for f in frames}):
        mine = sorted((f for f in frames if f["stream_id"] == stream), key=lambda f: f["ts"])
        run: list[float] = []
        for f in [*mine, None]:
            ok = f is not None and f["pdq_quality"] >= 50 and hamming(f["pdq"], banked) <= distance
            if ok:
                run.append(f["ts"])
            elif run:
                out.append((stream, run[0], run[-1], entry.entry_id))
                run = []
    return out


def _backtest(s: ScannedStore, policy: Path, out: Path, *more: str) -> dict[str, Any]:
    argv = [
        "policy", "backtest", str(policy), "--store", str(s.store), "--banks", str(s.banks),
        "--out", str(out), *more,
    ]  # fmt: skip
    assert main(argv) == 0
    return json.loads((out / "backtest.json").read_text())


def _spans(incidents: list[dict[str, Any]]) -> list[tuple[str, float, float, str]]:
    return [(i["stream_id"], i["start_ts"], i["end_ts"], i["match"]["entry_id"]) for i in incidents]


def test_the_deployed_policy_finds_the_scans_own_incident(
    scanned: ScannedStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = _backtest(scanned, scanned.deployed, tmp_path)
    live = [f for f in _flags(scanned) if f["policy"] == "known-clips" and f["state"] == "closed"]
    assert len(live) == 1 and live[0]["match"]["entry_id"] == "case-12"
    (found,) = result["incidents"]
    assert found["event_id"] == live[0]["event_id"]  # the live incident's id
    assert Path(found["stream_id"]).name == "live.mp4"
    assert (found["start_ts"], found["end_ts"]) == (live[0]["start_ts"], live[0]["end_ts"])
    assert found["match"]["bank"] == "known" and found["match"]["tags"] == ["spam"]
    assert found["match"]["distance"] == live[0]["match"]["distance"]
    assert _spans(result["incidents"]) == _expected(scanned, 31)
    assert result["summary"] == {
        "incidents": 1, "baseline_incidents": 1, "added": 0, "removed": 0, "changed": 0,
    }  # fmt: skip
    label = result["labels"]["known-clips/match"]
    assert label["unchanged"] == 1 and label["kind"] == "pdq"
    assert label["cutoff"] == pytest.approx(1 - 31 / 256)
    assert "known-clips/match: 1 incidents (before 1)" in capsys.readouterr().out
    page = (tmp_path / "report.html").read_text()
    assert "known-clips/match" in page


@pytest.mark.parametrize("distance", [10, 60])
def test_a_lowered_or_raised_threshold_gives_the_incidents_worked_out_by_hand(
    scanned: ScannedStore, tmp_path: Path, distance: int
) -> None:
    expected = _expected(scanned, distance)
    deployed = _expected(scanned, 31)
    assert expected and expected != deployed  # the threshold matters on this stream
    edited = hash_policy(tmp_path / "edited", 2, distance)
    result = _backtest(scanned, edited, tmp_path / "out")
    assert _spans(result["incidents"]) == expected
    assert all(i["policy_version"] == 2 for i in result["incidents"])
    label = result["labels"]["known-clips/match"]
    assert label["baseline_incidents"] == len(deployed)
    # one stream, one run each side, overlapping: changed, not added or removed
    (change,) = label["changed"]
    assert (change["new"]["start_ts"], change["new"]["end_ts"]) == expected[0][1:3]
    assert [(o["start_ts"], o["end_ts"]) for o in change["old"]] == [deployed[0][1:3]]
    assert change["old"][0]["policy_version"] == 1  # the deployed version, from the store
    assert label["added"] == [] and label["removed"] == []
    new_passing = sum(b - a for _, a, b, _ in expected) * SCAN_FPS + len(expected)
    assert label["frames_passing"] == round(new_passing)


def test_against_and_errors(scanned: ScannedStore, tmp_path: Path) -> None:
    edited = hash_policy(tmp_path / "edited", 2, 10)
    against = hash_policy(tmp_path / "against", 1, 60)
    result = _backtest(scanned, edited, tmp_path / "out", "--against", str(against))
    label = result["labels"]["known-clips/match"]
    assert [(o["start_ts"], o["end_ts"]) for o in label["changed"][0]["old"]] == [
        _expected(scanned, 60)[0][1:3]
    ]
    # no banks given, or a bank the policy names missing: a clear error, exit status 2
    argv = ["policy", "backtest", str(edited), "--store", str(scanned.store)]
    assert main([*argv, "--out", str(tmp_path / "x")]) != 0
    empty = tmp_path / "no-banks"
    empty.mkdir()
    assert main([*argv, "--banks", str(empty), "--out", str(tmp_path / "y")]) != 0


def test_no_hashed_frame_is_refused_alone_and_empty_beside_clip_policies(
    scanned: ScannedStore,
) -> None:
    from pipeline.errors import StoreError
    from pipeline.hashes.store import BankStore
    from pipeline.policies import load_policies
    from pipeline.store import FrameFilter
    from pipeline.store.hashbacktest import backtest_hashes

    policies = load_policies([scanned.deployed])
    banks = BankStore([scanned.banks]).snapshot
    store = open_store(scanned.store)
    nowhere = FrameFilter(streams=("no-such-stream",))
    with pytest.raises(StoreError, match="has a PDQ hash"):
        backtest_hashes(policies, store, banks, flt=nowhere)
    empty = backtest_hashes(policies, store, banks, flt=nowhere, allow_empty=True)
    assert empty.frames == 0 and empty.incidents == [] and empty.baseline_incidents == []
    assert empty.labels["known-clips/match"].incidents == 0


def test_a_store_of_clip_and_hash_policies_backtests_both(tmp_path: Path) -> None:
    """Snapshots keep the hash policies too: a CLIP backtest of a store written with a hash
    policy in force reads the stored set, and one run backtests both kinds."""
    clips = tmp_path / "clips"
    known = knownclips.write(clips / "known.mp4", knownclips.frames(2, 3.0))
    banks = tmp_path / "banks"
    assert (
        main(["banks", "add", "known", "--video", str(known), "--id", "v-1", "--dir", str(banks)])
        == 0
    )
    policies = tmp_path / "policies"
    hash_policy(policies, 1, 31).write_text(
        HASH_POLICY.format(version=1, distance=31).replace("[pdq]", "[pdq, vpdq]")
    )
    store = tmp_path / "store"
    argv = [
        "scan", str(clips), "--policies", str(DEMO_POLICIES), "--policies", str(policies),
        "--banks", str(banks), "--store", str(store), "--out", str(tmp_path / "scan"),
    ]  # fmt: skip
    assert main(argv) == 0
    out = tmp_path / "bt"
    argv = ["policy", "backtest", str(DEMO_POLICIES), str(policies), "--store", str(store)]
    assert main([*argv, "--banks", str(banks), "--out", str(out)]) == 0
    result = json.loads((out / "backtest.json").read_text())
    assert "known-clips/match" in result["labels"] and "spam-text/spam-text" in result["labels"]
    assert result["summary"]["added"] == result["summary"]["removed"] == 0
    (hit,) = [i for i in result["incidents"] if i["policy"] == "known-clips"]
    assert hit["match"]["entry_id"] == "v-1"
    # the CLIP policies alone against the same store (its snapshot holds the hash policy)
    assert (
        main(["policy", "backtest", str(DEMO_POLICIES), "--store", str(store), "--out", str(out)])
        == 0
    )


def test_publish_sends_hash_incidents_as_retro_flags_with_the_live_ids(
    scanned: ScannedStore, kafka: Any, tmp_path: Path
) -> None:
    kafka.create(only=["flags"])
    argv = [
        "policy", "backtest", str(scanned.deployed), "--store", str(scanned.store),
        "--banks", str(scanned.banks), "--out", str(tmp_path), "--publish",
        "--bootstrap-servers", kafka.bootstrap, "--flags-topic", kafka.names.flags,
    ]  # fmt: skip
    for _ in range(2):  # twice: the same ids again
        assert main(argv) == 0
    retro = [r.json() for r in read_topic(kafka.bootstrap, kafka.names.flags)]
    live = {f["event_id"] for f in _flags(scanned) if f["policy"] == "known-clips"}
    assert len(retro) == 2 and {f["event_id"] for f in retro} == live
    for f in retro:
        assert f["retro"] and f["state"] == "closed" and f["match"]["entry_id"] == "case-12"


def test_snapshots_keep_hash_policies_and_inconsistent_ones_are_refused(tmp_path: Path) -> None:
    from pipeline.errors import StoreError
    from pipeline.models import DEMO_MODEL, load_clip
    from pipeline.policies import load_policies
    from pipeline.policies.compile import PolicyCompiler
    from pipeline.store import read_snapshot, snapshot_bytes

    model = load_clip(DEMO_MODEL)
    compiler = PolicyCompiler(model, cache_dir=tmp_path / "pc")
    folder = tmp_path / "hash"
    hash_policy(folder, 3, 20)
    docs = {}
    for name, paths in (("hash", [folder]), ("both", [DEMO_POLICIES, folder])):
        policies = compiler.compile(load_policies(paths))
        data = snapshot_bytes(policies, model=model.name, weights_sha256=model.fingerprint())
        back = read_snapshot(data)
        assert back.id == policies.id and back.policies.hashes == policies.hashes
        assert dict(back.policies.rules) == dict(policies.rules)
        docs[name] = json.loads(data)
    clip_only = compiler.compile(load_policies([DEMO_POLICIES]))
    plain = json.loads(snapshot_bytes(clip_only, model=model.name, weights_sha256="w"))
    assert "hash_policies" not in plain  # a CLIP-only set's snapshot is as it was
    both, alone = docs["both"], docs["hash"]
    bad_policy = [{"sha256": "0" * 64, "policy": {"id": "known-clips", "kind": "hash"}}]
    for broken in (
        {**both, "hash_policies": []},  # no longer hashes to its id
        {**both, "hash_policies": bad_policy},  # not a valid hash policy
        {**both, "labels": []},  # CLIP policies without their labels
        {**alone, "labels": both["labels"]},  # labels without CLIP policies
        {**alone, "hash_policies": []},  # no policy at all
        {**alone, "hash_policies": alone["hash_policies"] * 10_001},
    ):
        with pytest.raises(StoreError):
            read_snapshot(json.dumps(broken).encode())
