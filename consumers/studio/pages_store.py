"""Pages over the frame store: Backtest (the policy files as they are now against the sets in
force when the frames were stored) and search by text, with the stored thumbnails. Without a
store they say how to connect one."""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from consumers.studio.app import Studio, studio_of
from consumers.studio.preparing import PAGE_WAIT_S, NotReady, page_budget
from consumers.studio.scoring import DEMO_MODEL
from pipeline.errors import ClipguardError
from pipeline.policies.schema import LoadedPolicies

if TYPE_CHECKING:
    from pipeline.hashes.store import BankSnapshot

__all__ = ["router"]

_log = logging.getLogger(__name__)
router = APIRouter()
StudioDep = Annotated[Studio, Depends(studio_of)]
_FRAME_ID = re.compile(r"^[0-9a-f-]{8,64}$")


@router.get("/backtest", response_class=HTMLResponse)
async def backtest(request: Request, studio: StudioDep, run: bool = False) -> HTMLResponse:
    page_budget()
    status = await run_in_threadpool(studio.store.status)
    result: dict[str, Any] | None = None
    error = None
    preparing: NotReady | None = None
    policies, models = _policies(studio)
    if run and status.ready:
        try:
            banks = await run_in_threadpool(studio.banks)
            result = await run_in_threadpool(
                studio.store.backtest,
                policies,
                studio.scorer,
                _model(models),
                banks,
                PAGE_WAIT_S,
                studio.labels.path,
            )
        except NotReady as e:  # the page now, the result once it is ready
            preparing = e
        except ClipguardError as e:
            error = str(e)
    kinds = [*models, *(["hash policies"] if policies.hashes else [])]
    return studio.page(
        request,
        "backtest.html",
        status_=status,
        result=result,
        error=error,
        models=kinds,
        preparing=preparing,
    )


@router.get("/store/preparing")
def preparing(studio: StudioDep) -> JSONResponse:
    """Whether the store's slow answers are still being prepared, and how far (a page waiting
    for one asks, and reloads once it is no longer being prepared)."""
    busy, status = studio.store.preparation.status()
    return JSONResponse({"busy": busy, "status": status})


def _policies(studio: Studio) -> tuple[LoadedPolicies, list[str]]:
    """The policy files that load, of both kinds, and the models the CLIP ones score with."""
    files = studio.library.files()
    loaded = [pf.loaded for pf in files if pf.loaded is not None]
    hashes = [pf.hashed for pf in files if pf.hashed is not None]
    return LoadedPolicies(loaded, hashes), sorted({studio.scorer.model_name(lp) for lp in loaded})


def _model(models: list[str]) -> str | None:
    """The one model of the CLIP policies (None: there are none)."""
    if len(models) > 1:
        raise HTTPException(400, "the policies name several models: pass --model")
    return models[0] if models else None


@router.post("/store/queue")
async def queue_from_store(studio: StudioDep) -> Response:
    """Queue for review what the policy files as they are now find in the stored frames
    (shadow policies included: the only way to review what a shadow policy would flag)."""
    page_budget()
    policies, models = _policies(studio)
    banks = await run_in_threadpool(studio.banks)
    model = _model(models)
    try:
        found = await run_in_threadpool(
            studio.store.incidents, policies, studio.scorer, model, banks, PAGE_WAIT_S
        )
    except NotReady:  # queued once the backtest is ready; the Review page shows the progress
        studio.store.preparation.later(
            "queuing the store's incidents",
            lambda: _queue_when_ready(studio, policies, model, banks),
        )
        return RedirectResponse("/review?queuing=1", status_code=303)
    await run_in_threadpool(studio.queue.add, found)
    return RedirectResponse(f"/review?imported={len(found)}", status_code=303)


def _queue_when_ready(
    studio: Studio, policies: LoadedPolicies, model: str | None, banks: BankSnapshot | None
) -> None:
    try:
        studio.queue.add(studio.store.incidents(policies, studio.scorer, model, banks))
    except ClipguardError as e:
        _log.warning("studio: could not queue the store's incidents: %s", e)


@router.get("/store/peak.jpg")
def peak(
    studio: StudioDep,
    stream: Annotated[str, Query(max_length=500)],
    seq: int,
    index: int,
    tile: int = 0,
) -> Response:
    picture = studio.store.thumbnail(stream, seq, index, tile)
    if picture is None:
        raise HTTPException(404)
    return Response(picture, media_type="image/jpeg")


@router.get("/store/frame/{frame_id}.jpg")
def frame(frame_id: str, studio: StudioDep) -> Response:
    if not _FRAME_ID.match(frame_id):
        raise HTTPException(404)
    picture = studio.store.thumbnail_of(frame_id)
    if picture is None:
        raise HTTPException(404)
    return Response(picture, media_type="image/jpeg")


@router.get("/search", response_class=HTMLResponse)
async def search(
    request: Request,
    studio: StudioDep,
    q: Annotated[str, Query(max_length=300)] = "",
    model: Annotated[str, Query(max_length=200)] = "",
) -> HTMLResponse:
    status = await run_in_threadpool(studio.store.status)
    name = studio.config.model or model or (min(status.frames) if status.frames else DEMO_MODEL)
    hits: list[dict[str, Any]] = []
    error = None
    if q.strip() and status.ready:
        try:
            hits = await run_in_threadpool(studio.store.search_text, q, studio.scorer, name)
        except ClipguardError as e:
            error = str(e)
    return studio.page(
        request, "search.html", status_=status, q=q, hits=hits, error=error, model=name
    )
