"""Known content in the pipeline: PDQ of sampled frames in the decode stage (in process and
across the decode pool's process boundary), ``kind: hash`` policies in the policy format, and
their judging through the same temporal rules as CLIP labels (match objects, nearest
distances, shadow mode, vPDQ windows, whole-file matches).

The policy sets here hold hash policies only, compiled without a model (a matrix of no rows):
what the judge does with CLIP labels is tested elsewhere; beside them, in the stream and scan
tests."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import av
import knownclips
import numpy as np
import pytest
from av.video.reformatter import Interpolation, VideoReformatter

from pipeline.decode import DecodeOptions, DecodePool, Sampling, decode_bytes
from pipeline.decode.hashing import hash_size
from pipeline.errors import ConfigError, PolicyError
from pipeline.events import ScoreRecord
from pipeline.hashes.bank import Bank, BankBuilder, write_bank
from pipeline.hashes.files import hash_video_file
from pipeline.hashes.match import Matcher
from pipeline.hashes.pdq import DihedralHashes, PdqHash, pdq_dihedral, pdq_hash
from pipeline.hashes.signals import VpdqFrame, format_vpdq, hamming
from pipeline.hashes.store import BankSnapshot, BankStore
from pipeline.policies.bundled import DEMO_POLICIES
from pipeline.policies.hashing import check_banks, decode_hashes, file_matches
from pipeline.policies.judge import FrameRef, Judge
from pipeline.policies.schema import (
    HashPolicy,
    LoadedPolicies,
    load_policies,
    parse_document,
    parse_policy,
)
from pipeline.policies.score import CompiledPolicies
from pipeline.policies.snapshot import PolicySet

# --------------------------------------------------------------------------------------------
# the decode stage


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pictures = knownclips.frames(3, 3.0)
    return knownclips.write(tmp_path_factory.mktemp("clip") / "clip.mp4", pictures)


def _decoded_rgb(path: Path, size: tuple[int, int] | None) -> list[np.ndarray]:
    """Every frame of ``path`` as RGB, at full size or scaled by swscale (area), read here
    with PyAV directly."""
    out = []
    scaler = VideoReformatter()
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            if size is None:
                out.append(frame.to_ndarray(format="rgb24"))
            else:
                small = scaler.reformat(
                    frame, size[0], size[1], "rgb24", interpolation=Interpolation.AREA
                )
                out.append(small.to_ndarray())
    return out


def test_hash_size_divides_by_a_whole_factor() -> None:
    assert hash_size(1920, 1080, 640) == (640, 360)
    assert hash_size(1280, 720, 640) == (640, 360)
    assert hash_size(3840, 2160, 640) == (640, 360)
    assert hash_size(854, 480, 640) == (427, 240)
    assert hash_size(1080, 1920, 640) == (360, 640)  # portrait
    assert hash_size(320, 240, 640) == (320, 240)  # small pictures are not scaled
    assert hash_size(1920, 1080, 0) == (1920, 1080)  # 0: full size


def test_options_validate_the_hash_settings() -> None:
    with pytest.raises(ConfigError, match="hashes must be one of"):
        DecodeOptions(64, hashes="md5")  # type: ignore[arg-type]
    for bad in (10, -1, 9000, True):
        with pytest.raises(ConfigError, match="hash_side"):
            DecodeOptions(64, hash_side=bad)
    assert DecodeOptions(64).hashes == "none"  # hashing costs: only when asked


def test_full_size_hashes_are_the_reference_hashers(clip: Path) -> None:
    """hash_side=0: the decode stage's hash of each sampled frame is the one vPDQ's way of
    hashing (full-size RGB24, the bank side: ``banks add --video``) gives, bit for bit."""
    options = DecodeOptions(64, sampling=Sampling(mode="fps", fps=1.0), hashes="pdq", hash_side=0)
    result = decode_bytes(clip.read_bytes(), "video/mp4", options)
    banked = hash_video_file(clip)  # one frame a second, as vPDQ
    assert len(result.frames) == len(banked) == 3
    for frame, ref in zip(result.frames, banked, strict=True):
        assert isinstance(frame.pdq, PdqHash)
        assert (frame.pdq.hash, frame.pdq.quality) == (ref.pdq, ref.quality)
        assert frame.image.shape == (64, 64, 3)  # the model's picture is another thing


def test_downscaled_hashes_are_pdq_of_the_downscale(clip: Path) -> None:
    options = DecodeOptions(64, sampling=Sampling(mode="all"), hashes="pdq", hash_side=160)
    result = decode_bytes(clip.read_bytes(), "video/mp4", options)
    small = _decoded_rgb(clip, (160, 120))  # 320 x 240 divided by 2
    assert len(result.frames) == len(small) == 30
    for frame, picture in zip(result.frames, small, strict=True):
        assert frame.pdq == pdq_hash(picture)  # exactly PDQ of the picture it was given


def test_hd_frames_hashed_at_640_stay_within_the_documented_bound(tmp_path: Path) -> None:
    """The default (a 1280 x 720 frame divided by 2 before PDQ) against the reference's
    full-size hash: the README's bound (``bench/bench_hashes_decode.py`` measures it on more
    frames and sizes)."""
    base = knownclips.texture(21, 1280, 720)
    pictures = [np.ascontiguousarray(np.roll(base, 40 * i, axis=1)) for i in range(4)]
    path = knownclips.write(tmp_path / "hd.mp4", pictures, fps=1)
    result = decode_bytes(path.read_bytes(), "video/mp4", DecodeOptions(64, hashes="pdq"))
    full = hash_video_file(path)
    assert len(result.frames) == len(full) == 4
    distances = [
        hamming(frame.pdq.hash, ref.pdq)
        for frame, ref in zip(result.frames, full, strict=True)
        if isinstance(frame.pdq, PdqHash)
    ]
    assert len(distances) == 4 and max(distances) <= 16, distances


def test_hashes_cross_the_process_boundary(clip: Path) -> None:
    data = clip.read_bytes()
    here = decode_bytes(data, "video/mp4", DecodeOptions(64, hashes="pdq", fit="tiles"))
    with DecodePool(1) as pool:
        tiles = DecodeOptions(64, hashes="pdq", fit="tiles")
        there = pool.submit_bytes(data, "video/mp4", tiles).result(timeout=60)
        dihedral = DecodeOptions(64, hashes="dihedral")
        eight = pool.submit_bytes(data, "video/mp4", dihedral).result(timeout=60)
        plain = pool.submit_bytes(data, "video/mp4", DecodeOptions(64)).result(timeout=60)
    assert len(there.frames) > len({f.index for f in there.frames})  # tiles: 4:3 gives two
    assert [f.pdq for f in there.frames] == [f.pdq for f in here.frames]
    for frame in there.frames:  # every tile of a frame carries the frame's hash
        first = next(f for f in there.frames if f.index == frame.index)
        assert frame.pdq == first.pdq
    assert all(isinstance(f.pdq, DihedralHashes) for f in eight.frames)
    firsts = {f.index: f.pdq for f in there.frames}
    for f in eight.frames:
        assert isinstance(f.pdq, DihedralHashes)
        assert PdqHash(f.pdq.hashes[0], f.pdq.quality) == firsts[f.index]
    assert all(f.pdq is None for f in plain.frames)


def test_a_still_image_is_hashed_too() -> None:
    picture = knownclips.texture(9, 200, 150)
    import cv2

    ok, png = cv2.imencode(".png", picture[:, :, ::-1])
    assert ok
    result = decode_bytes(png.tobytes(), "image/png", DecodeOptions(64, hashes="dihedral"))
    assert result.frames[0].pdq == pdq_dihedral(picture)


# --------------------------------------------------------------------------------------------
# the policy format

_HASH_DOC = """\
id: known
version: 2
kind: hash
description: Known clips.
owner: ts@example.com
severity: high
action: block
banks: [known]
"""


def test_a_policy_file_is_either_kind(tmp_path: Path) -> None:
    policy = parse_document(_HASH_DOC)
    assert isinstance(policy, HashPolicy) and policy.banks == ["known"]
    assert (policy.max_distance, policy.min_quality, policy.temporal.k) == (31, 50, 1)
    with pytest.raises(PolicyError, match="a hash policy"):
        parse_policy(_HASH_DOC)
    with pytest.raises(PolicyError, match=r"<string>:3:7: kind: 'video' is not 'clip' or 'hash'"):
        parse_document(_HASH_DOC.replace("kind: hash", "kind: video"))
    with pytest.raises(PolicyError, match=r"x.yaml:8:16: banks.1: String should match pattern"):
        parse_document(_HASH_DOC.replace("[known]", "[known, ../etc]"), path="x.yaml")
    with pytest.raises(PolicyError, match=r":9:1: labels: unknown key"):
        parse_document(_HASH_DOC + "labels: []\n")
    with pytest.raises(PolicyError, match="banks listed twice"):
        parse_document(_HASH_DOC.replace("[known]", "[known, known]"))

    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "known.yaml").write_text(_HASH_DOC)
    demo = DEMO_POLICIES / "red-triangle.yaml"
    (folder / "red-triangle.yaml").write_text(
        demo.read_text().replace("version:", "kind: clip\nversion:", 1)
    )
    loaded = load_policies([folder])
    assert [lp.policy.id for lp in loaded] == ["red-triangle"]
    assert [hp.policy.id for hp in loaded.hashes] == ["known"]
    clip_only = LoadedPolicies(loaded.loaded)
    assert loaded.digest != clip_only.digest  # the hash policy is part of the set
    assert loaded.only(["red-triangle"]).digest == clip_only.digest
    (folder / "red-triangle.yaml").write_text(_HASH_DOC.replace("id: known", "id: red-triangle"))
    with pytest.raises(PolicyError, match=r"duplicate policy id 'red-triangle'"):
        load_policies([folder, demo])


def test_banks_named_by_policies_must_be_loaded(tmp_path: Path) -> None:
    (tmp_path / "known.yaml").write_text(_HASH_DOC)
    policies = load_policies([tmp_path])
    check_banks(policies.hashes, {"known", "other"})
    with pytest.raises(PolicyError, match=r"known.yaml: banks: no bank named 'known'"):
        check_banks(policies.hashes, {"other"})
    with pytest.raises(PolicyError, match="no banks are configured"):
        check_banks(policies.hashes, set())
    assert decode_hashes(p.policy for p in policies.hashes) == "pdq"
    dihedral = HashPolicy.model_validate({**_hash_policy().model_dump(), "dihedral": True})
    assert decode_hashes([_hash_policy(), dihedral]) == "dihedral"
    md5_only = HashPolicy.model_validate({**_hash_policy().model_dump(), "signals": ["md5"]})
    assert decode_hashes([md5_only]) == "none"


# --------------------------------------------------------------------------------------------
# judging


def _hash_policy(**changes: Any) -> HashPolicy:
    doc = parse_document(_HASH_DOC).model_dump()
    return HashPolicy.model_validate({**doc, **changes})


def _policy_set(tmp_path: Path, *policies: HashPolicy) -> PolicySet:
    import yaml

    tmp_path.mkdir(parents=True, exist_ok=True)
    for p in policies:
        (tmp_path / f"{p.id}.yaml").write_text(yaml.safe_dump(p.model_dump(mode="json")))
    loaded = load_policies([tmp_path / f"{p.id}.yaml" for p in policies])
    compiled = CompiledPolicies(
        matrix=np.zeros((0, 4), np.float32), labels=(), logit_scale=100.0, policy_set=loaded.digest
    )
    return PolicySet.of(loaded, compiled)


def _snapshot(tmp_path: Path, bank: Bank) -> BankSnapshot:
    folder = tmp_path / "banks"
    write_bank(bank, folder)
    return BankStore([folder]).snapshot


@pytest.fixture(scope="module")
def pictures() -> dict[str, list[np.ndarray]]:
    """Three scenes of eight distinct frames (panning 5 pixels a frame): a known one and two
    others."""
    scenes = {}
    for name, seed in (("a", 1), ("known", 2), ("b", 3)):
        base = knownclips.texture(seed)
        scenes[name] = [np.ascontiguousarray(np.roll(base, 5 * i, axis=1)) for i in range(8)]
    return scenes


def _judge(
    policies: PolicySet,
    banks: BankSnapshot,
    hashes: Sequence[PdqHash | DihedralHashes],
    *,
    windows: dict[str, Any] | None = None,
) -> Any:
    judge = Judge("test-model")
    state = judge.new_state("cam-1", policies)
    refs = [FrameRef(seq=0, frame_index=i, ts=i / 2) for i in range(len(hashes))]
    out = judge.judge(
        state,
        refs,
        np.zeros((len(refs), 4), np.float32),
        policies,
        hashes=list(hashes),
        banks=banks,
        windows=windows,
    )
    out.extend(judge.finish(state, policies))
    return out


def test_a_known_frame_opens_an_incident_with_the_entry(
    tmp_path: Path, pictures: dict[str, list[np.ndarray]]
) -> None:
    builder = BankBuilder()
    known = [pdq_hash(p) for p in pictures["known"][:4]]
    for i, h in enumerate(known):
        builder.add("pdq", h.hex, f"still-{i}", ["terror"], "case:1")
    policies = _policy_set(tmp_path, _hash_policy())
    banks = _snapshot(tmp_path, builder.build("known"))
    others = [pdq_hash(p) for p in pictures["a"][:4] + pictures["b"][:4]]
    stream = others[:4] + known + others[4:]
    out = _judge(policies, banks, stream)
    assert [(f.policy, f.label, f.state) for f in out.flags] == [
        ("known", "match", "open"),
        ("known", "match", "closed"),
    ]
    opened, closed = out.flags
    assert opened.start_ts == 2.0 and closed.end_ts == 3.5  # the known frames, to the frame
    assert (closed.severity, closed.action, closed.policy_version) == ("high", "block", 2)
    assert closed.match is not None
    assert (closed.match.bank, closed.match.entry_id, closed.match.signal_type) == (
        "known",
        "still-0",
        "pdq",
    )
    assert closed.match.distance == 0 and closed.match.tags == ["terror"]
    assert closed.peak_ts == 2.0 and closed.peak_score == 1.0
    assert closed.threshold == pytest.approx(1 - 31 / 256)
    # every record says how near the bank came; the CLIP scores are untouched
    for record, h in zip(out.scores, stream, strict=True):
        assert record.scores == {} and record.pdq_quality == h.quality and record.pdq == h.hex
        d = min(hamming(h.hash, k.hash) for k in known)
        assert record.nearest == {"known": d if d <= 31 else None}
        assert record.flagged == (["known/match"] if d <= 31 else [])
    assert [r.nearest for r in out.scores[4:8]] == [{"known": 0}] * 4
    assert all(r.nearest == {"known": None} for r in out.scores[:4] + out.scores[8:])


def test_shadow_k_of_n_and_quality_rules(
    tmp_path: Path, pictures: dict[str, list[np.ndarray]]
) -> None:
    known = pdq_hash(pictures["known"][0])
    builder = BankBuilder()
    builder.add("pdq", known.hex, "k", [], "")
    banks = _snapshot(tmp_path, builder.build("known"))
    other = pdq_hash(pictures["a"][0])
    stream = [known, other, known, other, other, other]

    shadow = _policy_set(tmp_path / "s", _hash_policy(mode="shadow"))
    out = _judge(shadow, banks, stream)
    assert not out.flags and [f.state for f in out.shadow] == ["open", "closed"] * 2
    assert all(r.flagged == [] for r in out.scores)  # shadow policies flag nothing

    two_of_three = _policy_set(tmp_path / "k", _hash_policy(temporal={"k": 2, "n": 3}))
    out = _judge(two_of_three, banks, stream)
    assert [(f.state, f.start_ts) for f in out.flags] == [("open", 0.0), ("closed", 0.0)]
    assert out.flags[1].end_ts == 1.0

    flat = PdqHash(known.hash, 10)  # the same bits, but a flat picture's quality
    out = _judge(_policy_set(tmp_path / "q", _hash_policy()), banks, [flat, flat])
    assert not out.flags and all(r.nearest == {"known": None} for r in out.scores)


def test_mirrors_match_only_with_dihedral(
    tmp_path: Path, pictures: dict[str, list[np.ndarray]]
) -> None:
    picture = pictures["known"][0]
    builder = BankBuilder()
    builder.add("pdq", pdq_hash(picture).hex, "k", [], "")
    banks = _snapshot(tmp_path, builder.build("known"))
    mirrored = pdq_dihedral(np.ascontiguousarray(picture[:, ::-1]))
    plain = _policy_set(tmp_path / "p", _hash_policy())
    assert not _judge(plain, banks, [mirrored]).flags
    both = _policy_set(tmp_path / "d", _hash_policy(dihedral=True))
    flags = _judge(both, banks, [mirrored]).flags
    assert flags and flags[0].match is not None and flags[0].match.variant == "flip_y"


def test_score_records_keep_each_frames_pdq_for_banks_added_later(
    tmp_path: Path, pictures: dict[str, list[np.ndarray]]
) -> None:
    """Records published before a bank held the content, read back from JSON, are enough to
    find it once the bank does: each keeps its frame's own PDQ hash and quality."""
    banks = _snapshot(tmp_path, BankBuilder().build("known"))  # empty when the frames pass
    frames = pictures["a"][:4] + pictures["known"][:2]
    mirrored = pdq_dihedral(np.ascontiguousarray(frames[-1][:, ::-1]))
    hashes: list[PdqHash | DihedralHashes] = [pdq_hash(p) for p in frames[:-1]] + [mirrored]
    out = _judge(_policy_set(tmp_path / "p", _hash_policy(dihedral=True)), banks, hashes)
    assert not out.flags
    stored = [ScoreRecord.model_validate_json(r.to_json()) for r in out.scores]
    assert [r.pdq for r in stored] == [h.hex for h in hashes]
    assert stored[-1].pdq == mirrored.hashes[0].hex()  # the frame as it came, not a mirror
    later = BankBuilder()
    later.add("pdq", pdq_hash(pictures["known"][0]).hex, "found-later", [], "")
    matcher = Matcher({"known": later.build("known")})
    replayed = [PdqHash(bytes.fromhex(r.pdq or ""), r.pdq_quality or 0) for r in stored]
    found = [bool(r.matches) for r in matcher.match_frames(replayed)]
    assert found == [False, False, False, False, True, False]
    assert matcher.match_frames(replayed)[4].matches[0].entry_id == "found-later"


