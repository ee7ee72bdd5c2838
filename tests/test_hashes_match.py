"""Matching: indexes equal brute-force Hamming search; frames, files and videos against banks."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from vpdq_ref import need_vpdq

from pipeline.demo import scenes as synthetic
from pipeline.errors import HashError
from pipeline.hashes.bank import Bank, BankBuilder
from pipeline.hashes.index import PdqIndex, RangeResult, brute_force_search
from pipeline.hashes.match import Matcher
from pipeline.hashes.pdq import PdqHash, pdq_dihedral, pdq_hash
from pipeline.hashes.signals import VpdqFrame, hamming
from pipeline.hashes.video import StreamWindow, VideoMatcher, VpdqComparison, vpdq_compare


def _flip(
    rng: np.random.Generator, rows: npt.NDArray[np.uint8], bits: int
) -> npt.NDArray[np.uint8]:
    """Copies of ``rows`` with exactly ``bits`` random bits flipped in each."""
    out = np.unpackbits(rows, axis=1)  # (n, 32) -> (n, 256)
    for r in out:
        r[rng.choice(256, bits, replace=False)] ^= 1
    return np.packbits(out, axis=1)  # (n, 256) -> (n, 32)


def _queries(
    rng: np.random.Generator, bank: npt.NDArray[np.uint8], n: int
) -> npt.NDArray[np.uint8]:
    """Near copies of bank rows at every distance from 0 to 48, plus unrelated hashes."""
    picks = bank[rng.integers(0, len(bank), n)]
    near = np.concatenate([_flip(rng, picks[i : i + 1], i % 49) for i in range(n)])
    unrelated = rng.integers(0, 256, (n // 4, 32), dtype=np.uint8)
    return np.concatenate([near, unrelated])


def _same(a: RangeResult, b: RangeResult) -> None:
    np.testing.assert_array_equal(a.lims, b.lims)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.distances, b.distances)


@pytest.mark.parametrize("kind", ["flat", "mih", "mih-compact"])
@pytest.mark.parametrize("radius", [0, 7, 15, 16, 31, 32, 47, 60])
def test_index_equals_brute_force_on_random_hashes(kind: str, radius: int) -> None:
    rng = np.random.default_rng(radius)
    bank = rng.integers(0, 256, (30_000, 32), dtype=np.uint8)
    queries = _queries(rng, bank, 400)
    index = PdqIndex(bank, kind=kind.split("-")[0], fingerprints=kind == "mih")  # type: ignore[arg-type]
    got = index.search(queries, radius)
    want = brute_force_search(bank, queries, radius)
    _same(got, want)
    assert len(want.ids) > 0  # the near copies do match


def test_index_equals_brute_force_on_clustered_hashes() -> None:
    """Real banks are not uniform: many near-duplicates sharing most 16-bit words."""
    rng = np.random.default_rng(7)
    centres = rng.integers(0, 256, (50, 32), dtype=np.uint8)
    bank = np.concatenate([_flip(rng, np.repeat(centres, 200, axis=0), b) for b in (2, 9, 20)])
    queries = _queries(rng, bank, 300)
    want = brute_force_search(bank, queries, 31)
    for kind in ("flat", "mih"):
        for fingerprints in (True, False):
            got = PdqIndex(bank, kind=kind, fingerprints=fingerprints).search(queries, 31)  # type: ignore[arg-type]
            _same(got, want)


def test_threads_give_the_same_answer() -> None:
    rng = np.random.default_rng(5)
    bank = rng.integers(0, 256, (25_000, 32), dtype=np.uint8)
    queries = _queries(rng, bank, 301)
    one = PdqIndex(bank, kind="mih").search(queries, 31)
    _same(PdqIndex(bank, kind="mih", threads=3).search(queries, 31), one)
    _same(PdqIndex(bank, kind="mih", threads=2, fingerprints=False).search(queries, 31), one)
    _same(PdqIndex(bank, kind="flat", threads=2).search(queries, 31), one)


def test_many_matches_grow_the_output() -> None:
    """A clustered bank where each query matches thousands of entries (the compiled loops
    start with small output arrays and must grow them)."""
    rng = np.random.default_rng(6)
    centre = rng.integers(0, 256, (1, 32), dtype=np.uint8)
    bank = _flip(rng, np.repeat(centre, 30_000, axis=0), 5)
    queries = np.repeat(centre, 3, axis=0)
    want = brute_force_search(bank, queries, 31)
    for fingerprints in (True, False):
        got = PdqIndex(bank, kind="mih", fingerprints=fingerprints).search(queries, 31)
        assert len(got.ids) == 90_000
        _same(got, want)


def test_index_edges() -> None:
    empty = PdqIndex(np.zeros((0, 32), np.uint8))
    r = empty.search(np.zeros((3, 32), np.uint8), 31)
    assert len(r) == 3 and len(r.ids) == 0
    bank = np.zeros((5, 32), np.uint8)
    assert PdqIndex(bank).kind == "flat"
    assert PdqIndex(bank, kind="mih").search(bank[:0], 31).lims.tolist() == [0]
    with pytest.raises(HashError, match="max_distance"):
        PdqIndex(bank).search(bank, 200)
    with pytest.raises(HashError, match="bytes a row"):
        PdqIndex(np.zeros((5, 16), np.uint8))
    with pytest.raises(HashError, match="uint8"):
        PdqIndex(bank.astype(np.int16))  # type: ignore[arg-type]


# --- frames against banks -------------------------------------------------------------------


def _bank(
    name: str, hashes: list[bytes], *, md5: list[bytes] = (), tags: tuple[str, ...] = ()
) -> Bank:  # type: ignore[assignment]
    b = BankBuilder()
    for i, h in enumerate(hashes):
        b.add("pdq", h.hex(), f"{name}-{i}", tags, f"src-{i}")
    for i, m in enumerate(md5):
        b.add("md5", m.hex(), f"{name}-file-{i}", tags)
    return b.build(name)


SCENES, _, _ = synthetic.generate_batch(77, 12, size=160)


def test_frames_match_their_bank_entries() -> None:
    known = [pdq_hash(s) for s in SCENES[:6]]
    matcher = Matcher(
        {
            "a": _bank("a", [k.hash for k in known[:3]], tags=("terror",)),
            "b": _bank("b", [k.hash for k in known[3:]]),
        }
    )
    frames = [pdq_hash(s) for s in SCENES]
    results = matcher.match_frames(frames, min_quality=0)
    for i, r in enumerate(results[:6]):
        exact = [m for m in r.matches if m.distance == 0]
        assert exact and exact[0].entry_id == ("a-" if i < 3 else "b-") + str(i % 3)
        assert r.nearest["a" if i < 3 else "b"] == 0
    a0 = next(m for m in results[0].matches if m.entry_id == "a-0")
    assert (a0.bank, a0.signal_type, a0.tags, a0.source, a0.variant) == (
        "a",
        "pdq",
        ("terror",),
        "src-0",
        "original",
    )
    # every reported match is within the threshold, and equals a brute-force check
    for f, r in zip(frames, results, strict=True):
        for m in r.matches:
            bank = matcher.banks[m.bank]
            row = [bank.pdq.entry_id(i) for i in range(len(bank.pdq))].index(m.entry_id)
            assert hamming(f.hash, bank.pdq.hashes[row].tobytes()) == m.distance <= 31


def test_low_quality_frames_are_skipped_and_nearest_is_per_bank() -> None:
    h = pdq_hash(SCENES[0])
    matcher = Matcher({"a": _bank("a", [h.hash]), "empty": _bank("empty", [])})
    (low,) = matcher.match_frames([PdqHash(h.hash, 10)], min_quality=50)
    assert low.skipped and low.matches == () and low.nearest == {"a": None, "empty": None}
    (ok,) = matcher.match_frames([PdqHash(h.hash, 90)], min_quality=50)
    assert not ok.skipped and ok.nearest == {"a": 0, "empty": None}
    (only_a,) = matcher.match_frames([PdqHash(h.hash, 90)], banks=["a"])
    assert set(only_a.nearest) == {"a"}
    with pytest.raises(HashError, match="unknown bank"):
        matcher.match_frames([h], banks=["nope"])


def test_max_matches_per_bank_keeps_the_nearest() -> None:
    rng = np.random.default_rng(3)
    centre = rng.integers(0, 256, (1, 32), dtype=np.uint8)
    near = np.concatenate([_flip(rng, centre, d) for d in (9, 3, 12, 1, 5)])
    matcher = Matcher({"a": _bank("a", [r.tobytes() for r in near])})
    (r,) = matcher.match_frames([PdqHash(centre[0].tobytes(), 100)], max_matches_per_bank=2)
    assert [m.distance for m in r.matches] == [1, 3]
    assert r.nearest["a"] == 1


def test_mirrored_copies_match_through_dihedral_hashes() -> None:
    scene = SCENES[1]
    matcher = Matcher({"a": _bank("a", [pdq_hash(scene).hash])})
    mirrored = np.ascontiguousarray(scene.transpose(1, 0, 2))
    (plain,) = matcher.match_frames([pdq_hash(mirrored)], min_quality=0, max_distance=20)
    assert plain.matches == ()
    (dihedral,) = matcher.match_frames([pdq_dihedral(mirrored)], min_quality=0, max_distance=20)
    (m,) = dihedral.matches
    assert (m.entry_id, m.distance, m.variant) == ("a-0", 0, "flip_plus1")


def test_md5_matches_exactly() -> None:
    d1, d2 = bytes(range(16)), bytes(range(1, 17))
    matcher = Matcher({"a": _bank("a", [], md5=[d1]), "b": _bank("b", [], md5=[d1, d2])})
    assert [(m.bank, m.entry_id) for m in matcher.match_md5(d1)] == [
        ("a", "a-file-0"),
        ("b", "b-file-0"),
    ]
    assert matcher.match_md5(bytes(16)) == []
    with pytest.raises(HashError, match="16 bytes"):
        matcher.match_md5(b"short")


# --- videos -----------------------------------------------------------------------------------


def _video(rng: np.random.Generator, n: int, quality: int = 100) -> list[VpdqFrame]:
    return [
        VpdqFrame(rng.integers(0, 256, 32, dtype=np.uint8).tobytes(), quality, float(i))
        for i in range(n)
    ]


def _reference_compare(
    q: list[VpdqFrame], c: list[VpdqFrame], distance: int = 31, quality: int = 50
) -> VpdqComparison:
    """The vPDQ README's pseudocode, literally: dedupe, quality filter, count both ways."""

    def prepare(frames: list[VpdqFrame]) -> list[bytes]:
        seen: dict[bytes, int] = {}
        for f in frames:
            seen.setdefault(f.pdq, f.quality)
        return [h for h, qual in seen.items() if qual >= quality]

    qf, cf = prepare(q), prepare(c)
    q_hits = sum(any(hamming(a, b) <= distance for b in cf) for a in qf)
    c_hits = sum(any(hamming(a, b) <= distance for a in qf) for b in cf)
    return VpdqComparison(q_hits * 100 / len(qf), c_hits * 100 / len(cf))


