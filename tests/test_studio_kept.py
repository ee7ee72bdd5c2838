"""The store's prepared answers kept in the studio's data folder: a studio restarted on the
same store and policies answers Tune, its live count and Backtest whole on the first request,
without loading the model, with the figures of the uncached computation (the store backtest
run here on its own); a kept answer that is cut short, tampered with or made under other
weights is dropped and computed again, and a pickle that would build anything but a backtest
result is refused without running it."""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from consumers.studio import StudioConfig, create_app
from tests.studio_fixtures import backtest_at, make_policies, synthetic_store, whole_page

pytest.importorskip("pipeline.store")
pytestmark = pytest.mark.usefixtures("policy_cache")

BASE = "http://127.0.0.1:8600"
COUNT = "/policies/red-triangle/tune/count"
SUMMARY = re.compile(r'id="backtest-summary">(.*?)</p>', re.S)


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("studio-kept")
    policies = make_policies(root)
    return policies, synthetic_store(root, policies, streams=6, frames=200)


def _uncached_backtest(policies: Path, store: Path, cache: Path | None) -> dict[str, Any]:
    """The store backtest of the policy files, computed here (with the studio's compiled
    prompts: prompts encoded elsewhere may differ in the last bit)."""
    from pipeline.models import load_model
    from pipeline.policies import load_policies
    from pipeline.policies.tools.judging import compile_policies
    from pipeline.store import backtest, open_store

    model = load_model("clipguard-demo")
    compiled = compile_policies(load_policies([policies]), model, cache)
    result = backtest(
        compiled, open_store(store), model=model.name, weights_sha256=model.fingerprint()
    )
    out: dict[str, Any] = result.to_json()
    return out


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    differ = [k for k in a.keys() | b.keys() if k != "seconds" and a.get(k) != b.get(k)]
    assert differ == []
    return True


def test_a_restarted_studio_answers_from_what_it_kept(
    stored: tuple[Path, Path], tmp_path: Path
) -> None:
    policies, store = stored
    config = StudioConfig(policies_dir=policies, data_dir=tmp_path / "data", store=store)
    app = create_app(config)
    with TestClient(app, base_url=BASE) as c:
        first = whole_page(c, "/policies/red-triangle/tune")
        whole_page(c, "/backtest?run=1")
    kept = sorted(p.suffix for p in (tmp_path / "data" / "prepared").iterdir())
    assert kept.count(".npz") == 2 and ".pickle" in kept and ".json" in kept

    again = create_app(StudioConfig(**{**config.__dict__, "warm": False}))
    with TestClient(again, base_url=BASE) as c:
        page = c.get("/policies/red-triangle/tune").text  # whole at once
        assert 'id="preparing"' not in page and "of 1200 stored frames reach it" in page
        assert page.split('id="precision">', 1)[1][:5] == first.split('id="precision">', 1)[1][:5]
        for t in (0.3, 0.55, 0.7):
            got = c.get(COUNT, params={"label": "red-triangle", "threshold": t}).json()
            assert (got["frames"], got["incidents"]) == backtest_at(policies, store, t, tmp_path)
        page = c.get("/backtest?run=1").text
        assert 'id="preparing"' not in page and SUMMARY.search(page) is not None
        studio = again.state.studio
        assert studio.scorer._models == {}  # nothing needed the model
        model = studio.scorer.model_name(studio.library.files()[0].loaded)
        from pipeline.policies.schema import LoadedPolicies

        loaded = LoadedPolicies([pf.loaded for pf in studio.library.files() if pf.loaded])
        kept_result = studio.store._backtest(loaded, studio.scorer, model, None, None)
        uncached = _uncached_backtest(policies, store, studio.scorer.cache_dir)
        assert _same(kept_result.to_json(), uncached)
        # the warmer's check: made with these prompts and weights
        for pf in studio.library.files():
            assert studio.store.check_kept(pf.loaded, studio.scorer, model)


