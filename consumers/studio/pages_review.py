"""Review and Tune: the incident queue with blurred frames and verdicts, a label's scores and
threshold slider, and the hand-off export of incidents and labels."""

from __future__ import annotations

import re
import shutil
from dataclasses import asdict
from typing import Annotated, Any

import yaml
from fastapi import APIRouter, Depends, Form, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response

from consumers.studio.app import Studio, studio_of
from consumers.studio.frames import page_frames
from consumers.studio.handoff import handoff
from consumers.studio.labels import MAX_NOTE, Label
from consumers.studio.pages_hashtune import hash_tune
from consumers.studio.pages_policies import policy_file
from consumers.studio.preparing import PAGE_WAIT_S, NotReady, page_budget
from consumers.studio.scoring import LabeledScore
from consumers.studio.traffic import Count
from consumers.studio.tune import at_threshold, tune_data
from consumers.studio.versions import add_example
from consumers.studio.warm import prepared_examples
from pipeline.errors import ClipguardError, ConfigError, PolicyError
from pipeline.policies.schema import LoadedPolicy
from pipeline.policies.tools.nodes import child, label_node

__all__ = ["router"]

router = APIRouter()
StudioDep = Annotated[Studio, Depends(studio_of)]
_INCIDENT = re.compile(r"^[0-9a-f]{16}$")
_PAGE = 50  # incidents a Review page shows