def test_a_banked_video_matches_frame_by_frame_and_its_window_bridges_a_bad_frame(
    tmp_path: Path, pictures: dict[str, list[np.ndarray]]
) -> None:
    known = [pdq_hash(p) for p in pictures["known"]]
    video = [VpdqFrame(h.hash, h.quality, i / 2) for i, h in enumerate(known)]
    builder = BankBuilder()
    builder.add("vpdq", format_vpdq(video), "clip-7", ["spam"], "hma:1")
    banks = _snapshot(tmp_path, builder.build("known"))
    noise = PdqHash(np.random.default_rng(0).bytes(32), 100)  # one frame far from everything
    stream = [pdq_hash(pictures["a"][0]), *known[:6], noise, *known[6:], pdq_hash(pictures["b"][0])]
    policies = _policy_set(tmp_path, _hash_policy(video={"window_s": 3.0}))

    alone = _judge(policies, banks, stream)  # frame by frame: the bad frame splits it
    assert [(f.state, f.start_ts, f.end_ts) for f in alone.flags] == [
        ("open", 0.5, None),
        ("closed", 0.5, 3.0),
        ("open", 4.0, None),
        ("closed", 4.0, 4.5),
    ]
    assert alone.flags[0].match is not None and alone.flags[0].match.signal_type == "vpdq"
    assert alone.flags[0].match.entry_id == "clip-7"

    windows: dict[str, Any] = {}
    bridged = _judge(policies, banks, stream, windows=windows)
    # in the last 3 s at the bad frame, 5 of 6 frames match the video (83% >= 80%)
    assert [(f.state, f.start_ts, f.end_ts) for f in bridged.flags] == [
        ("open", 0.5, None),
        ("closed", 0.5, 4.5),
    ]
    assert "known/match" in bridged.scores[7].flagged  # the bad frame passed on the window
    assert bridged.scores[7].nearest == {"known": None}
    assert windows["known"].window_s == 3.0 and len(windows["known"]) == 6


