"""The studio's start with a store: what does not depend on the stored frames (the model, the
compiled prompts, the regression examples' scores) is ready before it serves, said on the
console; with ``prepare_store`` the store's answers are too, so the first Tune and Backtest
pages are whole. Tune's pass over the stored traffic fills the store's cosine cache with every
prompt row the backtest of the same frames reads: the backtest that follows reads no
embedding and gives the uncached backtest's result."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from consumers.studio import StudioConfig, create_app
from consumers.studio.warm import prepared_examples
from tests.studio_fixtures import make_policies, synthetic_store, whole_page

pytest.importorskip("pipeline.store")

BASE = "http://127.0.0.1:8600"


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("studio-startup")
    policies = make_policies(root)
    return policies, synthetic_store(root, policies, streams=6, frames=200)


def test_models_and_examples_are_ready_before_the_studio_serves(
    stored: tuple[Path, Path], tmp_path: Path
) -> None:
    policies, store = stored
    said: list[str] = []
    config = StudioConfig(policies_dir=policies, data_dir=tmp_path / "data", store=store, warm=True)
    app = create_app(config, say=said.append)
    with TestClient(app, base_url=BASE):
        studio = app.state.studio
        for pf in studio.library.files():
            assert pf.loaded is not None
            # answered at once (a wait of 0 s raises NotReady for what is not ready)
            scores = prepared_examples(studio, pf.loaded, 0.0)
            assert len(scores) >= len(pf.loaded.policy.examples) > 0
    lines = "\n".join(said)
    assert "store open in" in lines
    assert "model clipguard-demo loaded in" in lines
    assert "red-triangle v1: prompts compiled, 8 examples scored" in lines
    assert "spam-text v1: prompts compiled" in lines
    assert said[-1].startswith("prepared in") and said[-1].endswith("serving")
    assert list((tmp_path / "data" / "prepared").glob("*.json"))  # kept for a restart


def test_prepare_store_serves_whole_answers_from_the_first_request(
    stored: tuple[Path, Path], tmp_path: Path
) -> None:
    policies, store = stored
    said: list[str] = []
    config = StudioConfig(
        policies_dir=policies, data_dir=tmp_path / "data", store=store, prepare_store=True
    )
    app = create_app(config, say=said.append)
    with TestClient(app, base_url=BASE) as c:
        assert app.state.studio.warmer.warmed is not None
        tune = c.get("/policies/red-triangle/tune").text
        assert "stored-passing" in tune and "preparing" not in tune
        backtest = c.get("/backtest?run=1").text
        assert "frames judged in" in backtest
    assert any("preparing the store's answers" in line for line in said)


def _backtest(policies: Path, store: Path, compiled: Path, cache: Any) -> dict[str, Any]:
    from pipeline.models import load_model
    from pipeline.policies import load_policies
    from pipeline.policies.tools.judging import compile_policies
    from pipeline.store import backtest, open_store

    model = load_model("clipguard-demo")
    sets = compile_policies(load_policies([policies]), model, compiled)
    result = backtest(
        sets, open_store(store), model=model.name, weights_sha256=model.fingerprint(), cache=cache
    )
    out: dict[str, Any] = result.to_json()
    out.pop("seconds")
    return out


def test_tune_fills_the_cosine_cache_the_backtest_reads(tmp_path: Path) -> None:
    from pipeline.store.cosinecache import CosineCache

    policies = make_policies(tmp_path)
    store = synthetic_store(tmp_path, policies, streams=4, frames=150)
    folder = store / "_cache" / "cosines"
    assert not folder.exists()
    config = StudioConfig(
        policies_dir=policies, data_dir=tmp_path / "data", store=store, warm=False
    )
    with TestClient(create_app(config), base_url=BASE) as c:
        assert "stored-passing" in whole_page(c, "/policies/red-triangle/tune")
    assert list(folder.glob("*.cos"))
    cache = CosineCache(folder)
    warm = _backtest(policies, store, tmp_path / "data" / "compiled", cache)
    assert cache.hits > 0 and cache.misses == 0  # every row the backtest read was there
    cold = _backtest(policies, store, tmp_path / "data" / "compiled", False)
    assert warm == cold
    assert warm["incidents"]  # a result that can differ
