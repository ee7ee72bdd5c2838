"""The policy studio in a real headless Chromium (Debian's, driven by Playwright) against the
real app served by uvicorn: the flows a policy author goes through. Each test saves a
screenshot of its page in its tmp folder (and in $CLIPGUARD_STUDIO_SHOTS when set)."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from consumers.studio import StudioConfig, create_app
from pipeline.policies.bundled import DEMO_POLICIES
from tests.studio_fixtures import CHROMIUM, PEAKS, VIDEO_SECONDS, make_incidents, make_policies

playwright_api = pytest.importorskip("playwright.sync_api")
playwright_api.expect.set_options(timeout=60_000)  # the first scoring loads the model
pytestmark = pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("CI"),
    reason="needs Debian's chromium (make test installs it where it can)",
)


class Served:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.policies = make_policies(root)
        self.flags = make_incidents(root)
        self.data = root / "data"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    import uvicorn

    s = Served(tmp_path_factory.mktemp("studio"))
    config = StudioConfig(
        policies_dir=s.policies, data_dir=s.data, incidents=s.flags, port=s.port, user="alice"
    )
    server = uvicorn.Server(
        uvicorn.Config(create_app(config), host="127.0.0.1", port=s.port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the studio did not start"
        time.sleep(0.05)
    yield s
    server.should_exit = True
    thread.join(timeout=30)


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(60_000)
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.on(
        "console",
        lambda m: errors.append(m.text) if m.type == "error" and "400" not in m.text else None,
    )
    yield pg
    context.close()
    assert errors == []  # no script error, no failed resource (a refused form aside)


def shot(page: Any, tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
    extra = os.environ.get("CLIPGUARD_STUDIO_SHOTS")
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(extra) / path.name)


def test_policies_page_lists_every_policy(served: Served, page: Any, tmp_path: Path) -> None:
    page.goto(served.url + "/")
    red = page.locator("#policy-red-triangle")
    spam = page.locator("#policy-spam-text")
    assert red.locator(".version").inner_text() == "1"
    assert red.locator(".mode").inner_text() == "enforce"
    assert spam.locator(".mode").inner_text() == "shadow"
    assert red.locator(".lint").inner_text() == "ok"
    assert red.locator(".examples").inner_text().strip() == "8/8 pass"
    assert spam.locator(".examples").inner_text().strip() == "7/7 pass"
    shot(page, tmp_path, "policies")


def _line_col(text: str, needle: str) -> tuple[int, int]:
    for number, line in enumerate(text.splitlines(), 1):
        if needle in line:
            return number, line.index(needle) + 1
    raise AssertionError(needle)


def test_editor_shows_a_yaml_error_at_its_line(served: Served, page: Any, tmp_path: Path) -> None:
    page.goto(served.url + "/policies/red-triangle/edit")
    original = (served.policies / "red-triangle.yaml").read_text()
    area = page.locator("#yaml")
    assert area.input_value() == original
    broken = original.replace("threshold: 0.63", "threshold: 5.5")
    line, _ = _line_col(broken, "threshold: 5.5")
    col = _line_col(broken, "threshold: 5.5")[1] + len("threshold: ")
    area.fill(broken)
    problem = page.locator("#problems li").first
    playwright_api.expect(problem).to_contain_text(f"line {line}, column {col}: labels.0.threshold")
    playwright_api.expect(page.locator(f"#gutter-{line}")).to_have_class("err")
    playwright_api.expect(page.locator("#lint-status")).to_have_text("1 problem")
    shot(page, tmp_path, "edit-error")
    area.fill(broken.replace("threshold: 5.5", "threshold: 0.63"))
    playwright_api.expect(page.locator("#lint-status")).to_have_text("No problems")
    playwright_api.expect(page.locator("#problems li")).to_have_count(0)
    assert (served.policies / "red-triangle.yaml").read_text() == original  # nothing saved

    # the same label's negatives, edited as a list and put into the YAML
    page.click("#lists summary")
    lists = page.locator("fieldset.label-lists[data-label=red-triangle]")
    negatives = lists.locator("textarea.negatives")
    negatives.fill(negatives.input_value() + "\na red kite: drawn")
    lists.locator("button.apply-lists").click()
    playwright_api.expect(lists.locator(".lists-status")).to_have_text("applied to the text above")
    playwright_api.expect(page.locator("#lint-status")).to_have_text("No problems")
    label = yaml.safe_load(area.input_value())["labels"][0]
    assert label["negatives"][-1] == "a red kite: drawn"
    assert label["negatives"][:-1] == yaml.safe_load(original)["labels"][0]["negatives"]
    assert label["threshold"] == 0.63
    shot(page, tmp_path, "edit-lists")
    assert (served.policies / "red-triangle.yaml").read_text() == original  # still not saved


def test_try_scores_an_uploaded_image_and_video(served: Served, page: Any, tmp_path: Path) -> None:
    page.goto(served.url + "/policies/red-triangle/try")
    page.set_input_files("#try-file", str(served.policies / "examples" / "red-triangle-1.png"))
    page.click("#try-form button")
    cell = page.locator("#try-result table.frames tbody td.hit")
    playwright_api.expect(cell).to_contain_text("top prompt:")
    playwright_api.expect(cell).to_contain_text("flags")
    page.set_input_files("#try-file", str(served.root / "clip.mp4"))
    page.click("#try-form button")
    playwright_api.expect(page.locator("#try-result figure.timeline svg polyline")).to_have_count(1)
    rows = page.locator("#try-result table.frames tbody tr").count()
    assert rows == 2 * VIDEO_SECONDS  # 2 frames a second
    # the red triangle is on screen from 1 s to 2 s: the temporal rule opens one incident there
    incident = page.locator("#try-result ul.incidents li")
    playwright_api.expect(incident).to_have_count(1)
    playwright_api.expect(incident).to_contain_text("red-triangle from 1.")
    shot(page, tmp_path, "try")
    uploads = list((served.data / "uploads").iterdir())
    assert len(uploads) == 2 and all(p.parent == served.data / "uploads" for p in uploads)


def _example_points() -> tuple[list[float], list[float]]:
    """The red-triangle label's score on each regression example, through `policy explain`
    (decoded in this process, encoded by the reference encoder): not the studio's path."""
    from pipeline.models import load_model
    from pipeline.policies import load_policy
    from pipeline.policies.tools import ImageExplanation, explain

    lp = load_policy(DEMO_POLICIES / "red-triangle.yaml")
    model = load_model("clipguard-demo")
    pos, neg = [], []
    for example in lp.policy.examples:
        result = explain(lp, model, lp.resolve(example.path))
        assert isinstance(result, ImageExplanation)
        (pos if example.expect == "flag" else neg).append(result.labels[0].score)
    return pos, neg