@router.get("/review", response_class=HTMLResponse)
async def review(
    request: Request,
    studio: StudioDep,
    policy: Annotated[str | None, Query(max_length=200)] = None,
    start: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> HTMLResponse:
    await run_in_threadpool(studio.sync_file)
    total, queue = studio.queue.page(policy=policy, limit=_PAGE, offset=start)
    labels = studio.labels.by_incident()
    found = await run_in_threadpool(
        page_frames, queue, studio.scorer, studio.config.data_dir / "thumbs", studio.store
    )
    frames = {key: [(t, p.name) for t, p in pictures] for key, pictures in found.items()}
    return studio.page(
        request,
        "review.html",
        queue=queue,
        total=total,
        start=start,
        page_size=_PAGE,
        labels=labels,
        frames=frames,
        counts=studio.queue.verdicts(policy=policy),
        origins=studio.queue.origins(),
        policy=policy,
        source=studio.config.incidents,
        feed=studio.feed,
        imported=request.query_params.get("imported"),
        preparing=_queuing(studio) if request.query_params.get("queuing") else None,
    )


def _queuing(studio: Studio) -> NotReady | None:
    """The progress of queuing the store's incidents (None once done)."""
    busy, status = studio.store.preparation.status()
    what = "queuing the store's incidents"
    return NotReady(what, status) if busy and what in status else None


@router.post("/review/{incident}")
def label(
    request: Request,
    incident: str,
    studio: StudioDep,
    verdict: Annotated[str, Form(pattern="^(correct|incorrect|unsure)$")],
    note: Annotated[str, Form(max_length=MAX_NOTE)] = "",
    back: Annotated[str, Form(pattern="^(list|incident)$")] = "list",
) -> Response:
    found = studio.incident(incident) if _INCIDENT.match(incident) else None
    if found is None:
        raise HTTPException(404, "no such incident")
    studio.labels.put_incident(
        found, verdict=verdict, note=note.strip(), reviewer=studio.who(request)
    )
    if back == "incident":
        return RedirectResponse(f"/review/{found.id}", status_code=303)
    return RedirectResponse(f"/review#incident-{found.id}", status_code=303)


@router.post("/review/{incident}/example")
def add_to_examples(request: Request, incident: str, studio: StudioDep) -> Response:
    """Add the incident's peak frame to its policy's regression examples: the picture written
    beside the policy (``examples/``), the example appended to the file as a new version. The
    reviewer's verdict decides what it expects (correct: flag, incorrect: no flag)."""
    found = studio.incident(incident) if _INCIDENT.match(incident) else None
    if found is None:
        raise HTTPException(404, "no such incident")
    verdict = studio.labels.by_incident().get(found.id)
    if verdict is None or verdict.verdict == "unsure":
        raise ConfigError("mark the incident correct or incorrect first")
    peak = studio.config.data_dir / "thumbs" / found.id / "1.jpg"
    if not peak.is_file():
        raise ConfigError("this incident has no frame to add")
    pf = policy_file(studio, found.policy)
    if pf.loaded is None:
        raise HTTPException(409, "the policy does not load; fix it first")
    relative = f"examples/{found.policy}-{found.id}.jpg"
    target = pf.path.parent / relative
    target.parent.mkdir(exist_ok=True)
    expect = "flag" if verdict.verdict == "correct" else "no_flag"
    entry = f"{{path: {relative}, expect: {expect}, label: {found.label}}}"
    if relative in pf.text:
        raise ConfigError(f"{relative} is already one of the policy's examples")
    shutil.copyfile(peak, target)
    try:
        studio.writer.write(
            pf.loaded,
            add_example(pf.text, entry),
            base_sha256=pf.sha256,
            who=studio.who(request),
            action="example",
            note=f"peak frame of incident {found.id} ({verdict.verdict}): {verdict.note}".strip(),
            model=studio.config.model,
        )
    except PolicyError:
        target.unlink(missing_ok=True)
        raise
    return RedirectResponse(f"/review#incident-{found.id}", status_code=303)


@router.get("/thumbs/{incident}/{number}.jpg")
def thumb(incident: str, number: int, studio: StudioDep) -> FileResponse:
    if not _INCIDENT.match(incident) or not 0 <= number < 16:
        raise HTTPException(404)
    path = studio.config.data_dir / "thumbs" / incident / f"{number}.jpg"
    if not path.is_file():
        raise HTTPException(404)
    return FileResponse(path, media_type="image/jpeg")


@router.get("/policies/{name}/tune", response_class=HTMLResponse)
async def tune(
    request: Request, name: str, studio: StudioDep, label: str | None = None
) -> HTMLResponse:
    page_budget()
    pf = policy_file(studio, name)
    if pf.hashed is not None:  # a distance, not a score threshold
        return await hash_tune(request, pf, studio)
    lp = pf.loaded
    if lp is None:
        raise HTTPException(409, "the policy does not load; fix it first")
    names = [lab.name for lab in lp.policy.labels]
    chosen = label if label in names else names[0]
    rule = lp.policy.label(chosen)
    await run_in_threadpool(studio.sync_file)
    examples, preparing = await _examples(studio, lp)
    reviews = studio.labels.all(policy=lp.policy.id, label=chosen)
    stored, unlabelled, store_note, live = 0, list[float](), None, None
    frames: dict[str, list[tuple[float, bool]]] = {}
    cutoff = rule.cutoff
    if studio.config.store is not None:  # asked even while the examples are being scored:
        try:  # both are then prepared side by side
            part = await run_in_threadpool(_stored_traffic, studio, lp, chosen, cutoff, reviews)
            if preparing is None:  # else the page waits for the examples: shown with them
                stored, unlabelled, live, frames = part
        except NotReady as e:  # the page now; the stored traffic's part once it is ready
            preparing = preparing or e
        except ClipguardError as e:
            store_note = str(e)
    data = tune_data(
        policy=lp.policy.id,
        label=chosen,
        rule=rule.rule,
        cutoff=cutoff,
        examples=examples,
        labels=reviews,
        queue_peaks=studio.queue.peaks(lp.policy.id, chosen),
        frames=frames,
    )
    payload = {
        "stored": stored,
        "unlabelled": unlabelled,
        "cutoff": data.cutoff,
        "rule": data.rule,
        "positives": [asdict(p) for p in data.positives],
        "negatives": [asdict(p) for p in data.negatives],
        "queue": data.queue_peaks,
    }
    return studio.page(
        request,
        "tune.html",
        pf=pf,
        labels=names,
        data=data,
        now=at_threshold(data, data.cutoff),
        payload=payload,
        low=-1.0 if data.rule == "threshold" else 0.0,
        stored=stored,
        store_note=store_note,
        live=live,
        preparing=preparing,
    )


def _stored_traffic(
    studio: Studio, lp: LoadedPolicy, label: str, cutoff: float, reviews: list[Label]
) -> tuple[int, list[float], Count, dict[str, list[tuple[float, bool]]]]:
    """Tune's stored-traffic part: stored frames, the unlabelled sample, the count at the
    cutoff and the reviewed incidents' stored frames."""
    model_name = studio.scorer.model_name(lp)
    store = studio.store
    stored, unlabelled = store.label_scores(lp, label, studio.scorer, model_name, PAGE_WAIT_S)
    live = store.count(lp, label, cutoff, studio.scorer, model_name)
    frames = store.review_frames(lp, label, reviews, studio.scorer, model_name)
    return stored, unlabelled, live, frames


async def _examples(studio: Studio, lp: LoadedPolicy) -> tuple[list[LabeledScore], Any]:
    """The policy's examples scored for Tune; with a store, while the store's answers are
    being prepared (the model may still be loading), the page does not wait long for them:
    (no examples, :class:`NotReady`) then."""
    if studio.config.store is None:
        return await run_in_threadpool(studio.scorer.example_scores, lp), None
    try:
        examples = await run_in_threadpool(prepared_examples, studio, lp, PAGE_WAIT_S)
    except NotReady as e:
        return [], e
    return examples, None


@router.get("/policies/{name}/tune/count")
async def tune_count(
    name: str,
    studio: StudioDep,
    label: Annotated[str, Query(max_length=64)],
    threshold: Annotated[float, Query(ge=-1.0, le=1.0, allow_inf_nan=False)],
) -> JSONResponse:
    """What ``threshold`` would do on the stored traffic: frames reaching it and the incidents
    the store backtest would raise (the Tune page asks as the slider moves)."""
    page_budget()
    pf = policy_file(studio, name)
    lp = pf.loaded
    if lp is None:
        raise HTTPException(409, "the policy does not load; fix it first")
    if label not in {lab.name for lab in lp.policy.labels}:
        raise HTTPException(404, "no such label")
    if studio.config.store is None:
        return JSONResponse({"error": "no store connected"}, status_code=404)
    try:
        count = await run_in_threadpool(
            studio.store.count,
            lp,
            label,
            threshold,
            studio.scorer,
            studio.scorer.model_name(lp),
            PAGE_WAIT_S,
        )
    except NotReady as e:  # asked again by the page a moment later
        return JSONResponse({"preparing": e.status}, status_code=202)
    except ClipguardError as e:
        return JSONResponse({"error": str(e)}, status_code=400)
    return JSONResponse(
        {
            "threshold": threshold,
            "frames": count.frames,
            "total": count.total,
            "incidents": count.incidents,
            "ms": round(count.seconds * 1000, 1),
        }
    )


@router.post("/policies/{name}/tune")
def tune_save(
    request: Request,
    name: str,
    studio: StudioDep,
    label: Annotated[str, Form(max_length=64)],
    threshold: Annotated[float, Form(ge=-1.0, le=1.0, allow_inf_nan=False)],
    base: Annotated[str, Form(max_length=64)],
    note: Annotated[str, Form(max_length=MAX_NOTE)] = "",
) -> Response:
    pf = policy_file(studio, name)
    if pf.loaded is None:
        raise HTTPException(409, "the policy does not load; fix it first")
    try:
        rule = pf.loaded.policy.label(label).rule
    except KeyError:
        raise HTTPException(404, "no such label") from None
    node = child(label_node(yaml.compose(pf.text, Loader=yaml.SafeLoader), label), rule)
    if not isinstance(node, yaml.ScalarNode):
        raise PolicyError(f"cannot find the {rule} of label {label!r} to change")
    value = f"{threshold:.4f}".rstrip("0").rstrip(".")
    new = pf.text[: node.start_mark.index] + value + pf.text[node.end_mark.index :]
    studio.writer.write(
        pf.loaded,
        new,
        base_sha256=base,
        who=studio.who(request),
        action="threshold",
        note=note.strip() or f"{label}: {rule} {pf.loaded.policy.label(label).cutoff} -> {value}",
        model=studio.config.model,
    )
    return RedirectResponse(f"/policies/{name}/tune?label={label}", status_code=303)


@router.get("/export/handoff.json")
def export_handoff(studio: StudioDep) -> JSONResponse:
    doc = handoff(
        studio.incidents(), studio.labels.by_incident(), policy_dir=str(studio.library.folder)
    )
    return JSONResponse(
        doc, headers={"content-disposition": 'attachment; filename="clipguard-handoff.json"'}
    )
