"""Tune's live count over stored traffic: for any threshold, the frames it passes and the
incidents it opens are those of the store backtest run on the policy file edited to that
threshold (pipeline.store.backtest, computed here on its own), on a store of many streams;
the count answers hostile parameters with clear refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
from starlette.testclient import TestClient

from consumers.studio import StudioConfig, create_app
from tests.studio_fixtures import backtest_at, make_policies, synthetic_store

pytest.importorskip("pipeline.store")

BASE = "http://127.0.0.1:8600"
COUNT = "/policies/red-triangle/tune/count"


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("studio-traffic")
    policies = make_policies(root)
    red = policies / "red-triangle.yaml"  # a margin rule too: passing needs both
    red.write_text(
        red.read_text().replace("    threshold: 0.55", "    threshold: 0.55\n    margin: 0.02")
    )
    return policies, synthetic_store(root, policies, streams=12, frames=240)


def test_live_count_is_the_backtest_at_that_threshold(
    stored: tuple[Path, Path], tmp_path: Path
) -> None:
    policies, store = stored
    config = StudioConfig(policies_dir=policies, data_dir=tmp_path / "data", store=store)
    seen: dict[float, tuple[int, int]] = {}
    with TestClient(create_app(config), base_url=BASE) as c:
        page = c.get("/policies/red-triangle/tune").text
        assert "of 2880 stored frames reach it" in page  # 12 streams of 240 frames
        for t in (0.15, 0.3, 0.45, 0.55, 0.7):
            got = c.get(COUNT, params={"label": "red-triangle", "threshold": t}).json()
            want = backtest_at(policies, store, t, tmp_path)
            assert (got["frames"], got["incidents"]) == want, t
            assert got["total"] == 2880
            seen[t] = want
        assert f'id="live-incidents" class="live">{seen[0.55][1]}<' in page  # the first render
    assert len(set(seen.values())) == 5  # each threshold gave other figures: the check can fail


def test_count_refuses_what_it_cannot_count(stored: tuple[Path, Path], tmp_path: Path) -> None:
    policies, store = stored
    config = StudioConfig(policies_dir=policies, data_dir=tmp_path / "data", store=store)
    with TestClient(create_app(config), base_url=BASE) as c:
        assert c.get(COUNT, params={"label": "red-triangle", "threshold": "nan"}).status_code == 422
        assert c.get(COUNT, params={"label": "red-triangle", "threshold": 3}).status_code == 422
        assert c.get(COUNT, params={"label": "nope", "threshold": 0.5}).status_code == 404
        assert c.get(COUNT, params={"label": "x" * 65, "threshold": 0.5}).status_code == 422
        assert c.get("/policies/nope/tune/count?label=a&threshold=0.5").status_code == 404
    bare = StudioConfig(policies_dir=policies, data_dir=tmp_path / "bare")
    with TestClient(create_app(bare), base_url=BASE) as c:
        answer = c.get(COUNT, params={"label": "red-triangle", "threshold": 0.5})
        assert answer.status_code == 404 and answer.json() == {"error": "no store connected"}


def test_the_store_answers_are_ready_before_the_first_page(
    stored: tuple[Path, Path], tmp_path: Path
) -> None:
    import time

    policies, store = stored
    config = StudioConfig(policies_dir=policies, data_dir=tmp_path / "data", store=store)
    app = create_app(config)
    with TestClient(app, base_url=BASE) as c:
        studio = app.state.studio
        deadline = time.monotonic() + 30
        while studio.warmer.warmed is None:
            assert time.monotonic() < deadline, "the store's answers were never prepared"
            time.sleep(0.05)
        assert studio.store.traffic_cache.made == 2  # one pass for each policy
        assert "of 2880 stored frames reach it" in c.get("/policies/red-triangle/tune").text
        assert c.get(COUNT, params={"label": "red-triangle", "threshold": 0.4}).status_code == 200
        assert "frames judged in" in c.get("/backtest?run=1").text
        assert studio.store.traffic_cache.made == 2  # nothing computed again
        assert not studio.warmer.warm_once()  # nothing changed since