def _mutated(rng: np.random.Generator, frames: list[VpdqFrame], bits: int) -> list[VpdqFrame]:
    out = []
    for f in frames:
        row = _flip(rng, np.frombuffer(f.pdq, np.uint8)[None, :].copy(), bits)
        out.append(VpdqFrame(row[0].tobytes(), f.quality, f.timestamp))
    return out


def test_vpdq_compare_equals_the_reference_algorithm() -> None:
    rng = np.random.default_rng(11)
    for trial in range(20):
        base = _video(rng, 30)
        shared = int(rng.integers(0, 30))
        query = _mutated(rng, base[:shared], int(rng.integers(0, 40))) + _video(rng, 10)
        query += query[:3]  # repeated frames count once
        compared = [*base, VpdqFrame(base[0].pdq, 20, 99.0), *_video(rng, 5, quality=30)]
        got = vpdq_compare(query, compared)
        assert got == _reference_compare(query, compared), trial


def test_vpdq_compare_equals_threatexchange() -> None:
    need_vpdq()  # ThreatExchange's vPDQ extension imports it
    from threatexchange.extensions.vpdq.vpdq_brute_matcher import match_VPDQ_hash_brute
    from threatexchange.extensions.vpdq.vpdq_util import VpdqCompactFeature

    rng = np.random.default_rng(12)
    for _ in range(10):
        base = _video(rng, 25)
        query = _mutated(rng, base[:15], 20) + _video(rng, 8, quality=40) + _video(rng, 5)
        te = match_VPDQ_hash_brute(
            [VpdqCompactFeature(f.pdq.hex(), f.quality, f.timestamp) for f in query],
            [VpdqCompactFeature(f.pdq.hex(), f.quality, f.timestamp) for f in base],
            50,
            31,
        )
        ours = vpdq_compare(query, base)
        assert ours.query_match_percent == pytest.approx(te.query_match_percent)
        assert ours.compared_match_percent == pytest.approx(te.compared_match_percent)


