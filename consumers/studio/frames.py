"""An incident's frames for review: the peak frame and the frames around it, decoded from the
scanned source in the sandboxed decode pool, or (live streams, whose flag events name no
file) the thumbnails the frame store keeps of the stream at those times; kept as JPEG files
in the studio's data folder (``thumbs/INCIDENT/``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final

import cv2

from consumers.studio.incidents import StudioIncident
from pipeline.decode import DecodeOptions, Sampling
from pipeline.errors import ClipguardError, DecodeError

if TYPE_CHECKING:
    from consumers.studio.scoring import Scorer
    from consumers.studio.store_link import StoreLink
    from pipeline.decode import Frame

__all__ = ["AROUND_S", "incident_frames", "page_frames"]

AROUND_S: Final = (-1.0, 0.0, 1.0)  # seconds from the peak
_SIZE: Final = 224


def incident_frames(
    incident: StudioIncident, scorer: Scorer, thumbs_dir: Path, store: StoreLink | None = None
) -> list[tuple[float, Path]]:
    """``(offset from the peak in seconds, JPEG file)`` for the frames around the peak; empty
    when neither the source file nor the store has them."""
    folder = thumbs_dir / incident.id
    index = folder / "frames.json"
    if index.exists():
        return [(float(t), folder / name) for t, name in json.loads(index.read_text())]
    source = incident.source
    if source is None or "://" in source or not Path(source).is_file():
        return [] if store is None else _from_store(incident, store, folder)
    return _around(incident, _decoded(source, scorer), folder)


def _decoded(source: str, scorer: Scorer) -> list[Frame]:
    """The frames of a local source file, 4 a second, decoded in the sandboxed pool."""
    options = DecodeOptions(_SIZE, fit="pad", sampling=Sampling(mode="fps", fps=4.0))
    try:
        return list(scorer.pool().decode_uri(Path(source), options).frames)
    except DecodeError:
        return []


def _around(
    incident: StudioIncident, frames: list[Frame], folder: Path
) -> list[tuple[float, Path]]:
    """The frames nearest the peak's offsets written as JPEGs in ``folder`` with their
    index; empty without frames."""
    if not frames:
        return []
    index = folder / "frames.json"
    folder.mkdir(parents=True, exist_ok=True)
    out: list[tuple[float, str]] = []
    for offset in AROUND_S:
        want = incident.peak_ts + offset
        frame = min(frames, key=lambda f: abs(f.t - want))
        name = f"{len(out)}.jpg"
        ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR))
        if ok:
            (folder / name).write_bytes(jpeg.tobytes())
            out.append((offset, name))
    index.write_text(json.dumps(out))
    return [(t, folder / name) for t, name in out]


def page_frames(
    incidents: Sequence[StudioIncident], scorer: Scorer, thumbs_dir: Path, store: StoreLink
) -> dict[str, list[tuple[float, Path]]]:
    """:func:`incident_frames` for a page of incidents: those the store holds read in one
    query (one scan of the store, not one per incident)."""
    out: dict[str, list[tuple[float, Path]]] = {}
    from_store: list[StudioIncident] = []
    decoded: dict[str, list[Frame]] = {}  # a source many incidents share is decoded once
    for incident in incidents:
        index = thumbs_dir / incident.id / "frames.json"
        source = incident.source
        local = source is not None and "://" not in source and Path(source).is_file()
        if not index.exists() and local:
            assert source is not None
            if source not in decoded:
                decoded[source] = _decoded(source, scorer)
            out[incident.id] = _around(incident, decoded[source], thumbs_dir / incident.id)
        elif index.exists() or local or store.root is None:
            out[incident.id] = incident_frames(incident, scorer, thumbs_dir)
        else:
            from_store.append(incident)
    if not from_store:
        return out
    low, high = AROUND_S[0] - 0.5, AROUND_S[-1] + 0.5
    wanted = [(i.id, i.stream_id, i.model, i.peak_ts + low, i.peak_ts + high) for i in from_store]
    try:
        found = store.windows(wanted)
    except ClipguardError:
        found = {}
    for incident in from_store:
        rows = found.get(incident.id, [])
        out[incident.id] = _write(incident, rows, thumbs_dir / incident.id) if rows else []
    return out


def _from_store(
    incident: StudioIncident, store: StoreLink, folder: Path
) -> list[tuple[float, Path]]:
    if store.root is None:
        return []
    low, high = AROUND_S[0] - 0.5, AROUND_S[-1] + 0.5
    wanted = [
        (
            incident.id,
            incident.stream_id,
            incident.model,
            incident.peak_ts + low,
            incident.peak_ts + high,
        )
    ]
    try:
        rows = store.windows(wanted).get(incident.id, [])
    except ClipguardError:
        return []
    return _write(incident, rows, folder) if rows else []


def _write(
    incident: StudioIncident, rows: list[tuple[float, bytes]], folder: Path
) -> list[tuple[float, Path]]:
    """The stored frames nearest each offset from the peak, written as the incident's frames."""
    folder.mkdir(parents=True, exist_ok=True)
    out: list[tuple[float, str]] = []
    for offset in AROUND_S:
        want = incident.peak_ts + offset
        _, picture = min(rows, key=lambda r: abs(r[0] - want))
        name = f"{len(out)}.jpg"
        (folder / name).write_bytes(picture)
        out.append((offset, name))
    (folder / "frames.json").write_text(json.dumps(out))
    return [(t, folder / name) for t, name in out]
