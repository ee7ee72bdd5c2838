"""The studio's application object: settings, the policy library, scoring, labels and audit
log in one :class:`Studio`, and :func:`create_app`, which builds the FastAPI app around it
(a router per page group, the access middleware in front)."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from consumers.studio.access import AccessMiddleware
from consumers.studio.audit import AuditLog
from consumers.studio.config import StudioConfig
from consumers.studio.incidents import StudioIncident, read_incidents
from consumers.studio.labels import LabelStore
from consumers.studio.library import PolicyLibrary
from consumers.studio.scoring import Scorer
from consumers.studio.store_link import StoreLink
from consumers.studio.versions import PolicyWriter
from pipeline.errors import ClipguardError

__all__ = ["Studio", "create_app", "studio_of"]

_HERE = Path(__file__).parent


class Studio:
    """Everything a page needs, made once per app."""

    def __init__(self, config: StudioConfig) -> None:
        self.config = config
        data = config.data_dir
        for sub in ("uploads", "thumbs", "history", "compiled"):
            (data / sub).mkdir(parents=True, exist_ok=True)
        self.library = PolicyLibrary(config.policies_dir, model=config.model)
        self.audit = AuditLog(data / "audit.jsonl")
        self.writer = PolicyWriter(data / "history", self.audit)
        self.labels = LabelStore(data / "labels.sqlite3")
        self.scorer = Scorer(
            model=config.model,
            data_dir=data,
            max_upload_bytes=config.max_upload_bytes,
            sample_fps=config.sample_fps,
            precision=config.precision,
        )
        self.store = StoreLink(config.store)
        self.templates = Jinja2Templates(directory=str(_HERE / "templates"))
        self._incidents: tuple[float, list[StudioIncident]] | None = None
        self._lock = threading.Lock()

    def who(self, request: Request) -> str:
        """Who is acting: the user the authenticating proxy names, else the configured one."""
        if self.config.behind_proxy:
            name = request.headers.get(self.config.user_header, "").strip()
            if name:
                return name[:200]
        return self.config.user

    def incidents(self) -> list[StudioIncident]:
        """The review queue (re-read when the incidents file changes)."""
        path = self.config.incidents
        if path is None or not path.exists():
            return []
        stamp = path.stat().st_mtime
        with self._lock:
            if self._incidents is None or self._incidents[0] != stamp:
                self._incidents = (stamp, read_incidents(path))
            return self._incidents[1]

    def page(self, request: Request, template: str, status: int = 200, **ctx: Any) -> HTMLResponse:
        ctx.setdefault("store", self.config.store)
        return self.templates.TemplateResponse(request, template, ctx, status_code=status)

    def close(self) -> None:
        self.scorer.close()
        self.labels.close()


def studio_of(request: Request) -> Studio:
    """The :class:`Studio` of the app serving ``request`` (a FastAPI dependency)."""
    studio: Studio = request.app.state.studio
    return studio


def create_app(config: StudioConfig) -> FastAPI:
    """The studio as an ASGI app (serve it with uvicorn)."""
    from consumers.studio import pages_policies, pages_review, pages_store, pages_try

    studio = Studio(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        studio.close()

    app = FastAPI(
        title="clipguard studio", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan
    )
    app.state.studio = studio
    app.mount("/static", StaticFiles(directory=str(_HERE / "static")), name="static")
    for module in (pages_policies, pages_try, pages_review, pages_store):
        app.include_router(module.router)

    @app.exception_handler(ClipguardError)
    async def _clipguard_error(request: Request, exc: ClipguardError) -> HTMLResponse:
        return studio.page(request, "error.html", status=400, message=str(exc))

    app.add_middleware(AccessMiddleware, config=config)
    return app
