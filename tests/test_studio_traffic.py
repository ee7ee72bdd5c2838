"""Tune's live count over stored traffic: for any threshold, the frames it passes and the
incidents it opens are those of the store backtest run on the policy file edited to that
threshold (pipeline.store.backtest, computed here on its own), on a store of many streams;
the count answers hostile parameters with clear refusals."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from starlette.testclient import TestClient

from consumers.studio import StudioConfig, create_app
from tests.studio_fixtures import backtest_at, make_policies, synthetic_store, whole_page

pytest.importorskip("pipeline.store")

BASE = "http://127.0.0.1:8600"
COUNT = "/policies/red-triangle/tune/count"


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("studio-traffic")
    policies = make_policies(root)
    red = policies / "red-triangle.yaml"  # a margin rule too: passing needs both
    red.write_text(
        red.read_text().replace("    threshold: 0.63", "    threshold: 0.63\n    margin: 0.02")
    )
    return policies, synthetic_store(root, policies, streams=12, frames=240)


def test_live_count_is_the_backtest_at_that_threshold(
    stored: tuple[Path, Path], tmp_path: Path
) -> None:
    policies, store = stored
    config = StudioConfig(policies_dir=policies, data_dir=tmp_path / "data", store=store)
    seen: dict[float, tuple[int, int]] = {}
    with TestClient(create_app(config), base_url=BASE) as c:
        page = whole_page(c, "/policies/red-triangle/tune")
        assert "of 2880 stored frames reach it" in page  # 12 streams of 240 frames
        for t in (0.15, 0.3, 0.45, 0.63, 0.7):
            got = c.get(COUNT, params={"label": "red-triangle", "threshold": t}).json()
            want = backtest_at(policies, store, t, tmp_path)
            assert (got["frames"], got["incidents"]) == want, t
            assert got["total"] == 2880
            seen[t] = want
        assert f'id="live-incidents" class="live">{seen[0.63][1]}<' in page  # the first render
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


def test_pages_answer_at_once_while_the_store_answers_are_prepared(
    stored: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A page whose stored-traffic part is not ready within its wait shows the rest at once
    with a progress line (here the wait is nil: every first ask finds the work running), and
    the whole answer once it is ready; the queue from the store fills in when the backtest
    is done."""
    import time

    from consumers.studio import pages_review, pages_store, preparing

    monkeypatch.setattr(pages_review, "PAGE_WAIT_S", 0.0)
    monkeypatch.setattr(pages_store, "PAGE_WAIT_S", 0.0)
    monkeypatch.setattr(preparing, "PAGE_BUDGET_S", 0.0)
    policies, store = stored
    config = StudioConfig(
        policies_dir=policies, data_dir=tmp_path / "data", store=store, warm=False
    )

    def until_ready(c: TestClient) -> None:
        deadline = time.monotonic() + 60
        while c.get("/store/preparing").json()["busy"]:
            assert time.monotonic() < deadline, "the store's answers were never prepared"
            time.sleep(0.05)

    with TestClient(create_app(config), base_url=BASE) as c:
        page = c.get("/policies/red-triangle/tune").text
        assert 'id="preparing"' in page and 'data-preparing="/store/preparing"' in page
        assert "stored-passing" not in page and 'id="threshold-slider"' in page
        # what it waits for: the examples (the model loading) or the stored traffic
        assert re.search(
            r'data-waiting-for="red-triangle( v1 on stored traffic|&#39;s examples)"', page
        )
        assert "preparing red-triangle" in page  # and how far everything has got
        page = whole_page(c, "/policies/red-triangle/tune")
        assert "of 2880 stored frames reach it" in page and 'id="preparing"' not in page
        # the live count is ready from the same preparation
        assert c.get(COUNT, params={"label": "red-triangle", "threshold": 0.4}).status_code == 200

        page = c.get("/backtest?run=1").text
        assert 'id="preparing"' in page and "frames judged in" not in page
        until_ready(c)
        assert "frames judged in" in c.get("/backtest?run=1").text

    with TestClient(create_app(replace(config, data_dir=tmp_path / "d2")), base_url=BASE) as c:
        queued = c.post("/store/queue", headers={"Origin": BASE})
        assert queued.url.path == "/review" and "queuing=1" in str(queued.url)
        assert 'id="preparing"' in queued.text
        until_ready(c)
        page = c.get("/review").text
        found = int(page.split('id="origin-store">', 1)[1].split("<", 1)[0])
        _, incidents = backtest_at(policies, store, 0.63, tmp_path)
        assert found >= incidents > 0  # every red-triangle incident queued, and spam-text's


