"""An incident's timeline: its label's score on every frame around it, with the threshold, and
thumbnails of some of those frames, for the incident's own page (``/review/INCIDENT``).

The frames come from the frame store when it holds the incident's stream (the stored
embeddings are re-scored and their stored thumbnails shown: nothing is decoded), else from the
scanned source file, decoded in the sandboxed decode pool and encoded as the Try page does.
Either way the scores are those of the policy file as it is now, so the line shows what the
current version makes of the traffic, next to the threshold it would apply. A timeline is
kept as a small JSON file and JPEG files in the studio's data folder
(``thumbs/INCIDENT/timeline-<policy file digest>/``): a new version of the policy computes a
new one.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

import cv2
import numpy as np

from consumers.studio.incidents import StudioIncident
from pipeline.decode import DecodeOptions, Sampling
from pipeline.errors import ClipguardError, DecodeError
from pipeline.policies.schema import LoadedPolicies, LoadedPolicy
from pipeline.policies.tools.judging import compile_policies

if TYPE_CHECKING:
    from consumers.studio.scoring import Scorer
    from consumers.studio.store_link import StoreLink

__all__ = [
    "MAX_POINTS",
    "PAD_S",
    "THUMBS",
    "Timeline",
    "chart",
    "incident_timeline",
    "timeline_folder",
]

#: Seconds of traffic shown before the incident's start and after its end.
PAD_S: Final = 10.0
#: The most frames a timeline scores (the window is cut at the end past this).
MAX_POINTS: Final = 600
#: Thumbnails under the line: evenly spread over the window, the peak frame always among them.
THUMBS: Final = 9
_SOURCE_FPS: Final = 4.0


@dataclass(frozen=True)
class Timeline:
    """One label's score over the frames around an incident (stream-time seconds)."""

    incident: str
    key: str  # policy/label
    version: int  # of the policy file that scored the frames
    kind: str  # the rule: threshold, probability or sigmoid
    cutoff: float
    origin: Literal["store", "source"]
    points: list[tuple[float, float]]  # (ts, score), time order
    thumbs: list[tuple[float, int]]  # (ts, picture number), time order
    start_ts: float
    end_ts: float
    peak_ts: float


def timeline_folder(thumbs_dir: Path, incident: str, lp: LoadedPolicy) -> Path:
    """Where the timeline of ``incident`` under this version of the policy file is kept."""
    return thumbs_dir / incident / f"timeline-{lp.sha256[:16]}"


def incident_timeline(
    incident: StudioIncident,
    lp: LoadedPolicy,
    scorer: Scorer,
    store: StoreLink,
    thumbs_dir: Path,
) -> Timeline | None:
    """The timeline of ``incident`` scored by ``lp`` (None when the policy no longer has its
    label, or neither the store nor the source file has its frames)."""
    if incident.label not in {lab.name for lab in lp.policy.labels}:
        return None
    folder = timeline_folder(thumbs_dir, incident.id, lp)
    index = folder / "timeline.json"
    if index.is_file():
        return _loaded(json.loads(index.read_text()))
    end = incident.end_ts if incident.end_ts is not None else incident.peak_ts
    since, until = incident.start_ts - PAD_S, end + PAD_S
    model_name = scorer.model_name(lp)
    frames = _from_store(store, incident, model_name, scorer, since, until)
    origin: Literal["store", "source"] = "store"
    if frames is None:
        frames, origin = _from_source(incident, scorer, model_name, since, until), "source"
    if frames is None:
        return None
    row_times, places, embeddings, row_pictures = frames
    model = scorer.model(model_name)
    policies = compile_policies(LoadedPolicies([lp]), model, scorer.cache_dir)
    column = [lab.label for lab in policies.compiled.labels].index(incident.label)
    row_scores = policies.compiled.evaluate(embeddings).score[:, column].tolist()  # (N,)
    times, scores, pictures = _frames(row_times, places, row_scores, row_pictures)
    rule = lp.policy.label(incident.label)
    folder.mkdir(parents=True, exist_ok=True)
    thumbs = []
    for n, i in enumerate(_thumb_rows(times, incident.peak_ts)):
        picture = pictures[i]
        if picture is not None:
            (folder / f"{n}.jpg").write_bytes(picture)
            thumbs.append((times[i], n))
    timeline = Timeline(
        incident=incident.id,
        key=f"{lp.policy.id}/{incident.label}",
        version=lp.policy.version,
        kind=rule.rule,
        cutoff=rule.cutoff,
        origin=origin,
        points=[(t, round(s, 6)) for t, s in zip(times, scores, strict=True)],
        thumbs=thumbs,
        start_ts=incident.start_ts,
        end_ts=end,
        peak_ts=incident.peak_ts,
    )
    index.write_text(json.dumps(asdict(timeline)))
    return timeline


# per row: time, frame (the tiles of a frame share it), (N, E) embeddings, JPEG
_Frames = tuple[list[float], list[tuple[int, int]], Any, list[bytes | None]]


