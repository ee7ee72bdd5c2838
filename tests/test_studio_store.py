"""The studio over a real frame store (skipped where this build has no ``pipeline.store``): a
demo video scanned into a store with ``clipguard scan --store``, then the Backtest page after
an edit that should remove the scan's incident, and search by text."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from consumers.studio import StudioConfig, create_app
from tests.studio_fixtures import scan_into_store, whole_page

pytest.importorskip("pipeline.store")

BASE = "http://127.0.0.1:8600"


@pytest.fixture(scope="module")
def scanned(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return scan_into_store(tmp_path_factory.mktemp("studio-store"))


def test_backtest_page_shows_what_an_edit_removes(
    scanned: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    policies, store, out = scanned
    flags = [json.loads(x) for x in (out / "flags.jsonl").read_text().splitlines()]
    live = {(f["label"], f["start_ts"]) for f in flags if f["state"] == "closed"}
    red = [start for label, start in live if label == "red-triangle"]
    assert len(red) == 1  # the scan itself flagged the triangle once

    edited = tmp_path / "policies"
    edited.mkdir()
    for f in policies.iterdir():
        target = edited / f.name
        if f.is_dir():
            target.symlink_to(f)
        else:
            target.write_text(f.read_text())
    red_file = edited / "red-triangle.yaml"
    red_file.write_text(red_file.read_text().replace("threshold: 0.63", "threshold: 0.99"))
    config = StudioConfig(policies_dir=edited, data_dir=tmp_path / "data", store=store)
    with TestClient(create_app(config), base_url=BASE) as c:
        page = c.get("/backtest").text
        assert "stored frames in" in page
        page = whole_page(c, "/backtest?run=1")
        summary = re.search(r'id="backtest-summary">(.*?)</p>', page, re.S)
        assert summary is not None
        text = re.sub(r"<[^>]+>", "", summary.group(1))
        assert "1 removed" in text and "0 added" in text
        # the scan's own red-triangle incident is the deployed one; the edit loses it
        section = page.split("<h2>red-triangle/red-triangle", 1)[1].split("</section>", 1)[0]
        assert f"0 incidents (deployed: {len(red)})" in section
        peak = re.search(r'src="(/store/peak\.jpg\?[^"]+)"', page)
        assert peak is not None
        picture = c.get(peak.group(1).replace("&amp;", "&"))
        assert picture.status_code == 200 and picture.content[:2] == b"\xff\xd8"
        listed = c.get("/").text
        assert "+0 \u22121" in listed  # red-triangle's last backtest, on the Policies page
        promote = c.get("/policies/red-triangle/promote").text
        assert "0 incidents, 0 added, 1 removed, 0 changed" in promote


def test_search_finds_the_triangle_frames_first(
    scanned: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    policies, store, _ = scanned
    config = StudioConfig(policies_dir=policies, data_dir=tmp_path / "data", store=store)
    with TestClient(create_app(config), base_url=BASE) as c:
        page = c.get("/search", params={"q": "a red triangle"}).text
        times = [float(t) for t in re.findall(r"at (\d+\.\d) s</figcaption>", page)]
        assert times and 1.0 <= times[0] < 2.0  # the triangle is on screen from 1 s to 2 s
        frame = re.search(r'src="(/store/frame/[0-9a-f-]+\.jpg)"', page)
        assert frame is not None
        assert c.get(frame.group(1)).content[:2] == b"\xff\xd8"
        assert c.get("/store/frame/..%2Fx.jpg").status_code == 404
        # an uploaded picture of a red triangle finds the stored triangle frames first
        picture = (policies / "examples" / "red-triangle-1.png").read_bytes()
        headers = {"Origin": BASE, "X-Filename": "triangle.png"}
        page = c.post("/policies/red-triangle/try", content=picture, headers=headers).text
        nearest = page.split('id="nearest"', 1)[1]
        times = [float(t) for t in re.findall(r"at (\d+\.\d) s</figcaption>", nearest)]
        assert times and 1.0 <= times[0] < 2.0


def test_tune_shows_unlabelled_stored_traffic(
    scanned: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    policies, store, out = scanned
    scores = [json.loads(x) for x in (out / "scores.jsonl").read_text().splitlines()]
    config = StudioConfig(policies_dir=policies, data_dir=tmp_path / "data", store=store)
    with TestClient(create_app(config), base_url=BASE) as c:
        page = whole_page(c, "/policies/red-triangle/tune")
    data = json.loads(page.split('id="tune-data">', 1)[1].split("</script>", 1)[0])
    assert data["stored"] == len(scores) == 16  # 4 s at 4 frames a second
    assert len(data["unlabelled"]) == 16
    # the scan's own scores of the label, from its scores.jsonl: the same, within fp16 storage
    live = sorted(rec["scores"]["red-triangle/red-triangle"] for rec in scores)
    assert max(abs(a - b) for a, b in zip(live, data["unlabelled"], strict=True)) < 5e-3
    assert f"of {len(scores)} stored frames reach it" in page


def _queue_from_store(c: TestClient) -> str:
    """The Review page after queuing the store's incidents. A loaded machine may not have
    the store's backtest ready within the page's wait: the page then says it is queuing;
    once nothing is being prepared, asking again finds the answer made (kept once)."""
    queued = c.post("/store/queue", headers={"Origin": BASE})
    assert queued.status_code == 200  # followed the redirect to the Review page
    if "imported" in str(queued.url):
        return queued.text
    assert "queuing" in str(queued.url)
    deadline = time.monotonic() + 120
    while c.get("/store/preparing").json()["busy"]:
        assert time.monotonic() < deadline, "the store's incidents were never prepared"
        time.sleep(0.2)
    again = c.post("/store/queue", headers={"Origin": BASE})
    assert "imported" in str(again.url)
    return again.text


def test_queue_from_the_store_and_an_incident_timeline(
    scanned: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    policies, store, out = scanned
    flags = [json.loads(x) for x in (out / "flags.jsonl").read_text().splitlines()]
    closed = [f for f in flags if f["state"] == "closed"]
    config = StudioConfig(policies_dir=policies, data_dir=tmp_path / "data", store=store)
    with TestClient(create_app(config), base_url=BASE) as c:
        page = _queue_from_store(c)
        # the policy files are the ones the scan ran: the store finds what the scan flagged,
        # and what the shadow policy (spam-text) would have flagged, which no flag event says
        assert [f["policy"] for f in closed] == ["red-triangle"]
        assert 'id="imported">2 incidents queued' in page
        assert 'id="origin-store">2<' in page
        assert re.search(r'class="open-incident"><b>spam-text</b> v1', page)
        again = c.post("/store/queue", headers={"Origin": BASE}).text
        assert 'id="queue-total">2<' in again  # queued twice, kept once
        red = next(f for f in closed if f["label"] == "red-triangle")
        found = re.search(
            r'href="/review/([0-9a-f]{16})" class="open-incident"><b>red-triangle', page
        )
        assert found is not None
        incident = found.group(1)
        page = c.get(f"/review/{incident}").text
        assert 'data-origin="store"' in page and 'data-points="16"' in page  # 4 s at 4 fps
        assert f"peak {red['peak_score']:.3f}" in page
        thumbs = re.findall(r'src="(/timeline/[0-9a-f]{16}/timeline-[0-9a-f]{16}/\d+\.jpg)"', page)
        assert len(thumbs) >= 5
        assert all(c.get(t).content[:2] == b"\xff\xd8" for t in thumbs)
        assert c.get(f"/timeline/{incident}/timeline-..%2F/0.jpg").status_code == 404
        assert c.get("/review/0123456789abcdef").status_code == 404
    # the line: the label's score on each stored frame, as the scan scored it live
    saved = next((tmp_path / "data" / "thumbs" / incident).glob("timeline-*/timeline.json"))
    points = json.loads(saved.read_text())["points"]
    scores = [json.loads(x) for x in (out / "scores.jsonl").read_text().splitlines()]
    live = sorted((rec["ts"], rec["scores"]["red-triangle/red-triangle"]) for rec in scores)
    assert [t for t, _ in points] == pytest.approx([t for t, _ in live])
    assert max(abs(a[1] - b[1]) for a, b in zip(points, live, strict=True)) < 5e-3
