"""The studio's application object: settings, the policy library, scoring, labels and audit
log in one :class:`Studio`, and :func:`create_app`, which builds the FastAPI app around it
(a router per page group, the access middleware in front)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from consumers.studio.access import AccessMiddleware
from consumers.studio.audit import AuditLog
from consumers.studio.config import StudioConfig
from consumers.studio.database import database_path
from consumers.studio.flagfeed import FlagFeed
from consumers.studio.incidents import StudioIncident, read_incidents
from consumers.studio.kept import KeptAnswers
from consumers.studio.labels import LabelStore
from consumers.studio.library import PolicyLibrary
from consumers.studio.queue import ReviewQueue
from consumers.studio.scoring import Scorer
from consumers.studio.store_link import StoreLink
from consumers.studio.versions import PolicyWriter
from consumers.studio.warm import Warmer, prepare_at_start
from pipeline.errors import ClipguardError

if TYPE_CHECKING:
    from pipeline.hashes.store import BankSnapshot, BankStore

__all__ = ["Studio", "create_app", "studio_of"]

_HERE = Path(__file__).parent
_log = logging.getLogger(__name__)


class Studio:
    """Everything a page needs, made once per app."""

    def __init__(self, config: StudioConfig, say: Callable[[str], None] | None = None) -> None:
        self.config = config
        self.say = say or _log.info  # start-up progress (the command line prints it)
        data = config.data_dir
        for sub in ("uploads", "thumbs", "history", "compiled"):
            (data / sub).mkdir(parents=True, exist_ok=True)
        self.library = PolicyLibrary(config.policies_dir, model=config.model)
        self.audit = AuditLog(data / "audit.jsonl")
        self.writer = PolicyWriter(data / "history", self.audit)
        database = database_path(data, config.store)  # beside a local store, else in data
        self.labels = LabelStore(database)
        self.queue = ReviewQueue(database)
        self.feed = (
            None
            if config.flags_topic is None
            else FlagFeed(
                self.queue, bootstrap_servers=config.bootstrap_servers, topic=config.flags_topic
            )
        )
        self.scorer = Scorer(
            model=config.model,
            data_dir=data,
            max_upload_bytes=config.max_upload_bytes,
            sample_fps=config.sample_fps,
            precision=config.precision,
        )
        self.store = StoreLink(config.store, KeptAnswers(config.data_dir / "prepared"))
        self._banks: BankStore | None = None
        if config.banks:  # read now: a broken bank file stops the start, as in a worker
            from pipeline.hashes.store import BankStore

            self._banks = BankStore(list(config.banks))
        self.warmer = Warmer(self) if config.store is not None and config.warm else None
        self.templates = Jinja2Templates(directory=str(_HERE / "templates"))
        self._file_stamp: tuple[int, int] | None = None
        self._lock = threading.Lock()

    def who(self, request: Request) -> str:
        """Who is acting: the user the authenticating proxy names, else the configured one."""
        if self.config.behind_proxy:
            name = request.headers.get(self.config.user_header, "").strip()
            if name:
                return name[:200]
        return self.config.user

    def sync_file(self) -> None:
        """Put the incidents file's incidents into the queue (again when the file changes)."""
        path = self.config.incidents
        if path is None:
            return
        try:
            st = path.stat()
        except OSError:
            return
        stamp = (st.st_size, st.st_mtime_ns)
        with self._lock:
            if self._file_stamp != stamp:
                self.queue.add(read_incidents(path))
                self._file_stamp = stamp

    def incidents(self) -> list[StudioIncident]:
        """The whole review queue, in the order incidents arrived."""
        self.sync_file()
        return self.queue.all()

    def incident(self, incident: str) -> StudioIncident | None:
        """One queued incident by id."""
        self.sync_file()
        return self.queue.get(incident)

    def banks(self) -> BankSnapshot | None:
        """The banks in force for hash policies (re-read when their files change), or None
        when the studio was started without ``--banks``."""
        if self._banks is None:
            return None
        with self._lock:
            self._banks.refresh()
        return self._banks.snapshot

    def page(self, request: Request, template: str, status: int = 200, **ctx: Any) -> HTMLResponse:
        ctx.setdefault("store", self.config.store)
        return self.templates.TemplateResponse(request, template, ctx, status_code=status)

    def start(self) -> None:
        """Before serving, with a store and its preparation on: open the store (its libraries
        load in seconds), load the models and score the policies' examples
        (:func:`~consumers.studio.warm.prepare_at_start`), so no page waits for those; then
        start what runs beside the pages (the flags topic reader, the warmer)."""
        started = time.perf_counter()
        if self.config.store is not None:
            self.say(f"opening the store {self.config.store}")
            self.store.open_now()
            self.say(f"store open in {time.perf_counter() - started:.1f} s")
        if self.warmer is not None:
            prepare_at_start(self, self.say)
            if self.config.prepare_store:
                self.say("preparing the store's answers (stored traffic, backtest)")
                try:
                    self.warmer.warm_once()
                except (ClipguardError, OSError) as e:  # the pages say it again when asked
                    self.say(f"the store's answers are not prepared: {e}")
            self.say(f"prepared in {time.perf_counter() - started:.1f} s; serving")
        if self.feed is not None:
            self.feed.start()
        if self.warmer is not None:
            self.warmer.start()

    def close(self) -> None:
        if self.feed is not None:
            self.feed.stop()
        if self.warmer is not None:
            self.warmer.stop()
        self.store.close()
        self.scorer.close()
        self.queue.close()
        self.labels.close()


def studio_of(request: Request) -> Studio:
    """The :class:`Studio` of the app serving ``request`` (a FastAPI dependency)."""
    studio: Studio = request.app.state.studio
    return studio


def create_app(config: StudioConfig, say: Callable[[str], None] | None = None) -> FastAPI:
    """The studio as an ASGI app (serve it with uvicorn); ``say`` is told the start-up's
    progress (default: logged)."""
    from consumers.studio import (
        pages_hashtune,
        pages_incident,
        pages_policies,
        pages_review,
        pages_store,
        pages_try,
    )

    studio = Studio(config, say)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        studio.start()
        yield
        studio.close()

    app = FastAPI(
        title="clipguard studio", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan
    )
    app.state.studio = studio
    app.mount("/static", StaticFiles(directory=str(_HERE / "static")), name="static")
    for module in (
        pages_policies,
        pages_try,
        pages_review,
        pages_hashtune,
        pages_incident,
        pages_store,
    ):
        app.include_router(module.router)

    @app.exception_handler(ClipguardError)
    async def _clipguard_error(request: Request, exc: ClipguardError) -> HTMLResponse:
        return studio.page(request, "error.html", status=400, message=str(exc))

    app.add_middleware(AccessMiddleware, config=config)
    return app