def _from_store(
    store: StoreLink,
    incident: StudioIncident,
    model_name: str,
    scorer: Scorer,
    since: float,
    until: float,
) -> _Frames | None:
    if store.root is None:
        return None
    try:
        table = store.window(incident.stream_id, model_name, since, until, limit=MAX_POINTS * 4)
    except ClipguardError:
        return None
    weights = scorer.model(model_name).fingerprint()
    seen: set[tuple[int, int, int]] = set()
    kept = []
    for r in table.to_pylist():
        place = (r["seq"], r["frame_index"], r["tile"])
        if r["weights_sha256"] != weights or place in seen:
            continue  # frames of other weights; a replayed frame's second copy
        seen.add(place)
        kept.append(r)
    if not kept:
        return None
    blobs = b"".join(r["embedding"] for r in kept)
    emb = np.frombuffer(blobs, dtype="<f2").reshape(len(kept), -1)  # (N, E) float16
    return (
        [float(r["ts"]) for r in kept],
        [(int(r["seq"]), int(r["frame_index"])) for r in kept],
        np.asarray(emb, dtype=np.float32),
        [r["thumbnail"] for r in kept],
    )


def _from_source(
    incident: StudioIncident, scorer: Scorer, model_name: str, since: float, until: float
) -> _Frames | None:
    source = incident.source
    if source is None or "://" in source or not Path(source).is_file():
        return None
    model = scorer.model(model_name)
    options = DecodeOptions(
        model.input_resolution, fit="pad", sampling=Sampling(mode="fps", fps=_SOURCE_FPS)
    )
    try:
        result = scorer.pool().decode_uri(Path(source), options)
    except DecodeError:
        return None
    frames = [f for f in result.frames if since <= f.t <= until][:MAX_POINTS]
    if not frames:
        return None
    embeddings = scorer.encode(model, [f.image for f in frames])
    pictures: list[bytes | None] = []
    for f in frames:
        ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(f.image, cv2.COLOR_RGB2BGR))
        pictures.append(jpeg.tobytes() if ok else None)
    return [float(f.t) for f in frames], [(0, f.index) for f in frames], embeddings, pictures


def _frames(
    times: list[float],
    places: list[tuple[int, int]],
    scores: list[float],
    pictures: list[bytes | None],
) -> tuple[list[float], list[float], list[bytes | None]]:
    """One point a frame, at most :data:`MAX_POINTS`: the tiles of a frame (adjacent rows of
    the same place) merged into the best tile's score, the first tile's picture."""
    out_t: list[float] = []
    out_s: list[float] = []
    out_p: list[bytes | None] = []
    last: tuple[int, int] | None = None
    for t, place, score, picture in zip(times, places, scores, pictures, strict=True):
        if place == last:
            out_s[-1] = max(out_s[-1], float(score))
            out_p[-1] = out_p[-1] or picture
            continue
        if len(out_t) == MAX_POINTS:
            break
        last = place
        out_t.append(t)
        out_s.append(float(score))
        out_p.append(picture)
    return out_t, out_s, out_p


def _thumb_rows(times: list[float], peak_ts: float) -> list[int]:
    """Rows of the thumbnails: evenly spread, the one nearest the peak among them."""
    count = len(times)
    picked = {round(i * (count - 1) / max(1, THUMBS - 2)) for i in range(THUMBS - 1)}
    picked.add(min(range(count), key=lambda i: abs(times[i] - peak_ts)))
    return sorted(picked)


def _loaded(data: dict[str, Any]) -> Timeline:
    data["points"] = [tuple(p) for p in data["points"]]
    data["thumbs"] = [tuple(p) for p in data["thumbs"]]
    return Timeline(**data)


def chart(tl: Timeline, *, width: int = 720, height: int = 160) -> dict[str, Any]:
    """SVG geometry of a timeline: the score line, the threshold, the incident's span, the
    peak and the thumbnails' places (x in pixels; higher scores higher up)."""
    t0, t1 = tl.points[0][0], tl.points[-1][0]
    t1 = t1 if t1 > t0 else t0 + 1.0
    values = [s for _, s in tl.points] + [tl.cutoff]
    lo, hi = min(values), max(values)
    span = (hi - lo) or 1.0
    lo, hi = lo - 0.08 * span, hi + 0.08 * span

    def x(t: float) -> float:
        return round((t - t0) / (t1 - t0) * width, 1)

    def y(v: float) -> float:
        return round(height - (v - lo) / (hi - lo) * height, 1)

    start, end = max(x(tl.start_ts), 0.0), min(x(tl.end_ts), float(width))
    return {
        "width": width,
        "height": height,
        "points": " ".join(f"{x(t)},{y(s)}" for t, s in tl.points),
        "cutoff_y": y(tl.cutoff),
        "span": (start, max(end - start, 1.0)),
        "peak_x": x(tl.peak_ts),
        "thumbs": [(x(t), t, n) for t, n in tl.thumbs],
        "t0": t0,
        "t1": t1,
        "lo": lo,
        "hi": hi,
    }