def _expected(pos: list[float], neg: list[float], t: float) -> tuple[str, str]:
    tp = sum(s >= t for s in pos)
    fp = sum(s >= t for s in neg)
    return f"{tp / (tp + fp):.3f}", f"{tp / len(pos):.3f}"


def test_tune_threshold_and_review_labels(served: Served, page: Any, tmp_path: Path) -> None:
    pos, neg = _example_points()
    everything = sorted(pos + neg)
    # a threshold just above the second-lowest positive: recall drops below 1
    t = round(sorted(pos)[1] + 0.0005, 3)
    assert _expected(pos, neg, t) != _expected(pos, neg, 0.63)
    assert everything  # scores were computed

    page.goto(served.url + "/policies/red-triangle/tune")
    assert page.locator("#reviewed-total").inner_text() == "0"
    page.locator("#threshold-slider").fill(str(t))
    precision, recall = _expected(pos, neg, t)
    playwright_api.expect(page.locator("#precision")).to_have_text(precision)
    playwright_api.expect(page.locator("#recall")).to_have_text(recall)
    assert page.locator("#threshold").input_value() == str(t)

    # label three incidents on the review page
    page.goto(served.url + "/review")
    sections = page.locator("section.incident")
    assert sections.count() == 3
    img = sections.first.locator("img").first
    assert "blur" in (img.get_attribute("class") or "")
    img.click()
    assert "revealed" in (img.get_attribute("class") or "")
    verdicts = ("correct", "correct", "incorrect")
    for n, verdict in enumerate(verdicts):
        section = page.locator("section.incident").nth(n)
        section.locator(f"input[value={verdict}]").check()
        section.locator("input[name=note]").fill(f"note {n}")
        section.locator("button").click()
        page.wait_for_load_state()
        playwright_api.expect(
            page.locator("section.incident").nth(n).locator(".verdict")
        ).to_contain_text(f"Marked {verdict} by alice")
    playwright_api.expect(page.locator("#count-correct")).to_have_text("2")
    playwright_api.expect(page.locator("#count-incorrect")).to_have_text("1")
    page.locator("section.incident").first.locator("img").nth(1).click()
    shot(page, tmp_path, "review")

    # Tune counts them and uses them as ground truth
    page.goto(served.url + "/policies/red-triangle/tune")
    playwright_api.expect(page.locator("#reviewed-total")).to_have_text("3")
    page.locator("#threshold-slider").fill(str(t))
    pos3 = pos + [p for p, v in zip(PEAKS, verdicts, strict=True) if v == "correct"]
    neg3 = neg + [p for p, v in zip(PEAKS, verdicts, strict=True) if v == "incorrect"]
    precision, recall = _expected(pos3, neg3, t)
    playwright_api.expect(page.locator("#precision")).to_have_text(precision)
    playwright_api.expect(page.locator("#recall")).to_have_text(recall)
    queued = sum(p >= t for p in PEAKS)
    playwright_api.expect(page.locator("#queue")).to_have_text(str(queued))
    shot(page, tmp_path, "tune")


def test_promote_shadow_to_enforce(served: Served, page: Any, tmp_path: Path) -> None:
    path = served.policies / "spam-text.yaml"
    before = path.read_text()
    page.goto(served.url + "/policies/spam-text/promote")
    playwright_api.expect(page.locator("pre.diff .add").first).to_contain_text("+")
    assert "+mode: enforce" in page.locator("pre.diff").inner_text()
    page.click("#confirm")  # no note
    playwright_api.expect(page.locator("#promote-error")).to_contain_text("write a note")
    assert path.read_text() == before
    shot(page, tmp_path, "promote")
    page.fill("#note", "regression examples pass; shadow counts looked right")
    page.click("#confirm")
    page.wait_for_url("**/audit?policy=spam-text")
    entry = page.locator("tr.entry").first
    playwright_api.expect(entry).to_contain_text("promote")
    playwright_api.expect(entry).to_contain_text("v1 → v2")
    playwright_api.expect(entry).to_contain_text("regression examples pass")
    now = yaml.safe_load(path.read_text())
    assert (now["mode"], now["version"]) == ("enforce", 2)
    audit = (served.data / "audit.jsonl").read_text().splitlines()
    assert any('"policy": "spam-text"' in line and '"to_version": 2' in line for line in audit)
    assert (served.data / "history" / "spam-text" / "v2.yaml").read_text() == path.read_text()
    shot(page, tmp_path, "audit")
    page.goto(served.url + "/")
    assert page.locator("#policy-spam-text .mode").inner_text() == "enforce"
    assert page.locator("#policy-spam-text .version").inner_text() == "2"
