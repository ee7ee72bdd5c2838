"""Hash policies judged: sampled frames' PDQ hashes, and whole files, against the banks in force.

A hash policy (``kind: hash``, :class:`~pipeline.policies.schema.HashPolicy`) is judged like a
CLIP label: every hashed frame gets one :class:`~pipeline.policies.score.Decision` per hash
policy, keyed ``"<policy>/match"``, and the stream's temporal rules turn those into incidents
and flag events (:mod:`pipeline.policies.judge`). A frame's decision:

- passes when its PDQ hash (taken from the decoded picture: :mod:`pipeline.decode.hashing`)
  is within ``max_distance`` of an entry of one of the policy's banks: a PDQ entry (signal
  ``pdq``) or a frame of a banked video (signal ``vpdq``; the first sampled frame of a known
  clip spliced into a stream matches), its quality at least ``min_quality``; with
  ``dihedral``, any of its eight rotations and mirrors counts;
- also passes, in streams, when the last ``video.window_s`` seconds of the stream's frames
  vPDQ-match a banked video (ThreatExchange's rule: the share of the window's frames that
  match at least ``query_match_percent``, of the video's frames matched at least
  ``compared_match_percent``; frames compared at ThreatExchange's 31 bits and quality 50,
  whatever the policy's own ``max_distance``), so a frame in the middle of a known clip that a
  blur or an overlay moved past ``max_distance`` does not split the incident;
- scores the PDQ similarity ``1 - distance / 256`` of the closest entry (0 without a match;
  a pass on the window alone scores the threshold), against the threshold
  ``1 - max_distance / 256``, and carries the entry matched as its ``match``.

Frames the decode stage did not hash get no hash decision: for the temporal rules of hash
policies they are not there. Every hashed frame also gets its nearest distance in each bank
the policies name (within their ``max_distance``), for score records.

Whole files (scans): their MD5 (signal ``md5``) and their sampled frames taken as one vPDQ hash
(signal ``vpdq``, compared with every banked video by ThreatExchange's rule) give
:class:`FileMatch` es: :func:`file_matches`.

Banks a policy names that are not in force are skipped: :func:`check_banks` refuses them when
a policy set is loaded, so that happens only when a bank file is removed while policies name it.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from pipeline.errors import PolicyError
from pipeline.events import HashMatchInfo
from pipeline.hashes.signals import PDQ_BITS, SignalType, VpdqFrame
from pipeline.policies.schema import HASH_LABEL, HashPolicy, LoadedHashPolicy
from pipeline.policies.score import Decision

if TYPE_CHECKING:
    from pipeline.decode.options import HashMode
    from pipeline.hashes.match import FrameResult, HashMatch
    from pipeline.hashes.pdq import DihedralHashes, PdqHash
    from pipeline.hashes.store import BankSnapshot
    from pipeline.hashes.video import StreamWindow, VideoMatch

    FrameHash = PdqHash | DihedralHashes

__all__ = [
    "FileMatch",
    "HashFrames",
    "check_banks",
    "decode_hashes",
    "file_matches",
    "judge_frames",
    "similarity",
]


def similarity(distance: int) -> float:
    """A PDQ distance as a score: ``1 - distance / 256`` (1.0 for identical hashes)."""
    return 1.0 - distance / PDQ_BITS


def decode_hashes(policies: Iterable[HashPolicy]) -> HashMode:
    """The hashes the decode stage must take of sampled frames for ``policies``: the eight
    dihedral ones if a policy matches mirrors and rotations, the PDQ hash if a policy matches
    frames (signal ``pdq`` or ``vpdq``), else none."""
    framewise = [p for p in policies if set(p.signals) & {"pdq", "vpdq"}]
    if any(p.dihedral for p in framewise):
        return "dihedral"
    return "pdq" if framewise else "none"


def check_banks(policies: Iterable[LoadedHashPolicy], banks: Collection[str]) -> None:
    """:class:`PolicyError` naming every hash policy that names a bank not in ``banks``."""
    problems = [
        f"{hp.path}: banks: no bank named {name!r} is loaded"
        + (f" (banks: {', '.join(sorted(banks))})" if banks else " (no banks are configured)")
        for hp in policies
        for name in hp.policy.banks
        if name not in banks
    ]
    if problems:
        raise PolicyError("\n".join(problems))


@dataclass
class HashFrames:
    """What the hash policies made of some frames, one item a frame in the order given."""

    decisions: list[list[Decision]] = field(default_factory=list)  # one a hash policy
    nearest: list[dict[str, int | None] | None] = field(default_factory=list)  # bank -> bits
    quality: list[int | None] = field(default_factory=list)  # PDQ quality (None: not hashed)
    pdq: list[str | None] = field(default_factory=list)  # the frame's PDQ, hex (None: not hashed)


def judge_frames(
    policies: Sequence[HashPolicy],
    hashes: Sequence[FrameHash | None],
    times: Sequence[float],
    banks: BankSnapshot | None,
    *,
    windows: MutableMapping[str, StreamWindow] | None = None,
) -> HashFrames:
    """Each frame's decisions under ``policies`` (see the module docstring). Frames with equal
    ``times`` are tiles of one frame and share its results; ``windows`` (a stream's vPDQ
    windows by policy id, kept by the caller between calls) turns on window matching."""
    if len(hashes) != len(times):
        raise ValueError(f"{len(hashes)} hashes for {len(times)} times")
    # the distinct frames: (index of its first tile, hash); tiles point at their frame
    firsts: list[int] = []
    owner: list[int] = []
    for i, t in enumerate(times):
        if not firsts or times[firsts[-1]] != t:
            firsts.append(i)
        owner.append(len(firsts) - 1)
    frames = [hashes[i] for i in firsts]
    per_frame: list[list[Decision]] = [[] for _ in frames]
    nearest: list[dict[str, int | None]] = [{} for _ in frames]
    if banks is not None:
        for policy in policies:
            _judge_policy(
                policy, frames, [times[i] for i in firsts], banks, windows, per_frame, nearest
            )
    out = HashFrames()
    for i in range(len(times)):
        f = owner[i]
        h = frames[f]
        out.decisions.append(per_frame[f] if h is not None else [])
        out.nearest.append(nearest[f] if h is not None and banks is not None and policies else None)
        out.quality.append(h.quality if h is not None else None)
        out.pdq.append(h.hex if h is not None else None)  # the frame's own, not a mirror
    return out


def _judge_policy(
    policy: HashPolicy,
    frames: Sequence[FrameHash | None],
    times: Sequence[float],
    banks: BankSnapshot,
    windows: MutableMapping[str, StreamWindow] | None,
    per_frame: list[list[Decision]],
    nearest: list[dict[str, int | None]],
) -> None:
    """One policy's decision on every hashed frame, and its banks' nearest distances."""
    names = [b for b in policy.banks if b in banks.banks]
    hashed = [i for i, h in enumerate(frames) if h is not None]
    results = _frame_results(policy, [frames[i] for i in hashed], names, banks)
    window = _window(policy, names, banks, windows)
    threshold = similarity(policy.max_distance)
    key = f"{policy.id}/{HASH_LABEL}"
    for k, i in enumerate(hashed):
        h = frames[i]
        assert h is not None
        result = results[k] if results is not None else None
        if result is not None:
            for bank, d in result.nearest.items():
                known = nearest[i].get(bank)
                nearest[i][bank] = d if known is None else (known if d is None else min(d, known))
        else:
            for bank in names:
                nearest[i].setdefault(bank, None)
        video = _window_matches(window, h, times[i], banks, names, policy)
        best = result.matches[0] if result is not None and result.matches else None
        if best is not None:
            score, match = similarity(best.distance), _info(best, video)
        elif video:
            score, match = threshold, _video_info(video[0], h.quality)
        else:
            score, match = 0.0, None
        per_frame[i].append(
            Decision(
                key=key,
                passed=match is not None,
                score=score,
                threshold=threshold,
                probability=None,
                margin=None,
                top_prompt="",
                kind="pdq",
                match=match,
            )
        )


def _frame_results(
    policy: HashPolicy, frames: Sequence[FrameHash | None], names: list[str], banks: BankSnapshot
) -> list[FrameResult] | None:
    signals: list[SignalType] = [s for s in policy.signals if s != "md5"]
    if not names or not signals or not frames:
        return None
    from pipeline.hashes.pdq import DihedralHashes, PdqHash

    queries: list[PdqHash | DihedralHashes] = []
    for h in frames:
        assert h is not None
        if isinstance(h, DihedralHashes) and not policy.dihedral:
            h = PdqHash(h.hashes[0], h.quality)  # the frame as it is, not its mirrors
        queries.append(h)
    return banks.matcher.match_frames(
        queries,
        banks=names,
        max_distance=policy.max_distance,
        min_quality=policy.min_quality,
        max_matches_per_bank=1,
        signals=signals,
    )


def _window(
    policy: HashPolicy,
    names: list[str],
    banks: BankSnapshot,
    windows: MutableMapping[str, StreamWindow] | None,
) -> StreamWindow | None:
    """The stream's vPDQ window for ``policy`` (made, or remade when its length changed)."""
    if windows is None or "vpdq" not in policy.signals or not names or len(banks.video) == 0:
        return None
    from pipeline.hashes.video import StreamWindow

    window = windows.get(policy.id)
    if window is None or window.window_s != policy.video.window_s:
        window = windows[policy.id] = StreamWindow(policy.video.window_s)
    return window


