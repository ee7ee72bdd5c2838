"""Keeping the store's answers ready: a thread that, whenever the policy files or the store's
files change (and once at start), computes in the background what the store pages would
otherwise compute on the first request: each policy's regression examples scored (Tune's
labelled data; the model loaded), its scores on the stored traffic (Tune and its live count)
the backtest of the policy files as they are now (Backtest, Review's queue from the
store), and each hash policy's nearest distances on the stored hashed frames (its Tune page's
histogram and distance slider; with banks). On a store of a million frames these are
seconds of work each; with them ready every page answers from memory. They are questions of
the store link's :class:`~consumers.studio.preparing.Preparation`: a page asking one that is
being computed shares that computation, waiting for it half a second at most.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Final

from consumers.studio.preparing import NotReady
from consumers.studio.scoring import LabeledScore
from pipeline.errors import ClipguardError, PolicyError
from pipeline.policies import policy_files
from pipeline.policies.schema import LoadedPolicies, LoadedPolicy
from pipeline.policies.tools.judging import compile_policies

if TYPE_CHECKING:
    from consumers.studio.app import Studio

__all__ = ["CHECK_S", "Warmer", "prepare_at_start", "prepared_examples"]

_log = logging.getLogger(__name__)

#: How often the policy files and the store's file list are looked at.
CHECK_S: Final = 5.0


class Warmer:
    """Warms ``studio``'s store link (see the module docstring); :meth:`start`, :meth:`stop`."""

    def __init__(self, studio: Studio) -> None:
        self.studio = studio
        self.warmed: tuple[object, ...] | None = None  # what the caches were last made for
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="studio-warm", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def warm_once(self) -> bool:
        """Warm the caches if the policies or the store changed since last time; whether it
        did."""
        studio = self.studio
        banks = studio.banks()
        key = (_stat(studio.library.folder), studio.store.stamp(), banks and banks.digest)
        if key == self.warmed:
            return False
        loaded = [pf.loaded for pf in studio.library.files() if pf.loaded is not None]
        models = sorted({studio.scorer.model_name(lp) for lp in loaded})
        for n, lp in enumerate(loaded):  # what a page needs first, read from disk if kept
            if self._stop.is_set():
                return False
            with suppress(NotReady):  # the examples scored beside the stored traffic
                prepared_examples(studio, lp, 0.0)  # (the pool has two threads)
            studio.store.traffic(lp, studio.scorer, studio.scorer.model_name(lp))
            prepared_examples(studio, lp, None)
            if n == 0 and len(models) == 1 and not self._stop.is_set():
                # the backtest (every policy's Backtest and Review) next: the first pass
                # filled the cosine cache it reads
                studio.store.incidents(LoadedPolicies(loaded), studio.scorer, models[0])
        for lp in loaded:  # answers read from disk: made with these prompts and weights?
            name = studio.scorer.model_name(lp)
            if not self._stop.is_set() and not studio.store.check_kept(lp, studio.scorer, name):
                studio.store.traffic(lp, studio.scorer, name)
        one = models[0] if len(models) == 1 else None
        if (
            one
            and not self._stop.is_set()
            and not studio.store.check_kept_backtest(studio.scorer, one)
        ):
            studio.store.incidents(LoadedPolicies(loaded), studio.scorer, one)
        hashed = [pf.hashed for pf in studio.library.files() if pf.hashed is not None]
        for hp in hashed:
            if self._stop.is_set():
                return False
            if banks is not None:
                with suppress(PolicyError):  # names a bank not there: its page says so
                    studio.store.hash_traffic(hp, banks)
        self.warmed = key
        return bool(loaded or hashed)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.warm_once()
            except (ClipguardError, OSError) as e:
                _log.warning("studio: could not prepare the store's answers: %s", e)
            self._stop.wait(CHECK_S)


def prepare_at_start(studio: Studio, say: Callable[[str], None]) -> float:
    """Before the studio serves: what does not depend on the store's frames, done once so that
    no page waits for it: each policy's model loaded (the first load imports much of torch),
    its prompts compiled and its regression examples decoded (in the sandboxed decode pool)
    and scored (Tune's labelled data; kept in the data folder, so a restart reads them). Each
    step is told to ``say``; a policy that fails a step is said so and left to its pages.
    The seconds it took."""
    started = time.perf_counter()
    loaded = [pf.loaded for pf in studio.library.files() if pf.loaded is not None]
    for name in sorted({studio.scorer.model_name(lp) for lp in loaded}):
        step = time.perf_counter()
        try:
            studio.scorer.model(name)
        except (ClipguardError, OSError) as e:
            say(f"model {name} does not load: {e}")
            continue
        say(f"model {name} loaded in {time.perf_counter() - step:.1f} s")
    for lp in loaded:
        step = time.perf_counter()
        try:
            model = studio.scorer.model(studio.scorer.model_name(lp))
            compile_policies(LoadedPolicies([lp]), model, studio.scorer.cache_dir)
            examples = prepared_examples(studio, lp, None)
        except (ClipguardError, OSError) as e:
            say(f"{lp.policy.id}: not prepared: {e}")
            continue
        say(
            f"{lp.policy.id} v{lp.policy.version}: prompts compiled, {len(lp.policy.examples)} "
            f"examples scored ({len(examples)} label scores) in "
            f"{time.perf_counter() - step:.1f} s"
        )
    return time.perf_counter() - started


def prepared_examples(studio: Studio, lp: LoadedPolicy, wait: float | None) -> list[LabeledScore]:
    """Tune's scores of ``lp``'s regression examples, as a prepared question (the model may
    still be loading; :class:`~consumers.studio.preparing.NotReady` after ``wait`` seconds)."""
    question = ("examples", lp.sha256, _examples_stamp(lp), studio.scorer.model_name(lp))
    kept = studio.store.kept

    def make(_: object) -> list[LabeledScore]:
        found = None if kept is None else kept.examples(question)
        if found is None:
            found = studio.scorer.example_scores(lp)
            if kept is not None:
                kept.put_examples(question, found)
        return found

    what = f"{lp.policy.id}'s examples"
    return studio.store.preparation.get(question, what, 0, make, wait, keep=True)


def _examples_stamp(lp: LoadedPolicy) -> tuple[tuple[int, int], ...]:
    """The example files' sizes and modification times (their scores change with them)."""
    out = []
    for example in lp.policy.examples:
        try:
            st = lp.resolve(example.path).stat()
        except (OSError, ValueError, PolicyError):  # scoring says what is wrong with it
            out.append((-1, -1))
            continue
        out.append((st.st_size, st.st_mtime_ns))
    return tuple(out)


def _stat(folder: Path) -> tuple[tuple[str, int, int], ...]:
    """The policy files' names, sizes and modification times (a cheap change check)."""
    out = []
    for path in policy_files([folder]):
        try:
            st = path.stat()
        except OSError:
            continue
        out.append((path.name, st.st_size, st.st_mtime_ns))
    return tuple(out)
