"""An incident's frames for review: the peak frame and the frames around it, decoded from the
scanned source in the sandboxed decode pool and kept as JPEG files in the studio's data
folder (``thumbs/INCIDENT/``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Final

import cv2

from consumers.studio.incidents import StudioIncident
from pipeline.decode import DecodeOptions, Sampling
from pipeline.errors import DecodeError

if TYPE_CHECKING:
    from consumers.studio.scoring import Scorer

__all__ = ["AROUND_S", "incident_frames"]

AROUND_S: Final = (-1.0, 0.0, 1.0)  # seconds from the peak
_SIZE: Final = 224


def incident_frames(
    incident: StudioIncident, scorer: Scorer, thumbs_dir: Path
) -> list[tuple[float, Path]]:
    """``(offset from the peak in seconds, JPEG file)`` for the frames around the peak; empty
    when the source is not a local file that can be decoded."""
    folder = thumbs_dir / incident.id
    index = folder / "frames.json"
    if index.exists():
        return [(float(t), folder / name) for t, name in json.loads(index.read_text())]
    source = incident.source
    if source is None or "://" in source or not Path(source).is_file():
        return []
    options = DecodeOptions(_SIZE, fit="pad", sampling=Sampling(mode="fps", fps=4.0))
    try:
        result = scorer.pool().decode_uri(Path(source), options)
    except DecodeError:
        return []
    if not result.frames:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    out: list[tuple[float, str]] = []
    for offset in AROUND_S:
        want = incident.peak_ts + offset
        frame = min(result.frames, key=lambda f: abs(f.t - want))
        name = f"{len(out)}.jpg"
        ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR))
        if ok:
            (folder / name).write_bytes(jpeg.tobytes())
            out.append((offset, name))
    index.write_text(json.dumps(out))
    return [(t, folder / name) for t, name in out]