def _frame_points(policies: Path, store: Path, spans: list[tuple[str, float, float]], folder: Path):  # type: ignore[no-untyped-def]
    """red-triangle's (score, passes the margin rule) on every stored frame inside each span,
    read from the store's Parquet files and scored with the compiled policy here."""
    import numpy as np

    from pipeline.models import load_model
    from pipeline.policies import load_policies
    from pipeline.policies.compile import PolicyCompiler
    from pipeline.store import FrameFilter, open_store
    from pipeline.store.schema import embeddings_of

    model = load_model("clipguard-demo")
    compiled = PolicyCompiler(model, cache_dir=folder / "compiled").compile(
        load_policies([policies / "red-triangle.yaml"])
    )
    table = open_store(store).frames(
        FrameFilter(model=model.name), ("stream_id", "ts", "embedding")
    )
    streams = np.asarray(table.column("stream_id").to_pylist())
    ts = table.column("ts").to_numpy()
    judged = compiled.compiled.evaluate(embeddings_of(table.column("embedding")).astype(np.float32))
    out = []
    for stream, start, end in spans:
        inside = np.flatnonzero((streams == stream) & (ts >= start) & (ts <= end))
        assert len(inside) > 0
        out.append(
            [
                (float(judged.score[i, 0]), bool(judged.margin[i, 0] >= 0.02))
                for i in inside[np.argsort(ts[inside])]
            ]
        )
    return out


def test_tune_labels_are_the_stored_frames_of_reviewed_incidents(
    stored: tuple[Path, Path], tmp_path: Path
) -> None:
    """Three store incidents reviewed (two correct, one incorrect): Tune's labelled points are
    the scores of the stored frames inside each incident's span, and its precision and recall
    at the cutoff are those of these frames (with the regression examples)."""
    import html
    import json
    import time

    policies, store = stored
    config = StudioConfig(
        policies_dir=policies, data_dir=tmp_path / "data", store=store, warm=False
    )
    origin = {"Origin": BASE}
    with TestClient(create_app(config), base_url=BASE) as c:
        whole_page(c, "/policies/red-triangle/tune")
        c.post("/store/queue", headers=origin)
        deadline = time.monotonic() + 60
        while c.get("/store/preparing").json()["busy"]:
            assert time.monotonic() < deadline, "the store's incidents were never queued"
            time.sleep(0.05)
        found = re.findall(
            r'href="/review/([0-9a-f]{16})"', c.get("/review?policy=red-triangle").text
        )
        chosen = list(dict.fromkeys(found))[:3]
        verdicts = ("correct", "correct", "incorrect")
        for incident, verdict in zip(chosen, verdicts, strict=True):
            c.post(f"/review/{incident}", data={"verdict": verdict}, headers=origin)
        reviewed = {i.id: i for i in c.app.state.studio.incidents()}  # type: ignore[attr-defined]
        page = whole_page(c, "/policies/red-triangle/tune")
    payload = json.loads(
        html.unescape(page.split('id="tune-data">', 1)[1].split("</script>", 1)[0])
    )
    spans = [(reviewed[i].stream_id, reviewed[i].start_ts, reviewed[i].end_ts) for i in chosen]
    want = _frame_points(policies, store, spans, tmp_path)  # type: ignore[no-untyped-call]
    for incident, points, verdict in zip(chosen, want, verdicts, strict=True):
        side = payload["positives" if verdict == "correct" else "negatives"]
        got = [(p["score"], p["margin_ok"]) for p in side if incident in p["source"]]
        assert len(got) == len(points) > 1
        assert all(
            g[1] == w[1] and abs(g[0] - w[0]) < 1e-5 for g, w in zip(got, points, strict=True)
        )
    examples = {
        k: [p for p in payload[k] if p["source"].startswith("example:")]
        for k in ("positives", "negatives")
    }
    pos = [(p["score"], p["margin_ok"]) for p in examples["positives"]] + want[0] + want[1]
    neg = [(p["score"], p["margin_ok"]) for p in examples["negatives"]] + want[2]
    doc = yaml.safe_load((policies / "red-triangle.yaml").read_text())
    cutoff = float(doc["labels"][0]["threshold"])  # the slider starts at the file's threshold
    tp = sum(s >= cutoff and ok for s, ok in pos)
    fp = sum(s >= cutoff and ok for s, ok in neg)
    assert f'id="precision">{tp / (tp + fp):.3f}<' in page
    assert f'id="recall">{tp / len(pos):.3f}<' in page