def test_whole_files_match_by_md5_and_vpdq(
    tmp_path: Path, pictures: dict[str, list[np.ndarray]]
) -> None:
    known = [pdq_hash(p) for p in pictures["known"]]
    video = [VpdqFrame(h.hash, h.quality, float(i)) for i, h in enumerate(known)]
    builder = BankBuilder()
    builder.add("vpdq", format_vpdq(video), "clip-7", [], "")
    builder.add("md5", "9e107d9d372bb6826bd81d3542a419d6", "file-1", ["x"], "")
    banks = _snapshot(tmp_path, builder.build("known"))
    policies = _policy_set(tmp_path, _hash_policy())
    matches = file_matches(
        policies.hashes,
        md5=bytes.fromhex("9e107d9d372bb6826bd81d3542a419d6"),
        frames=video[::2],
        banks=banks,
    )
    assert [(m.label, m.best.entry_id) for m in matches] == [("md5", "file-1"), ("vpdq", "clip-7")]
    assert matches[1].best.query_match_percent == 100.0
    assert matches[1].best.compared_match_percent == pytest.approx(50.0)
    out = Judge("m").judge_file("f.mp4", policies, matches, duration=8.0, source="f.mp4")
    assert [(f.label, f.state, f.end_ts) for f in out.flags] == [
        ("md5", "open", None),
        ("md5", "closed", 8.0),
        ("vpdq", "open", None),
        ("vpdq", "closed", 8.0),
    ]
    assert out.flags[0].event_id == out.flags[1].event_id != out.flags[2].event_id
    assert out.flags[1].match is not None and out.flags[1].match.signal_type == "md5"
    unrelated = pdq_hash(pictures["a"][0])
    elsewhere = [VpdqFrame(unrelated.hash, unrelated.quality, 0.0)]
    assert file_matches(policies.hashes, md5=b"\0" * 16, frames=elsewhere, banks=banks) == []


def test_lint_checks_hash_policies_beside_clip_policies(tmp_path: Path) -> None:
    from pipeline.policies.tools.lint import lint

    (tmp_path / "known.yaml").write_text(_HASH_DOC)
    (tmp_path / "bad.yaml").write_text(
        _HASH_DOC.replace("id: known", "id: bad").replace("banks: [known]", "max_distance: 300")
    )
    demo = DEMO_POLICIES
    report = lint([tmp_path, demo])
    assert report.policies == 3  # known and the two demo policies
    assert report.errors == (
        f"{tmp_path / 'bad.yaml'}:1:1: banks: required key is missing",
        f"{tmp_path / 'bad.yaml'}:8:15: max_distance: Input should be less than or equal to 127",
    )