def _window_matches(
    window: StreamWindow | None,
    h: FrameHash,
    ts: float,
    banks: BankSnapshot,
    names: list[str],
    policy: HashPolicy,
) -> list[VideoMatch]:
    """Push the frame into the window; the banked videos (of ``names``) the window matches."""
    if window is None:
        return []
    from pipeline.hashes.pdq import PdqHash

    pdq = h.hash if isinstance(h, PdqHash) else h.hashes[0]
    frames = window.frames()
    if frames and ts <= frames[-1].timestamp:
        return []  # a frame seen before (a replay): the window has it
    window.push(VpdqFrame(pdq, h.quality, ts))
    found = window.match(
        banks.video,
        query_threshold=policy.video.query_match_percent,
        compared_threshold=policy.video.compared_match_percent,
    )
    return [m for m in found if m.bank in names]


def _info(best: HashMatch, video: Sequence[VideoMatch]) -> HashMatchInfo:
    """A frame-level match, with the window's shares when the window matched that video."""
    same = next((v for v in video if (v.bank, v.entry_id) == (best.bank, best.entry_id)), None)
    return HashMatchInfo(
        bank=best.bank,
        entry_id=best.entry_id,
        signal_type=best.signal_type,
        distance=best.distance,
        quality=best.quality,
        tags=list(best.tags),
        variant=best.variant,
        query_match_percent=None if same is None else same.comparison.query_match_percent,
        compared_match_percent=None if same is None else same.comparison.compared_match_percent,
    )