class _Boom:
    """Unpickled, it would create the file ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def test_kept_answers_that_do_not_read_are_computed_again(
    stored: tuple[Path, Path], tmp_path: Path
) -> None:
    policies, store = stored
    data = tmp_path / "data"
    config = StudioConfig(policies_dir=policies, data_dir=data, store=store, warm=False)
    with TestClient(create_app(config), base_url=BASE) as c:
        whole_page(c, "/policies/red-triangle/tune")
        whole_page(c, "/backtest?run=1")
    prepared = data / "prepared"
    pickled = next(prepared.glob("*.pickle"))
    for path in prepared.glob("*.npz"):
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # cut short
    marker = tmp_path / "ran"
    pickled.write_bytes(pickle.dumps(_Boom(marker)))
    for path in prepared.glob("*.json"):
        path.write_text('[["x", "red-triangle", true, "not a number", true]]')
    with TestClient(create_app(config), base_url=BASE) as c:
        page = whole_page(c, "/policies/red-triangle/tune")
        assert "of 1200 stored frames reach it" in page
        got = c.get(COUNT, params={"label": "red-triangle", "threshold": 0.55}).json()
        assert (got["frames"], got["incidents"]) == backtest_at(policies, store, 0.55, tmp_path)
        assert "example: examples/" in page and "not a number" not in page
        page = whole_page(c, "/backtest?run=1")
        assert SUMMARY.search(page) is not None
    assert not marker.exists()  # the forged pickle was refused, not run
    from consumers.studio.kept import _ResultUnpickler

    with pickled.open("rb") as f:  # written again, whole
        assert type(_ResultUnpickler(f).load()).__name__ == "BacktestResult"


def test_a_record_made_under_other_weights_is_dropped(
    stored: tuple[Path, Path], tmp_path: Path
) -> None:
    import json

    import numpy as np

    policies, store = stored
    data = tmp_path / "data"
    config = StudioConfig(policies_dir=policies, data_dir=data, store=store, warm=False)
    with TestClient(create_app(config), base_url=BASE) as c:
        whole_page(c, "/policies/red-triangle/tune")
    (path,) = (data / "prepared").glob("*.npz")
    with np.load(path) as arrays:
        contents = dict(arrays)
    meta = json.loads(bytes(contents["meta"]).decode())
    meta["made_with"][2] = "0" * 64  # other weights
    contents["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    with path.open("wb") as out:
        np.savez(out, **contents)
    app = create_app(config)
    with TestClient(app, base_url=BASE) as c:
        c.get("/policies/red-triangle/tune")
        studio = app.state.studio
        lp = studio.library.get("red-triangle").loaded
        assert not studio.store.check_kept(lp, studio.scorer, studio.scorer.model_name(lp))
        assert not path.exists()
        page = whole_page(c, "/policies/red-triangle/tune")  # computed again, and kept
        assert "of 1200 stored frames reach it" in page and path.exists()
        whole_page(c, "/backtest?run=1")
    # a backtest kept under other weights
    from dataclasses import replace

    from consumers.studio.kept import _ResultUnpickler

    (pickled,) = (data / "prepared").glob("*.pickle")
    with pickled.open("rb") as f:
        result = _ResultUnpickler(f).load()
    pickled.write_bytes(pickle.dumps(replace(result, weights_sha256="0" * 64)))
    app = create_app(config)
    with TestClient(app, base_url=BASE) as c:
        assert SUMMARY.search(c.get("/backtest?run=1").text) is not None  # read from disk
        studio = app.state.studio
        assert not studio.store.check_kept_backtest(studio.scorer, "clipguard-demo")
        assert not pickled.exists()
        assert studio.store.check_kept_backtest(studio.scorer, "clipguard-demo")  # none left
        whole_page(c, "/backtest?run=1")
    with pickled.open("rb") as f:
        assert _ResultUnpickler(f).load().weights_sha256 == result.weights_sha256


def test_a_page_waits_for_an_answer_that_is_nearly_ready() -> None:
    """Past its first wait, a page waits on for work whose progress says it ends within the
    budget, and shows the progress line at once for work that will not."""
    import contextvars
    import time

    from consumers.studio.preparing import PAGE_BUDGET_S, NotReady, Preparation, page_budget

    def job(seconds: float) -> Any:
        def make(progress: Any) -> str:
            for n in range(10):
                progress(n + 1)
                time.sleep(seconds / 10)
            return f"done in {seconds}"

        return make

    prep = Preparation()
    try:
        asked = time.monotonic()
        assert prep.get("quick", "a quick answer", 10, job(0.6), 0.3) == "done in 0.6"
        assert 0.5 < time.monotonic() - asked < PAGE_BUDGET_S + 0.5  # + a loaded machine's delays
        asked = time.monotonic()
        with pytest.raises(NotReady) as e:
            prep.get("slow", "a slow answer", 10, job(8.0), 0.3)
        assert time.monotonic() - asked < 0.9  # its progress said: not within the budget
        assert "a slow answer" in e.value.status

        def page() -> None:  # two answers asked by one page share its budget
            page_budget()
            assert prep.get("first", "a first answer", 10, job(0.6), 0.3) == "done in 0.6"
            with pytest.raises(NotReady):
                prep.get("second", "a second answer", 10, job(1.0), 0.3)

        asked = time.monotonic()
        contextvars.copy_context().run(page)
        assert time.monotonic() - asked < PAGE_BUDGET_S + 0.5
    finally:
        prep.close()
