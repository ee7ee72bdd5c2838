"""The studio's way into the frame store (``--store``), kept behind one small class so that
every page works without it: ``pipeline.store`` is imported only here, only when a store is
configured, and by name (:func:`importlib.import_module`), so a build without the store
package still serves every other page.

With a store: the Backtest page re-scores the stored frames with the policy files as they are
now and compares the incidents with those of the policy sets in force when the frames were
stored (the result kept until the policies or the store's files change), and the Review page
queues those incidents; the Try page searches stored frames by text (nearest frames with
thumbnails); Tune counts, as the slider moves, the stored frames and backtest incidents a
threshold gives (:mod:`consumers.studio.traffic`); an incident's timeline reads the stored
frames around it.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Final

import pyarrow as pa

from consumers.studio.hashtune import HashTraffic
from consumers.studio.incidents import StudioIncident, incident_id
from consumers.studio.kept import KeptAnswers
from consumers.studio.preparing import Preparation
from consumers.studio.traffic import Count, TrafficCache, TrafficScores
from pipeline.errors import ClipguardError, ConfigError, StoreError
from pipeline.policies.hashing import check_banks
from pipeline.policies.schema import LoadedHashPolicy, LoadedPolicies, LoadedPolicy
from pipeline.policies.tools.judging import compile_policies

if TYPE_CHECKING:
    from consumers.studio.labels import Label
    from consumers.studio.scoring import Scorer
    from pipeline.hashes.store import BankSnapshot

_log = logging.getLogger(__name__)

__all__ = ["MAX_QUEUED", "MAX_SPAN_FRAMES", "SAMPLE", "StoreLink", "StoreStatus"]

_MAX_QUERY = 300
_MAX_HITS = 48
_SEARCHES_KEPT = 32  # text searches remembered until the store changes
_QUESTIONS_KEPT = 64  # which cached answer a policy file's question has
#: Stored frames scored for Tune's unlabelled histogram (an even sample of the store).
SAMPLE = 20_000
#: The most incidents one click queues from the store.
MAX_QUEUED: Final = 5_000
#: The most stored frames of one reviewed incident's span Tune takes as labelled points (a
#: longer span is sampled evenly).
MAX_SPAN_FRAMES: Final = 2_000


@dataclass(frozen=True)
class StoreStatus:
    ready: bool
    message: str  # why not, or what is there
    frames: dict[str, int] = field(default_factory=dict)  # model -> stored rows


class StoreLink:
    """Backtests and searches over one frame store (or none)."""

    def __init__(self, root: Path | None, kept: KeptAnswers | None = None) -> None:
        self.root = root
        self.kept = kept  # the prepared answers on disk (None: in memory only)
        self._module: Any = None
        self._store: Any = None
        self._lock = threading.Lock()
        self.traffic_cache = TrafficCache()
        self._status: tuple[tuple[str, ...], StoreStatus] | None = None
        self._searches: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
        self._kernels: Any = None
        self._backtests: dict[tuple[str, str, str, tuple[str, ...]], Any] = {}
        self.last: dict[str, dict[str, int]] = {}  # policy id -> its last backtest's counts
        self.preparation = Preparation()  # the slow answers, shared, waited for a while
        self._blas: Any = None  # OpenBLAS held to one thread while the studio runs
        self._answers: dict[tuple[Any, ...], tuple[Any, ...]] = {}  # question -> cache key
        # one pass over the store's frames at a time: the first fills the store's cosine
        # cache, and the next (another policy's stored traffic, the backtest) reads 4 bytes a
        # frame and prompt row from it instead of the embeddings; two at once would both read
        # the embeddings, each on half the cores
        self._passes = threading.Lock()

    def _open(self) -> Any:
        if self.root is None:
            raise ConfigError("no store: start the studio with --store DIR")
        with self._lock:
            if self._store is None:
                try:
                    self._module = importlib.import_module("pipeline.store")
                except ImportError as e:
                    raise ConfigError(f"this build of clipguard has no frame store: {e}") from e
                self._store = self._module.open_store(str(self.root))
                self._kernels = SimpleNamespace(
                    FrameFilter=self._module.FrameFilter,
                    embeddings_of=importlib.import_module("pipeline.store.schema").embeddings_of,
                    CosineKernel=importlib.import_module("pipeline.store.cosines").CosineKernel,
                    CosineCache=importlib.import_module("pipeline.store.cosinecache").CosineCache,
                    **{
                        name: getattr(importlib.import_module("pipeline.store.filescan"), name)
                        for name in ("RowRegistry", "scan_cosines")
                    },
                    **{
                        name: getattr(importlib.import_module("pipeline.store.temporal"), name)
                        for name in ("StreamLayout", "find_incidents")
                    },
                )
            return self._store

    def open_now(self) -> None:
        """Open the store now if there is one (a store that does not open says so on the
        pages that use it), and hold OpenBLAS to one thread until :meth:`close`.

        The store's cosine kernel runs OpenBLAS on one thread while it is open and gives the
        threads back when it closes; two kernels open at once (the stored-traffic scores and
        a backtest, prepared side by side) would give them back under each other, and a
        product's last bit can change with OpenBLAS's thread count. Held at one thread for
        the studio's life, every kernel's numbers are those of ``clipguard policy backtest``,
        bit for bit, however the work overlaps (the kernel runs its own threads)."""
        if self.root is None:
            return
        if self._blas is None:
            from threadpoolctl import threadpool_limits

            self._blas = threadpool_limits(limits=1, user_api="blas")
        try:
            self._open()
        except ClipguardError as e:
            _log.warning("studio: the store does not open: %s", e)

    def close(self) -> None:
        """Stop preparing, and give OpenBLAS its threads back."""
        self.preparation.close()
        if self._blas is not None:
            self._blas.restore_original_limits()
            self._blas = None

    def status(self) -> StoreStatus:
        if self.root is None:
            return StoreStatus(False, "no store connected (start the studio with --store DIR)")
        try:
            store = self._open()
            stamp = self._stamp(store)
            with self._lock:
                if self._status is not None and self._status[0] == stamp:
                    return self._status[1]
            table = store.sql("SELECT model, count(*) AS n FROM frames GROUP BY model")
        except ClipguardError as e:
            return StoreStatus(False, str(e))
        frames = dict(
            zip(table.column("model").to_pylist(), table.column("n").to_pylist(), strict=True)
        )
        total = sum(frames.values())
        status = StoreStatus(True, f"{total} stored frames in {self.root}", frames)
        with self._lock:
            self._status = (stamp, status)  # counted again when the files change
        return status

    def backtest(
        self,
        loaded: LoadedPolicies,
        scorer: Scorer,
        model_name: str | None,
        banks: BankSnapshot | None = None,
        wait: float | None = None,
        labels: Path | None = None,
    ) -> dict[str, Any]:
        """Backtest the policy files as they are now against the sets stored with the frames:
        the store's JSON result, with each listed incident's peak thumbnail place. Hash
        policies are matched against ``banks``; ``model_name`` may be None when there are only
        hash policies. :class:`~consumers.studio.preparing.NotReady` when it takes over
        ``wait`` seconds; scored against the review labels in ``labels`` (``review``: per
        label, precision and recall of both versions) when given."""
        result = self._backtest(loaded, scorer, model_name, banks, wait)
        data: dict[str, Any] = result.to_json()
        if labels is not None and labels.is_file():
            truth = importlib.import_module("pipeline.store.groundtruth")
            reviews = truth.read_reviews(labels)
            data["review"] = truth.review_scores(result, reviews, source=str(labels)).to_json()
        per_policy: dict[str, dict[str, int]] = {}
        for key, diff in data["labels"].items():
            sums = per_policy.setdefault(
                key.split("/", 1)[0], {"incidents": 0, "added": 0, "removed": 0, "changed": 0}
            )
            sums["incidents"] += diff["incidents"]
            for what in ("added", "removed", "changed"):
                sums[what] += len(diff[what])
        self.last.update(per_policy)
        return data

    def incidents(
        self,
        loaded: LoadedPolicies,
        scorer: Scorer,
        model_name: str | None,
        banks: BankSnapshot | None = None,
        wait: float | None = None,
    ) -> list[StudioIncident]:
        """What the policy files as they are now find in the stored frames (shadow labels
        included), as review-queue incidents, at most :data:`MAX_QUEUED` of them."""
        result = self._backtest(loaded, scorer, model_name, banks, wait)
        return [
            StudioIncident(
                id=incident_id(i.stream_id, i.policy, i.label, i.start_ts),
                stream_id=i.stream_id,
                source=None,
                policy=i.policy,
                policy_version=i.policy_version,
                label=i.label,
                severity=i.severity,
                action=i.action,
                start_ts=i.start_ts,
                end_ts=i.end_ts,
                peak_ts=i.peak_ts,
                peak_score=i.peak_score,
                threshold=i.threshold,
                top_prompt=i.top_prompt,
                model=result.model,
                origin="store",
                event_id=i.event_id,
            )
            for i in result.incidents[:MAX_QUEUED]
        ]

    def _backtest(
        self,
        loaded: LoadedPolicies,
        scorer: Scorer,
        model_name: str | None,
        banks: BankSnapshot | None,
        wait: float | None = None,
    ) -> Any:
        """The store's backtest of ``loaded`` (CLIP policies with ``model_name``'s stored
        frames, hash policies against ``banks``), kept until the policies, the banks or the
        store's files change (a page shown again, or queued from, costs nothing). Loading the
        model and compiling the policies are part of the prepared question (a page does not
        wait for them: :class:`~consumers.studio.preparing.NotReady` after ``wait`` s)."""
        store = self._open()
        if len(loaded) and model_name is None:
            raise ConfigError("say which model scores the CLIP policies: pass --model")
        if loaded.hashes:
            if banks is None:
                raise ConfigError("hash policies need banks: start the studio with --banks DIR")
            check_banks(loaded.hashes, frozenset(banks.banks))
        key = (
            loaded.digest,
            model_name or "",
            "" if not loaded.hashes or banks is None else banks.digest,
            self._stamp(store),
        )
        with self._lock:
            if key in self._backtests:
                return self._backtests[key]

        def make(progress: Any) -> Any:
            with self._lock:
                if key in self._backtests:
                    return self._backtests[key]
            found = None if self.kept is None else self.kept.result(("backtest", *key))
            if found is None:
                found = compute(progress)
                if self.kept is not None:
                    self.kept.put_result(("backtest", *key), found)
            with self._lock:
                self._backtests = {key: found}  # the last one: the policies as they are now
            return found

        def compute(progress: Any) -> Any:
            results = []
            if len(loaded):
                assert model_name is not None
                model = scorer.model(model_name)
                policies = compile_policies(loaded, model, scorer.cache_dir)
                with self._passes:
                    results.append(
                        self._module.backtest(
                            policies,
                            store,
                            model=model_name,
                            weights_sha256=model.fingerprint(),
                            progress=progress,
                            write_behind=True,
                        )
                    )
            if loaded.hashes:
                hashbacktest = importlib.import_module("pipeline.store.hashbacktest")
                flt = self._module.FrameFilter(model=model_name if len(loaded) else None)
                results.append(
                    hashbacktest.backtest_hashes(
                        loaded, store, banks, flt=flt, allow_empty=bool(len(loaded))
                    )
                )
                if len(results) == 2:
                    results = [hashbacktest.combine(*results)]
            return results[0]

        frames = self.status().frames
        total = frames.get(model_name, 0) if model_name else sum(frames.values())
        what = "the backtest of the policy files"
        return self.preparation.get(("backtest", *key), what, total, make, wait)

    def _remember(self, question: tuple[Any, ...], key: tuple[Any, ...]) -> None:
        """Which cache key answers ``question`` (the last few; under the lock)."""
        self._answers[question] = key
        while len(self._answers) > _QUESTIONS_KEPT:
            self._answers.pop(next(iter(self._answers)))

    def stamp(self) -> tuple[str, ...]:
        """Changes when the store's files change (empty without a store)."""
        return () if self.root is None else self._stamp(self._open())

    def _stamp(self, store: Any) -> tuple[str, ...]:
        """Changes when the store's files change (a sink wrote more, a prune removed some)."""
        return tuple(repr(f) for f in store.files())

    def label_scores(
        self,
        lp: LoadedPolicy,
        label: str,
        scorer: Scorer,
        model_name: str,
        wait: float | None = None,
    ) -> tuple[int, list[float]]:
        """Unlabelled stored traffic for Tune: how many stored frames of ``model_name`` there
        are (replays dropped, tiles merged), and ``label``'s score (in its rule's unit) on an
        even sample of at most :data:`SAMPLE` of them, sorted."""
        traffic = self.traffic(lp, scorer, model_name, wait).labels[f"{lp.policy.id}/{label}"]
        return traffic.frames, traffic.sample(SAMPLE)

    def review_frames(
        self,
        lp: LoadedPolicy,
        label: str,
        reviews: Sequence[Label],
        scorer: Scorer,
        model_name: str,
        wait: float | None = None,
    ) -> dict[str, list[tuple[float, bool]]]:
        """Tune's labelled points from the stored frames: for each reviewed incident of
        ``label`` (of ``model_name``'s frames, or of no recorded model), ``label``'s score on
        every stored frame of its stream inside its span, and whether the frame passes the
        margin rule (incidents without a stored frame there are left out)."""
        traffic = self.traffic(lp, scorer, model_name, wait)
        key = f"{lp.policy.id}/{label}"
        out = {}
        for r in reviews:
            if r.stream_id is None or r.start_ts is None or r.end_ts is None:
                continue
            if r.model is not None and r.model != model_name:
                continue
            points = traffic.span(key, r.stream_id, r.start_ts, r.end_ts, MAX_SPAN_FRAMES)
            if points:
                out[r.incident] = points
        return out

    def count(
        self,
        lp: LoadedPolicy,
        label: str,
        threshold: float,
        scorer: Scorer,
        model_name: str,
        wait: float | None = None,
    ) -> Count:
        """How many stored frames ``label`` would pass at ``threshold``, and how many incidents
        the backtest would raise."""
        traffic = self.traffic(lp, scorer, model_name, wait).labels[f"{lp.policy.id}/{label}"]
        return traffic.count(threshold)

    def traffic(
        self, lp: LoadedPolicy, scorer: Scorer, model_name: str, wait: float | None = None
    ) -> TrafficScores:
        """Every label of ``lp`` on every stored frame of ``model_name`` (one pass over the
        store per policy version, model and store contents; kept;
        :class:`~consumers.studio.preparing.NotReady` when it takes over ``wait`` seconds,
        loading the model and compiling the policy included)."""
        store = self._open()
        question = ("traffic", lp.sha256, model_name, self._stamp(store))
        with self._lock:
            key = self._answers.get(question)
        kept = None if key is None else self.traffic_cache.peek(key)
        if kept is not None:
            return kept

        def make(progress: Any) -> TrafficScores:
            made_with: tuple[Any, ...] = ()
            found = None
            if self.kept is not None:
                made_with, found = self.kept.traffic(question, self._kernels)
            if found is not None:  # computed by this studio before it was restarted
                known: tuple[Any, ...] = (*made_with, question[-1])
                with self._lock:
                    self._remember(question, known)
                return self.traffic_cache.get(known, lambda: found)
            model = scorer.model(model_name)
            policies = compile_policies(LoadedPolicies([lp]), model, scorer.cache_dir)
            key: tuple[Any, ...] = (policies.id, model_name, model.fingerprint(), question[-1])
            with self._lock:
                self._remember(question, key)

            def compute() -> TrafficScores:
                with self._passes:
                    made = TrafficScores.compute(
                        store,
                        self._kernels,
                        policies,
                        model=model_name,
                        weights_sha256=key[2],
                        progress=progress,
                    )
                if self.kept is not None:
                    self.kept.put_traffic(question, key[:3], made)
                return made

            return self.traffic_cache.get(key, compute)

        total = self.status().frames.get(model_name, 0)
        return self.preparation.get(question, _traffic_what(lp), total, make, wait)

    def hash_traffic(
        self, hp: LoadedHashPolicy, banks: BankSnapshot, wait: float | None = None
    ) -> HashTraffic:
        """Hash policy ``hp``'s nearest distances on every stored hashed frame (all models),
        for Tune's distance slider; made once per policy (its distance aside), banks and
        store contents (:class:`~consumers.studio.preparing.NotReady` after ``wait`` s)."""
        store = self._open()
        check_banks([hp], frozenset(banks.banks))
        same = hp.policy.model_copy(update={"max_distance": 0, "version": 1})
        question = ("hash-traffic", same.model_dump_json(), banks.digest, self._stamp(store))
        what = f"{hp.policy.id} on stored hashed frames"
        return self.preparation.get(
            question,
            what,
            0,
            lambda _: HashTraffic.compute(hp.policy, store, banks),
            wait,
            keep=True,
        )

    def check_kept(self, lp: LoadedPolicy, scorer: Scorer, model_name: str) -> bool:
        """Whether ``lp``'s stored-traffic scores in memory, when read from disk, were made
        with the policy's prompts and the model's weights as they are now; a record made
        otherwise is dropped (computed again when next asked). Loads the model."""
        if self.root is None:
            return True
        question = ("traffic", lp.sha256, model_name, self.stamp())
        with self._lock:
            key = self._answers.get(question)
        if key is None:
            return True
        model = scorer.model(model_name)
        policies = compile_policies(LoadedPolicies([lp]), model, scorer.cache_dir)
        if tuple(key[:3]) == (policies.id, model_name, model.fingerprint()):
            return True
        with self._lock:
            self._answers.pop(question, None)
        if self.kept is not None:
            self.kept.drop(question, ".npz")
        return False

    def check_kept_backtest(self, scorer: Scorer, model_name: str) -> bool:
        """Whether the backtest in memory (read from disk, perhaps) scored ``model_name``'s
        frames with the model's weights as they are now; one made otherwise is dropped."""
        with self._lock:
            kept = [(k, r) for k, r in self._backtests.items() if k[1] == model_name]
        weights = scorer.model(model_name).fingerprint() if kept else ""
        stale = [k for k, r in kept if r.weights_sha256 and r.weights_sha256 != weights]
        for key in stale:
            with self._lock:
                self._backtests.pop(key, None)
            if self.kept is not None:
                self.kept.drop(("backtest", *key), ".pickle")
        return not stale

    def window(
        self, stream_id: str, model_name: str, since: float, until: float, *, limit: int
    ) -> Any:
        """The stored frames of one stream of ``model_name`` from ``since`` to ``until``
        (stream-time seconds), in time order, at most ``limit`` rows: an Arrow table of
        ``ts, seq, frame_index, tile, weights_sha256, embedding, thumbnail``."""
        store = self._open()
        flt = self._module.FrameFilter(model=model_name, streams=(stream_id,))
        return store.sql(
            "SELECT ts, seq, frame_index, tile, weights_sha256, embedding, thumbnail FROM frames "
            "WHERE {where} AND ts >= ? AND ts <= ? ORDER BY ts, seq, frame_index, tile LIMIT ?",
            [since, until, limit],
            flt,
        )

    def windows(
        self, wanted: list[tuple[str, str, str, float, float]]
    ) -> dict[str, list[tuple[float, bytes]]]:
        """The stored thumbnails in several windows at once, one query per model (a join, so
        the store is scanned once however many windows are asked for): ``wanted`` holds
        ``(key, stream id, model, since, until)``; the answer maps each key to its
        ``(ts, JPEG)`` in time order (keys with none are absent)."""
        import duckdb

        store = self._open()
        out: dict[str, list[tuple[float, bytes]]] = {}
        for model_name in sorted({w[2] for w in wanted}):
            mine = [w for w in wanted if w[2] == model_name]
            table = pa.table(
                {
                    "w_key": pa.array([w[0] for w in mine], pa.string()),
                    "w_stream": pa.array([w[1] for w in mine], pa.string()),
                    "w_since": pa.array([w[3] for w in mine], pa.float64()),
                    "w_until": pa.array([w[4] for w in mine], pa.float64()),
                }
            )
            flt = self._module.FrameFilter(model=model_name)
            condition, params = flt.where()
            con = store.connect(flt)
            try:
                con.register("wanted", table)
                rows = con.sql(
                    "SELECT w_key, ts, thumbnail FROM frames JOIN wanted ON stream_id = w_stream "  # noqa: S608 - the condition is fixed text
                    f"AND ts >= w_since AND ts <= w_until WHERE ({condition}) AND thumbnail IS "
                    "NOT NULL ORDER BY w_key, ts",
                    params=params,
                ).fetchall()
            except duckdb.Error as e:
                raise StoreError(f"{self.root}: query failed: {e}") from e
            finally:
                con.close()
            for key, ts, picture in rows:
                out.setdefault(key, []).append((float(ts), bytes(picture)))
        return out

    def thumbnail(self, stream_id: str, seq: int, frame_index: int, tile: int) -> bytes | None:
        found = self._open().thumbnails_at([(stream_id, seq, frame_index, tile)])
        picture = found.get((stream_id, seq, frame_index, tile))
        return bytes(picture) if picture is not None else None

    def thumbnail_of(self, frame_id: str) -> bytes | None:
        picture = self._open().thumbnails([frame_id]).get(frame_id)
        return bytes(picture) if picture is not None else None

    def search_embedding(self, query: Any, model_name: str) -> list[dict[str, Any]]:
        """The stored frames nearest to an image embedding (E,), best first."""
        store = self._open()
        hits = self._module.search(store, query, model=model_name, top=_MAX_HITS, write_behind=True)
        return [h.to_json() for h in hits]

    def _searched(self, key: tuple[Any, ...]) -> list[dict[str, Any]] | None:
        with self._lock:
            return self._searches.get(key)

    def search_text(self, text: str, scorer: Scorer, model_name: str) -> list[dict[str, Any]]:
        """The stored frames nearest to a text query, best first."""
        text = text.strip()
        if not text or len(text) > _MAX_QUERY:
            raise ConfigError(f"a query is 1 to {_MAX_QUERY} characters")
        self._open()  # ConfigError first when there is no store
        model = scorer.model(model_name)
        from pipeline.policies.compile import PolicyCompiler

        key = (text, model_name, model.fingerprint(), self.stamp())
        kept = self._searched(key)
        if kept is not None:
            return kept  # the same words asked again (paging back, a reload)
        query = PolicyCompiler(model, cache_dir=scorer.cache_dir).encode_text([text])[0]
        hits = self.search_embedding(query, model_name)
        with self._lock:
            self._searches[key] = hits
            while len(self._searches) > _SEARCHES_KEPT:
                self._searches.pop(next(iter(self._searches)))
        return hits


def _traffic_what(lp: LoadedPolicy) -> str:
    """How the progress line names the scoring of ``lp`` on the stored traffic."""
    return f"{lp.policy.id} v{lp.policy.version} on stored traffic"
