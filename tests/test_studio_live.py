"""The studio over stored traffic in a real headless Chromium (Debian's, driven by Playwright),
served by uvicorn: the count under Tune's threshold slider follows the slider without a page
load, asked once the slider rests (debounced), and equals the store backtest at that
threshold computed here on its own; the store's incidents queued for review, and one
incident's timeline with its thumbnails. Screenshots saved in the tmp folder (and in
$CLIPGUARD_STUDIO_SHOTS when set)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from consumers.studio import StudioConfig, create_app
from tests.studio_fixtures import (
    CHROMIUM,
    backtest_at,
    free_port,
    make_policies,
    serve,
    synthetic_store,
)

pytest.importorskip("pipeline.store")
playwright_api = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("CI"),
    reason="needs Debian's chromium (make test installs it where it can)",
)


class Served:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.policies = make_policies(root)
        self.store = synthetic_store(root, self.policies, streams=8, frames=240)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    s = Served(tmp_path_factory.mktemp("studio-live"))
    config = StudioConfig(
        policies_dir=s.policies, data_dir=s.root / "data", store=s.store, port=s.port, user="li"
    )
    server, thread = serve(create_app(config), s.port)
    yield s
    server.should_exit = True  # type: ignore[attr-defined]
    thread.join(timeout=30)  # type: ignore[attr-defined]


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(30_000)
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    context.close()
    assert errors == []


def _shot(page: Any, tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
    extra = os.environ.get("CLIPGUARD_STUDIO_SHOTS")
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(extra) / path.name)


def test_slider_count_follows_the_backtest(served: Served, page: Any, tmp_path: Path) -> None:
    expect = playwright_api.expect
    asked: list[str] = []
    page.on("request", lambda r: asked.append(r.url) if "/tune/count" in r.url else None)
    page.goto(served.url + "/policies/red-triangle/tune")
    frames, incidents = backtest_at(served.policies, served.store, 0.63, tmp_path)
    expect(page.locator("#stored-passing")).to_have_text(str(frames))
    expect(page.locator("#live-incidents")).to_have_text(str(incidents))
    page.wait_for_timeout(400)  # the count asked for on load has come back
    page.evaluate("window.notReloaded = true")
    asked.clear()
    slider = page.locator("#threshold-slider")
    for value in ("0.5", "0.45", "0.4", "0.35", "0.3"):  # quicker than the debounce
        slider.fill(value)
    frames, incidents = backtest_at(served.policies, served.store, 0.3, tmp_path)
    expect(page.locator("#live-status")).to_have_text("at 0.3")
    expect(page.locator("#stored-passing")).to_have_text(str(frames))
    expect(page.locator("#live-incidents")).to_have_text(str(incidents))
    assert len(asked) == 1 and "threshold=0.3" in asked[0]  # one request, for where it rested
    assert page.evaluate("window.notReloaded") is True  # no page load
    _shot(page, tmp_path, "tune-live")
    slider.fill("0.7")
    frames, incidents = backtest_at(served.policies, served.store, 0.7, tmp_path)
    expect(page.locator("#live-status")).to_have_text("at 0.7")
    expect(page.locator("#stored-passing")).to_have_text(str(frames))
    expect(page.locator("#live-incidents")).to_have_text(str(incidents))


def test_store_incident_timeline(served: Served, page: Any, tmp_path: Path) -> None:
    expect = playwright_api.expect
    page.goto(served.url + "/review")
    page.click("#queue-store button")
    page.wait_for_url("**/review?imported=*")
    queued = int(page.locator("#imported").inner_text().split()[0])
    assert queued > 0 and page.locator("#origin-store").inner_text() == str(queued)
    page.locator("a.open-incident").first.click()
    figure = page.locator("#timeline")
    expect(figure).to_have_attribute("data-origin", "store")
    assert int(figure.get_attribute("data-points") or 0) > 20  # 10 s each side at 2 fps
    expect(page.locator("#timeline svg polyline.score")).to_have_count(1)
    assert page.locator("#cutoff-line").get_attribute("data-value") == "0.63"
    images = page.locator("#timeline-thumbs img")
    assert images.count() >= 5
    assert all(images.nth(n).evaluate("i => i.naturalWidth") > 0 for n in range(images.count()))
    first = images.first
    assert "blur" in (first.get_attribute("class") or "")
    first.click()
    assert "revealed" in (first.get_attribute("class") or "")
    page.locator("input[value=incorrect]").check()
    page.locator("button", has_text="Save").click()
    expect(page.locator(".verdict")).to_contain_text("Marked incorrect by li")
    expect(page.locator("#timeline")).to_be_visible()  # back on the incident's own page
    _shot(page, tmp_path, "incident-timeline")