def _vpdq_bank(name: str, videos: list[list[VpdqFrame]]) -> Bank:
    b = BankBuilder()
    for i, v in enumerate(videos):
        b.add("vpdq", ";".join(str(f) for f in v), f"{name}-v{i}", ("video",))
    return b.build(name)


def test_video_matcher_equals_pairwise_comparison() -> None:
    rng = np.random.default_rng(13)
    videos = [_video(rng, int(rng.integers(5, 40))) for _ in range(12)]
    banks = {"x": _vpdq_bank("x", videos[:6]), "y": _vpdq_bank("y", videos[6:])}
    vm = VideoMatcher(banks)
    assert len(vm) == 12
    for trial in range(15):
        src = videos[trial % 12]
        query = _mutated(rng, src[: max(1, len(src) * (trial % 5) // 4)], trial * 3) + _video(
            rng, 4
        )
        found = {(n, e.entry_id): c for n, e, c in vm.compare(query)}
        for name, bank in banks.items():
            for entry in bank.vpdq:
                ref = vpdq_compare(query, list(entry.frames))
                got = found.get((name, entry.entry_id), VpdqComparison(0.0, 0.0))
                assert got.query_match_percent == pytest.approx(ref.query_match_percent)
                assert got.compared_match_percent == pytest.approx(ref.compared_match_percent)
    matches = vm.match(videos[3])
    assert [(m.bank, m.entry_id) for m in matches] == [("x", "x-v3")]
    assert matches[0].comparison == VpdqComparison(100.0, 100.0)


def test_stream_window_finds_a_spliced_clip() -> None:
    rng = np.random.default_rng(14)
    clip = _video(rng, 8)
    vm = VideoMatcher({"known": _vpdq_bank("known", [clip])})
    window = StreamWindow(8.0)
    t = 0.0
    for f in _video(rng, 20):  # unrelated live content
        window.push(VpdqFrame(f.pdq, 100, t))
        t += 1.0
    assert window.match(vm) == []
    found_at = None
    for f in _mutated(rng, clip, 6):  # the clip, re-encoded, spliced in
        window.push(VpdqFrame(f.pdq, 100, t))
        if found_at is None and window.match(vm):
            found_at = t
        t += 1.0
    assert found_at is not None
    assert len(window) == 8  # the window holds 8 s of frames
    with pytest.raises(HashError, match="before the previous"):
        window.push(VpdqFrame(clip[0].pdq, 100, 0.0))
    with pytest.raises(HashError, match="window_s"):
        StreamWindow(0)