def _video_info(video: VideoMatch, quality: int | None) -> HashMatchInfo:
    return HashMatchInfo(
        bank=video.bank,
        entry_id=video.entry_id,
        signal_type="vpdq",
        distance=None,
        quality=quality,
        tags=list(video.tags),
        query_match_percent=video.comparison.query_match_percent,
        compared_match_percent=video.comparison.compared_match_percent,
    )


# --------------------------------------------------------------------------- whole files


@dataclass(frozen=True)
class FileMatch:
    """What a whole file matched under one hash policy and signal: every entry, best first;
    one incident (label ``md5`` or ``vpdq``) whose peak is the best."""

    policy: HashPolicy
    label: Literal["md5", "vpdq"]
    matches: tuple[HashMatchInfo, ...]

    @property
    def best(self) -> HashMatchInfo:
        return self.matches[0]

    @property
    def score(self) -> float:
        """1.0 for an MD5 match; the video's query share (0..1) for vPDQ."""
        share = self.best.query_match_percent
        return 1.0 if share is None else share / 100.0

    @property
    def threshold(self) -> float:
        return 1.0 if self.label == "md5" else self.policy.video.query_match_percent / 100.0


def file_matches(
    policies: Sequence[HashPolicy],
    *,
    md5: bytes | None,
    frames: Sequence[VpdqFrame],
    banks: BankSnapshot | None,
) -> list[FileMatch]:
    """A file's MD5 (None: not computed, e.g. a URL) and its sampled frames (as one vPDQ
    hash) against each policy's banks, by the policy's ``signals``."""
    out: list[FileMatch] = []
    if banks is None:
        return out
    for policy in policies:
        names = [b for b in policy.banks if b in banks.banks]
        if not names:
            continue
        if md5 is not None and "md5" in policy.signals:
            found = banks.matcher.match_md5(md5, banks=names)
            if found:
                infos = tuple(
                    HashMatchInfo(
                        bank=m.bank,
                        entry_id=m.entry_id,
                        signal_type="md5",
                        distance=0,
                        quality=None,
                        tags=list(m.tags),
                    )
                    for m in sorted(found, key=lambda m: (m.bank, m.entry_id))
                )
                out.append(FileMatch(policy, "md5", infos))
        if frames and "vpdq" in policy.signals and len(banks.video):
            videos = banks.video.match(
                frames,
                query_threshold=policy.video.query_match_percent,
                compared_threshold=policy.video.compared_match_percent,
            )
            infos = tuple(_video_info(v, None) for v in videos if v.bank in names)
            if infos:
                out.append(FileMatch(policy, "vpdq", infos))
    return out
