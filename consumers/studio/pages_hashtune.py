"""Tune for hash policies: the distribution of the stored hashed frames' nearest distances to
the policy's banks, a distance slider whose match and incident counts over the stored traffic
follow it (:mod:`consumers.studio.hashtune`), and saving the distance into the YAML as a new
version."""

from __future__ import annotations

from typing import Annotated

import yaml
from fastapi import APIRouter, Depends, Form, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from consumers.studio.app import Studio, studio_of
from consumers.studio.hashes import summary
from consumers.studio.labels import MAX_NOTE
from consumers.studio.library import PolicyFile
from consumers.studio.pages_policies import policy_file
from consumers.studio.preparing import PAGE_WAIT_S, NotReady, page_budget
from pipeline.errors import ClipguardError, PolicyError
from pipeline.hashes.signals import MAX_DISTANCE
from pipeline.policies.schema import LoadedHashPolicy
from pipeline.policies.tools.nodes import child

__all__ = ["hash_tune", "router"]

router = APIRouter()
StudioDep = Annotated[Studio, Depends(studio_of)]


async def hash_tune(request: Request, pf: PolicyFile, studio: Studio) -> HTMLResponse:
    """The Tune page of a hash policy."""
    hp = pf.hashed
    assert hp is not None
    banks = studio.banks()
    h = summary(hp.policy, banks)
    traffic, live, preparing, note = None, None, None, None
    if studio.config.store is None:
        note = "no store connected: start the studio with --store DIR to see stored traffic"
    elif banks is None:
        note = "no banks: start the studio with --banks DIR"
    else:
        try:
            traffic = await run_in_threadpool(studio.store.hash_traffic, hp, banks, PAGE_WAIT_S)
            live = traffic.count(hp.policy.max_distance)
        except NotReady as e:
            preparing = e
        except ClipguardError as e:
            note = str(e)
    payload = {
        "histogram": traffic.histogram() if traffic is not None else [],
        "cutoff": hp.policy.max_distance,
        "max": MAX_DISTANCE,
        "bits": h.bits,
    }
    return studio.page(
        request,
        "tune_hash.html",
        pf=pf,
        h=h,
        traffic=traffic,
        live=live,
        preparing=preparing,
        store_note=note,
        payload=payload,
        max_distance=MAX_DISTANCE,
    )


def _hashed(studio: Studio, name: str) -> LoadedHashPolicy:
    hp = policy_file(studio, name).hashed
    if hp is None:
        raise HTTPException(404, "not a hash policy that loads")
    return hp


@router.get("/policies/{name}/tune/distance")
async def distance_count(
    name: str,
    studio: StudioDep,
    distance: Annotated[int, Query(ge=0, le=MAX_DISTANCE)],
) -> JSONResponse:
    """What ``distance`` as ``max_distance`` would match and raise on the stored traffic."""
    page_budget()
    hp = _hashed(studio, name)
    banks = studio.banks()
    if studio.config.store is None or banks is None:
        return JSONResponse({"error": "no store or no banks connected"}, status_code=404)
    try:
        traffic = await run_in_threadpool(studio.store.hash_traffic, hp, banks, PAGE_WAIT_S)
    except NotReady as e:  # asked again by the page a moment later
        return JSONResponse({"preparing": e.status}, status_code=202)
    except ClipguardError as e:
        return JSONResponse({"error": str(e)}, status_code=400)
    count = traffic.count(distance)
    return JSONResponse(
        {
            "distance": distance,
            "frames": count.frames,
            "total": count.total,
            "incidents": count.incidents,
            "ms": round(count.seconds * 1000, 1),
        }
    )


@router.post("/policies/{name}/tune/distance")
def distance_save(
    request: Request,
    name: str,
    studio: StudioDep,
    distance: Annotated[int, Form(ge=0, le=MAX_DISTANCE)],
    base: Annotated[str, Form(max_length=64)],
    note: Annotated[str, Form(max_length=MAX_NOTE)] = "",
) -> Response:
    """Write ``distance`` as the policy's ``max_distance``, as its next version."""
    hp = _hashed(studio, name)
    text = policy_file(studio, name).text
    new = set_max_distance(text, distance)
    studio.writer.write(
        hp,
        new,
        base_sha256=base,
        who=studio.who(request),
        action="threshold",
        note=note.strip() or f"max_distance {hp.policy.max_distance} -> {distance}",
        model=studio.config.model,
    )
    return RedirectResponse(f"/policies/{name}/tune", status_code=303)


def set_max_distance(text: str, distance: int) -> str:
    """``text`` (a hash policy's YAML) with ``max_distance`` set to ``distance``: the value
    replaced where it is written, else a line added at the end."""
    try:
        node = child(yaml.compose(text, Loader=yaml.SafeLoader), "max_distance")
    except yaml.YAMLError as e:
        raise PolicyError(f"the file does not parse: {e}") from e
    if node is None:
        return text + ("" if text.endswith("\n") else "\n") + f"max_distance: {distance}\n"
    if not isinstance(node, yaml.ScalarNode):
        raise PolicyError("cannot find the max_distance to change")
    return text[: node.start_mark.index] + str(distance) + text[node.end_mark.index :]
