"""One incident's page: its facts, the verdict form, and its timeline (the label's score over
the frames around it, the threshold, thumbnails of the frames), from the store or the source."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, HTMLResponse

from consumers.studio.app import Studio, studio_of
from consumers.studio.timeline import chart, incident_timeline
from pipeline.errors import ClipguardError

__all__ = ["router"]

router = APIRouter()
StudioDep = Annotated[Studio, Depends(studio_of)]
_INCIDENT = re.compile(r"^[0-9a-f]{16}$")
_DIGEST = re.compile(r"^timeline-[0-9a-f]{16}$")


@router.get("/review/{incident}", response_class=HTMLResponse)
async def incident_page(request: Request, incident: str, studio: StudioDep) -> HTMLResponse:
    found = studio.incident(incident) if _INCIDENT.match(incident) else None
    if found is None:
        raise HTTPException(404, "no such incident")
    timeline, note = None, None
    try:
        pf = studio.library.get(found.policy)
    except KeyError:
        pf, note = None, f"no policy file {found.policy} in {studio.library.folder}"
    if pf is not None and pf.hashed is not None:
        note = "a hash policy's incident: no score timeline (its match is a bank entry)"
    elif pf is not None and pf.loaded is None:
        note = f"{pf.path.name} does not load: fix it to see the timeline"
    elif pf is not None and pf.loaded is not None:
        try:
            timeline = await run_in_threadpool(
                incident_timeline,
                found,
                pf.loaded,
                studio.scorer,
                studio.store,
                studio.config.data_dir / "thumbs",
            )
        except ClipguardError as e:
            note = str(e)
        if timeline is None and note is None:
            note = (
                "no frames of this incident: its source is not a local file and no store "
                "holds its stream"
            )
    return studio.page(
        request,
        "incident.html",
        i=found,
        lab=studio.labels.by_incident().get(found.id),
        tl=timeline,
        geometry=None if timeline is None else chart(timeline),
        digest=None if pf is None or pf.loaded is None else pf.loaded.sha256[:16],
        note=note,
    )


@router.get("/timeline/{incident}/{folder}/{number}.jpg")
def timeline_thumb(incident: str, folder: str, number: int, studio: StudioDep) -> FileResponse:
    if not _INCIDENT.match(incident) or not _DIGEST.match(folder) or not 0 <= number < 32:
        raise HTTPException(404)
    path = studio.config.data_dir / "thumbs" / incident / folder / f"{number}.jpg"
    if not path.is_file():
        raise HTTPException(404)
    return FileResponse(path, media_type="image/jpeg")
