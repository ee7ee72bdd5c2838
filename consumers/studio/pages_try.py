"""Try: score an uploaded image or short video against one policy, every label on every
sampled frame. The upload is the request body, written only inside the studio's data folder
(``uploads/``, under a random name), refused past the size cap, and decoded in the sandboxed
decode pool with the content type pinned from its file name."""

from __future__ import annotations

import secrets
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse

from consumers.studio.app import Studio, studio_of
from consumers.studio.pages_policies import policy_file
from consumers.studio.scoring import TryResult
from pipeline.decode import content_type_for
from pipeline.errors import ClipguardError, DecodeError

__all__ = ["router"]

router = APIRouter()
StudioDep = Annotated[Studio, Depends(studio_of)]
_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".mp4", ".mov", ".webm", ".mkv", ".ts")


@router.get("/policies/{name}/try", response_class=HTMLResponse)
def try_page(request: Request, name: str, studio: StudioDep) -> HTMLResponse:
    pf = policy_file(studio, name)
    return studio.page(request, "try.html", pf=pf, max_mb=studio.config.max_upload_bytes / 1024**2)


@router.post("/policies/{name}/try", response_class=HTMLResponse)
async def try_upload(request: Request, name: str, studio: StudioDep) -> HTMLResponse:
    """Score the request body (the file's bytes; its name in ``X-Filename``)."""
    pf = policy_file(studio, name)
    if pf.loaded is None:
        raise HTTPException(409, "the policy does not load; fix it first")
    filename = request.headers.get("x-filename", "")[:200]
    suffix = "." + filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
    if suffix not in _SUFFIXES:
        raise HTTPException(415, f"upload an image or a video ({', '.join(_SUFFIXES)})")
    content_type = content_type_for(f"upload{suffix}")
    cap = studio.config.max_upload_bytes
    target = studio.config.data_dir / "uploads" / f"{secrets.token_hex(12)}{suffix}"
    size = 0
    try:
        with target.open("wb") as fh:
            async for chunk in request.stream():
                size += len(chunk)
                if size > cap:
                    raise HTTPException(413, f"uploads are limited to {cap // 1024**2} MB")
                fh.write(chunk)
    except HTTPException:
        target.unlink(missing_ok=True)
        raise
    if size == 0:
        target.unlink(missing_ok=True)
        raise HTTPException(400, "the upload is empty")
    try:
        result = await run_in_threadpool(studio.scorer.try_file, pf.loaded, target, content_type)
    except DecodeError as e:
        return studio.page(request, "try_result.html", status=422, result=None, error=str(e))
    nearest: list[dict[str, Any]] = []
    if studio.config.store is not None and len(result.frames):
        best = max(range(len(result.frames)), key=lambda i: _best_score(result, i))
        try:
            nearest = await run_in_threadpool(
                studio.store.search_embedding, result.embeddings[best], result.model
            )
        except ClipguardError:
            nearest = []  # no store, or none of this model: the scores stand alone
    return studio.page(
        request,
        "try_result.html",
        result=result,
        error=None,
        filename=filename,
        timelines=_timelines(result),
        nearest=nearest[:24],
    )


def _best_score(result: TryResult, frame: int) -> float:
    return max(d.score for d in result.frames[frame].decisions)


def _timelines(result: TryResult, width: int = 640, height: int = 120) -> list[dict[str, Any]]:
    """Per label, an SVG polyline of its score over time and the height of its cutoff."""
    if result.kind != "video" or not result.frames:
        return []
    end = max(result.frames[-1].t, 1e-6)
    out = []
    for j, label in enumerate(result.labels):
        scores = [f.decisions[j].score for f in result.frames]
        cutoff = result.cutoffs[j]
        lo = min(*scores, cutoff) - 0.05
        hi = max(*scores, cutoff) + 0.05

        def y(v: float, lo: float = lo, hi: float = hi) -> float:
            return round(height * (1 - (v - lo) / (hi - lo)), 1)

        points = " ".join(
            f"{round(width * f.t / end, 1)},{y(s)}"
            for f, s in zip(result.frames, scores, strict=True)
        )
        spans = [
            (round(width * i.start_s / end, 1), round(width * max(i.end_s - i.start_s, 0) / end, 1))
            for i in result.incidents
            if i.label == label
        ]
        out.append(
            {"label": label, "points": points, "cutoff_y": y(cutoff), "spans": spans, "end": end}
        )
    return out
