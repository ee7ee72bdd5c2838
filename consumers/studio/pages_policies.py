"""Pages about policy files: the list, the editor (with the live linter), promotion between
shadow and enforce, and the audit log."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated, Final

import yaml
from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from consumers.studio.app import Studio, studio_of
from consumers.studio.hashes import bank_problems, summary
from consumers.studio.library import MAX_POLICY_BYTES, LintProblem, PolicyFile, lint_problems
from consumers.studio.versions import set_lists, set_mode, set_version, yaml_diff
from pipeline.errors import ClipguardError, PolicyError

__all__ = ["router"]

router = APIRouter()
StudioDep = Annotated[Studio, Depends(studio_of)]
_MAX_NOTE: Final = 2000


def policy_file(studio: Studio, name: str) -> PolicyFile:
    try:
        return studio.library.get(name)
    except KeyError:
        raise HTTPException(404, "no such policy") from None


@router.get("/", response_class=HTMLResponse)
def policies(request: Request, studio: StudioDep) -> HTMLResponse:
    rows = []
    banks = studio.banks()
    for pf in studio.library.files():
        examples = None
        error = None
        if pf.loaded is not None and pf.loaded.policy.examples:
            try:
                examples = studio.scorer.examples(pf.loaded)
            except ClipguardError as e:
                error = str(e)
        hashed = None if pf.hashed is None else summary(pf.hashed.policy, banks)
        rows.append({"file": pf, "examples": examples, "examples_error": error, "hash": hashed})
    return studio.page(
        request,
        "policies.html",
        rows=rows,
        folder=studio.library.folder,
        backtests=studio.store.last,
        store_banks=banks is not None,
    )


@router.get("/policies/{name}/edit", response_class=HTMLResponse)
def edit(request: Request, name: str, studio: StudioDep) -> HTMLResponse:
    pf = policy_file(studio, name)
    problems = _problems(studio, pf.text, pf)
    return studio.page(request, "edit.html", pf=pf, text=pf.text, problems=problems, error=None)


def _problems(studio: Studio, text: str, pf: PolicyFile) -> list[LintProblem]:
    """What the linter says of ``text`` as ``pf``'s file, and for a hash policy the banks it
    names that are not in force."""
    return lint_problems(text, pf.path, model=studio.config.model) + bank_problems(
        text, pf.path, studio.banks()
    )


@router.post("/policies/{name}/lint")
async def lint(request: Request, name: str, studio: StudioDep) -> JSONResponse:
    """The linter on the editor's text (the request body, UTF-8)."""
    pf = policy_file(studio, name)
    body = await _bounded_body(request, MAX_POLICY_BYTES)
    text = body.decode("utf-8", errors="replace")
    problems = _problems(studio, text, pf)
    return JSONResponse({"problems": [asdict(p) for p in problems]})


class ListEdit(BaseModel):
    """The editor's text and one label's prompts and negatives, one item a line."""

    model_config = ConfigDict(extra="forbid")
    text: str = Field(max_length=MAX_POLICY_BYTES)
    label: str = Field(max_length=64)
    prompts: list[Annotated[str, Field(max_length=500)]] = Field(max_length=200)
    negatives: list[Annotated[str, Field(max_length=500)]] = Field(max_length=200)


@router.post("/policies/{name}/lists")
def lists(name: str, edit: ListEdit, studio: StudioDep) -> JSONResponse:
    """The editor's text with one label's prompts and negatives replaced by the lists."""
    policy_file(studio, name)
    try:
        text = set_lists(
            edit.text, edit.label, {"prompts": edit.prompts, "negatives": edit.negatives}
        )
    except (PolicyError, yaml.YAMLError) as e:
        return JSONResponse({"error": f"fix the YAML first: {e}"}, status_code=400)
    return JSONResponse({"text": text})


@router.post("/policies/{name}/save", response_class=HTMLResponse)
def save(
    request: Request,
    name: str,
    studio: StudioDep,
    text: Annotated[str, Form(max_length=MAX_POLICY_BYTES)],
    base: Annotated[str, Form(max_length=64)],
    note: Annotated[str, Form(max_length=_MAX_NOTE)] = "",
) -> Response:
    pf = policy_file(studio, name)
    if pf.document is None:
        raise HTTPException(409, "the file on disk does not load; fix it in a text editor")
    text = text.replace("\r\n", "\n")
    try:
        studio.writer.write(
            pf.document,
            text,
            base_sha256=base,
            who=studio.who(request),
            action="edit",
            note=note.strip(),
            model=studio.config.model,
        )
    except PolicyError as e:
        problems = _problems(studio, text, pf)
        return studio.page(
            request, "edit.html", status=400, pf=pf, text=text, problems=problems, error=str(e)
        )
    return RedirectResponse(f"/?saved={name}", status_code=303)


@router.get("/policies/{name}/promote", response_class=HTMLResponse)
def promote_page(request: Request, name: str, studio: StudioDep) -> HTMLResponse:
    pf = policy_file(studio, name)
    if pf.document is None:
        raise HTTPException(409, "the policy does not load; fix it first")
    target = "enforce" if pf.document.policy.mode == "shadow" else "shadow"
    new = set_version(set_mode(pf.text, target), pf.document.policy.version + 1)
    return studio.page(
        request,
        "promote.html",
        pf=pf,
        target=target,
        diff=yaml_diff(pf.text, new, pf.path.name),
        error=None,
        backtest=studio.store.last.get(name),
    )


@router.post("/policies/{name}/promote", response_class=HTMLResponse)
def promote(
    request: Request,
    name: str,
    studio: StudioDep,
    target: Annotated[str, Form(pattern="^(enforce|shadow)$")],
    base: Annotated[str, Form(max_length=64)],
    note: Annotated[str, Form(max_length=_MAX_NOTE)] = "",
) -> Response:
    pf = policy_file(studio, name)
    if pf.document is None:
        raise HTTPException(409, "the policy does not load; fix it first")
    new = set_version(set_mode(pf.text, target), pf.document.policy.version + 1)
    error = None
    if not note.strip():
        error = "write a note: why this change, and what you checked before making it"
    else:
        try:
            studio.writer.write(
                pf.document,
                new,
                base_sha256=base,
                who=studio.who(request),
                action="promote" if target == "enforce" else "demote",
                note=note.strip(),
                model=studio.config.model,
            )
        except PolicyError as e:
            error = str(e)
    if error is not None:
        diff = yaml_diff(pf.text, new, pf.path.name)
        return studio.page(
            request,
            "promote.html",
            status=400,
            pf=pf,
            target=target,
            diff=diff,
            error=error,
            backtest=studio.store.last.get(name),
        )
    return RedirectResponse(f"/audit?policy={name}", status_code=303)


@router.get("/audit", response_class=HTMLResponse)
def audit(request: Request, studio: StudioDep, policy: str | None = None) -> HTMLResponse:
    entries = list(reversed(studio.audit.entries(policy=policy)))
    return studio.page(request, "audit.html", entries=entries, policy=policy)


@router.get("/audit.jsonl")
def audit_export(studio: StudioDep) -> Response:
    lines = "".join(
        json.dumps(asdict(e), ensure_ascii=False) + "\n" for e in studio.audit.entries()
    )
    return Response(
        lines,
        media_type="application/x-ndjson",
        headers={"content-disposition": 'attachment; filename="clipguard-audit.jsonl"'},
    )


async def _bounded_body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) past ``limit`` bytes."""
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
