"""The store's answers that take seconds (a policy's scores on every stored frame, a backtest),
computed once per question on a small pool of threads, so that a page never waits long.

A page asks with a wait of half a second (:data:`PAGE_WAIT_S`): a question answered by then
(or already answered) is shown at once; otherwise :class:`NotReady` says how far the work has
got, the page shows that with a progress line that asks :meth:`Preparation.status` again
(``/store/preparing``) and reloads once what it waits for is no longer being prepared. The
background warmer
(:mod:`consumers.studio.warm`) and pages asking the same question share one computation, and a
question a page asks starts at once on a free thread, beside what the warmer prepares.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextvars import ContextVar
from typing import Final, TypeVar

__all__ = ["PAGE_BUDGET_S", "PAGE_WAIT_S", "NotReady", "Preparation", "page_budget"]


def page_budget() -> None:
    """Start the page's budget: the answers it asks for from now on (in this context) are
    waited for :data:`PAGE_BUDGET_S` in all."""
    _PAGE_DEADLINE.set(time.monotonic() + PAGE_BUDGET_S)


#: How long a page waits for an answer before it looks at how far the work has got.
PAGE_WAIT_S: Final = 0.5
#: How long a page may wait in all: past :data:`PAGE_WAIT_S` it waits on only for an answer
#: whose rows read so far, at the rate they were read, say it is done within this.
PAGE_BUDGET_S: Final = 1.0
#: When the page being answered must be sent at the latest (``time.monotonic()``), set by
#: :func:`page_budget`; threads the page's work runs on inherit it (``run_in_threadpool``
#: copies the context), so that a page asking two answers waits the budget once, not twice.
_PAGE_DEADLINE: ContextVar[float | None] = ContextVar("page_deadline", default=None)
_WORKERS: Final = 2  # the warmer's question and a page's, side by side
_KEPT: Final = 64  # small answers remembered (get(keep=True))
_TAIL: Final = 0.25  # the work after the last row read, as a share of reading every row

T = TypeVar("T")


class NotReady(Exception):
    """The answer is being prepared: ``what`` (as the status line names it); ``status`` says
    how far everything being prepared has got (one line)."""

    def __init__(self, what: str, status: str) -> None:
        super().__init__(status)
        self.what = what
        self.status = status


class Preparation:
    """The pool, the questions in flight and how far each has got."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(_WORKERS, thread_name_prefix="studio-prepare")
        self._lock = threading.RLock()  # a done callback may run in the caller, lock held
        self._futures: dict[Hashable, tuple[Future[object], str]] = {}
        self._work: dict[int, list[object]] = {}  # token -> [what, rows read, in all, started]
        self._tokens = 0
        self._kept: OrderedDict[Hashable, object] = OrderedDict()  # answers asked to be kept

    def kept(self) -> list[Hashable]:
        """The questions whose answers are kept (answered at once when asked)."""
        with self._lock:
            return list(self._kept)

    def get(
        self,
        key: Hashable,
        what: str,
        total: int,
        make: Callable[[Callable[[int], None]], T],
        wait: float | None,
        *,
        keep: bool = False,
    ) -> T:
        """The answer to ``key``, made by ``make(progress)`` (``progress(rows read)`` of
        ``total``) once however many ask; :class:`NotReady` when ``wait`` seconds pass first
        (``None``: wait for it). ``keep``: remember the answer (a small one, whose maker keeps
        no cache of its own that answers at once) for the next ask."""
        with self._lock:
            if key in self._kept:
                return self._kept[key]  # type: ignore[return-value]
            known = self._futures.get(key)
            if known is None:
                future: Future[object] = self._pool.submit(self._run, what, total, make)
                self._futures[key] = (future, what)
                future.add_done_callback(lambda f: self._forget(key, f, keep))
            else:
                future = known[0]
        asked = time.monotonic()
        deadline = _PAGE_DEADLINE.get()
        if wait is not None and deadline is not None:
            wait = max(0.0, min(wait, deadline - asked))
        try:
            try:
                return future.result(timeout=wait)  # type: ignore[return-value]  # made by make
            except FutureTimeout:
                more = self._more(what, wait, asked)
                if more <= 0:
                    raise
                return future.result(timeout=more)  # type: ignore[return-value]
        except FutureTimeout:
            busy, status = self.status()
            if future.done():  # finished just now
                return future.result()  # type: ignore[return-value]
            if what not in status:  # between its last rows and its end
                status = f"preparing {what}" + (
                    ", " + status.removeprefix("preparing ") if busy else ""
                )
            raise NotReady(what, status) from None

    def _more(self, what: str, wait: float | None, asked: float) -> float:
        """How much longer a page that waited ``wait`` s (from ``asked``) waits for ``what``:
        the rest of :data:`PAGE_BUDGET_S` when the work's progress says it ends by then, or
        says nothing yet (no rows read: loading the model, one small batch), else nothing
        (the page shows the progress line)."""
        if wait is None or wait >= PAGE_BUDGET_S:
            return 0.0
        now = time.monotonic()
        deadline = _PAGE_DEADLINE.get()
        left = (asked + PAGE_BUDGET_S if deadline is None else deadline) - now
        with self._lock:
            found = [w for w in self._work.values() if w[0] == what]
        if not found or left <= 0:
            return max(0.0, left)  # not started yet (its turn comes), or past the budget
        done, total, started = (float(v) for v in found[0][1:])  # type: ignore[arg-type]
        if not total or not done:
            return left
        rate = done / max(1e-6, now - started)  # rows a second
        # the rows still to read, then what follows the last one (ordering, a backtest's diff)
        needed = (total - done) / rate + _TAIL * total / rate
        return left if needed <= left else 0.0

    def later(self, what: str, job: Callable[[], object]) -> None:
        """Run ``job`` (which may wait for answers) on a thread of its own; counted as being
        prepared until it ends."""
        token = self._start(what, 0)

        def run() -> None:
            try:
                job()
            finally:
                self._end(token)

        threading.Thread(target=run, name="studio-prepare-then", daemon=True).start()

    def status(self) -> tuple[bool, str]:
        """Whether anything is being prepared, and what (one line)."""
        with self._lock:
            waiting = [w for f, w in self._futures.values() if not f.running() and not f.done()]
            parts = []
            for what, done, total, _ in self._work.values():
                share = f" {min(99, int(100 * int(done) / int(total)))}%" if total else ""  # type: ignore[call-overload]
                parts.append(f"{what}{share}")
            parts.extend(f"{what} (waiting its turn)" for what in waiting)
        if not parts:
            return False, "ready"
        return True, "preparing " + ", ".join(parts)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- helpers ------------------------------------------------------------------------------

    def _run(self, what: str, total: int, make: Callable[[Callable[[int], None]], T]) -> T:
        token = self._start(what, total)
        try:
            return make(lambda rows: self._progress(token, rows))
        finally:
            self._end(token)

    def _start(self, what: str, total: int) -> int:
        with self._lock:
            self._tokens += 1
            self._work[self._tokens] = [what, 0, total, time.monotonic()]
            return self._tokens

    def _progress(self, token: int, rows: int) -> None:
        with self._lock:
            if token in self._work:
                self._work[token][1] = rows

    def _end(self, token: int) -> None:
        with self._lock:
            self._work.pop(token, None)

    def _forget(self, key: Hashable, future: Future[object], keep: bool) -> None:
        with self._lock:
            known = self._futures.get(key)
            if known is not None and known[0] is future:
                del self._futures[key]  # answered (and kept by its cache) or failed: ask again
            if keep and not future.cancelled() and future.exception() is None:
                self._kept[key] = future.result()
                while len(self._kept) > _KEPT:
                    self._kept.popitem(last=False)
