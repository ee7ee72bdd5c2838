"""Hash policies (``kind: hash``) in the studio, through the app over a real frame store and
real banks: a stream holding a known clip scanned with the policy deployed at 31 bits
(tests/knownclips.py), then the policy file edited down to 10 bits. The Policies page lists it
with its bank's entry counts and thresholds, the editor lints it (bank names against the banks
in force), Tune has a distance slider over the stored frames, the Backtest page runs the hash
backtest and shows the incident the edit changes with the bank entry matched, and the review
queue takes it.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from knownclips import ScannedStore, hash_policy
from starlette.testclient import TestClient

from consumers.studio import StudioConfig, create_app

pytest.importorskip("pipeline.store")

BASE = "http://127.0.0.1:8600"
SAME = {"Origin": BASE}


@pytest.fixture(scope="module")
def scanned(tmp_path_factory: pytest.TempPathFactory) -> ScannedStore:
    return ScannedStore(tmp_path_factory.mktemp("studio-hashes"))


@pytest.fixture
def client(scanned: ScannedStore, tmp_path: Path) -> Iterator[TestClient]:
    folder = tmp_path / "policies"
    hash_policy(folder, 2, 10)  # the file as it is now: stricter than the deployed 31 bits
    config = StudioConfig(
        policies_dir=folder,
        data_dir=tmp_path / "data",
        store=scanned.store,
        banks=(scanned.banks,),
        warm=False,
    )
    with TestClient(create_app(config), base_url=BASE) as c:
        yield c


def _text(fragment: str) -> str:
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", fragment))).strip()


def _line(text: str, key: str) -> int:
    """The 1-based line of ``text`` that starts with ``key``."""
    return next(n for n, line in enumerate(text.splitlines(), 1) if line.startswith(key))


def test_the_policies_page_lists_a_hash_policy(client: TestClient) -> None:
    page = client.get("/").text
    row = page.split('id="policy-known-clips"', 1)[1].split("</tr>", 1)[0]
    text = _text(row)
    assert "hash" in text and "enforce" in text
    assert "bank known : 1 entry (1 pdq, 0 vpdq, 0 md5)" in text
    assert re.search(r'class="distance">10<', row) and re.search(r'class="quality">50<', row)
    assert "matches within 10 of 256 bits (score ≥ 0.961)" in text
    assert "/policies/known-clips/try" not in row  # Try scores with a CLIP model
    assert 'class="good">ok<' in row  # lint


def test_the_editor_lints_a_hash_policy_with_the_banks_in_force(
    client: TestClient, scanned: ScannedStore
) -> None:
    page = client.get("/policies/known-clips/edit")
    assert page.status_code == 200 and "max_distance: 10" in html.unescape(page.text)
    text = (scanned.deployed / "known-clips.yaml").read_text()
    url = "/policies/known-clips/lint"
    ok = client.post(url, content=text.encode(), headers=SAME).json()
    assert ok == {"problems": []}
    gone = client.post(url, content=text.replace("[known]", "[known, gone]"), headers=SAME)
    (problem,) = gone.json()["problems"]
    assert (
        problem["line"] == _line(text, "banks:")
        and "no bank named 'gone' is loaded (banks: known)" in problem["message"]
    )
    far = client.post(
        url, content=text.replace("max_distance: 31", "max_distance: 300"), headers=SAME
    )
    (problem,) = far.json()["problems"]
    assert problem["line"] == _line(text, "max_distance:") and "max_distance" in problem["message"]
    # saving writes the next version, through the same validator
    base = re.search(r'name="base" value="([0-9a-f]{64})"', page.text)
    assert base is not None
    saved = client.post(
        "/policies/known-clips/save",
        data={"text": text.replace("max_distance: 31", "max_distance: 12"), "base": base.group(1)},
        headers=SAME,
    )
    assert saved.status_code == 200  # the redirect to the Policies page, followed
    assert re.search(r'class="distance">12<', saved.text)
    row = saved.text.split('id="policy-known-clips"', 1)[1].split("</tr>", 1)[0]
    assert re.search(r'class="version">3<', row)


def test_tune_shows_the_distance_slider(client: TestClient) -> None:
    page = client.get("/policies/known-clips/tune")
    assert page.status_code == 200
    assert 'id="distance-slider"' in page.text and 'id="distance-now">10<' in page.text
    assert "stored hashed frames match at it" in _text(page.text)


def test_the_backtest_page_runs_the_hash_backtest(client: TestClient) -> None:
    page = client.get("/backtest").text
    assert "hash policies" in page  # what the button will backtest
    page = client.get("/backtest?run=1").text
    summary = re.search(r'id="backtest-summary">(.*?)</p>', page, re.S)
    assert summary is not None, page
    text = _text(summary.group(1))
    # the deployed 31 bits found one incident; 10 bits finds a shorter one, overlapping it
    assert "1 incidents now, 1 with the deployed versions" in text
    assert "0 added" in text and "0 removed" in text and "1 changed" in text
    section = page.split("<h2>known-clips/match", 1)[1].split("</section>", 1)[0]
    assert "hash policy: PDQ similarity cutoff 0.961 (10 bits)" in _text(section)
    assert "bank known entry case-12" in _text(section)
    listed = client.get("/").text.split('id="policy-known-clips"', 1)[1].split("</tr>", 1)[0]
    assert "1 incidents: +0 \u22120 ~1" in _text(listed)
    # queued for review, with its entry; its page says there is no score timeline
    queued = client.post("/store/queue", headers=SAME)
    assert queued.status_code == 200 and 'id="imported">1 incidents queued' in queued.text
    found = re.search(r'href="/review/([0-9a-f]{16})" class="open-incident"', queued.text)
    assert found is not None
    review = client.get(f"/review/{found.group(1)}").text
    assert "no score timeline" in review
