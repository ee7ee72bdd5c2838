"""Review labels as the backtest's ground truth: clips scanned into a real store with
``clipguard scan --store``, incidents queued and marked in the policy studio (its own HTTP
routes write the labels, beside the store), then ``clipguard policy backtest`` scores the
edited and the deployed policies against them. The expected numbers come from the scan's own
flag events and the spans the test marked, counted here.

Also: a labels database an older studio wrote (labels naming only a hashed incident id, queue
ids hashing the source too) is read by the backtest as it is, and brought up to date by the
studio, its labels keeping their incidents; and an incident seen on the flags topic and in the
store is one review item."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from scanclips import clip, showing, write_clip
from starlette.testclient import TestClient

from consumers.cli import main
from consumers.studio import StudioConfig, create_app
from consumers.studio.incidents import incident_id
from tests.studio_fixtures import make_policies, whole_page

pytest.importorskip("pipeline.store")

BASE = "http://127.0.0.1:8600"
SAME = {"Origin": BASE}
RED = "red-triangle/red-triangle"
SPAM = "spam-text/spam-text"


def _run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


@pytest.fixture(scope="module")
def scanned(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two clips with a red triangle from 2 s to 5 s, one with SPAM from 3 s to 6 s and a clean
    one, scanned with the demo policies (spam-text in shadow mode) into a store."""
    base = tmp_path_factory.mktemp("store-labels")
    clips = base / "clips"
    write_clip(clips / "a.mp4", clip(8, showing("triangle", "red", 1), 2, 5, 11), "mp4")
    write_clip(clips / "b.mp4", clip(8, showing("triangle", "red", 3), 2, 5, 14), "mp4")
    write_clip(clips / "spam.mp4", clip(8, showing("SPAM", "yellow", 2), 3, 6, 12), "mp4")
    write_clip(clips / "clean.mp4", clip(6, None, 0, 0, 13), "mp4")
    policies = make_policies(base)
    out, store = base / "out", base / "store"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLIPGUARD_POLICY_CACHE", str(base / "pc"))
        code, _, err = _run(
            "scan",
            str(clips),
            "--policies",
            str(policies),
            "--out",
            str(out),
            "--store",
            str(store),
        )
    assert code == 0, err
    flags = [f for f in _lines(out / "flags.jsonl") if f["state"] == "closed"]
    streams = {Path(f["stream_id"]).name: f["stream_id"] for f in flags}
    assert sorted((Path(f["stream_id"]).name, f["policy"]) for f in flags) == [
        ("a.mp4", "red-triangle"),
        ("b.mp4", "red-triangle"),
    ]  # spam-text is in shadow mode: no flag event
    clean = str(Path(streams["a.mp4"]).with_name("clean.mp4"))
    return {"base": base, "policies": policies, "store": store, "flags": flags, "clean": clean}


def _copy(scanned: dict[str, Any], tmp_path: Path) -> tuple[Path, Path]:
    policies, store = tmp_path / "policies", tmp_path / "store"
    shutil.copytree(scanned["policies"], policies)
    shutil.copytree(scanned["store"], store)
    return policies, store


def _missed_incident(tmp_path: Path, stream: str) -> Path:
    """A flag event file with one red-triangle incident on the clean clip from 1 s to 3 s (a
    reviewer will say it is right: no policy version finds it, a miss)."""
    event = {
        "schema": "clipguard.flag/1",
        "event_id": "reported-by-hand",
        "state": "closed",
        "stream_id": stream,
        "policy": "red-triangle",
        "policy_version": 1,
        "label": "red-triangle",
        "severity": "medium",
        "action": "flag",
        "start_ts": 1.0,
        "end_ts": 3.0,
        "peak_score": 0.6,
        "peak_ts": 2.0,
        "threshold": 0.55,
        "margin": None,
        "top_prompt": "a red triangle",
        "model": "clipguard-demo",
        "source": stream,
    }
    path = tmp_path / "reported.jsonl"
    path.write_text(json.dumps(event) + "\n")
    return path


def _expected(incidents: list[dict[str, Any]], spans: list[tuple[str, float, float, str]]) -> Any:
    """(tp, fp, fn) of ``incidents`` against reviewed ``spans`` (stream, start, end, verdict),
    counted here from the rule the report states."""

    def meets(i: dict[str, Any], s: tuple[str, float, float, str]) -> bool:
        return i["stream_id"] == s[0] and i["start_ts"] <= s[2] and s[1] <= i["end_ts"]

    tp = sum(any(meets(i, s) and s[3] == "correct" for s in spans) for i in incidents)
    fp = sum(
        not any(meets(i, s) and s[3] == "correct" for s in spans)
        and any(meets(i, s) and s[3] == "incorrect" for s in spans)
        for i in incidents
    )
    fn = sum(s[3] == "correct" and not any(meets(i, s) for i in incidents) for s in spans)
    return tp, fp, fn


def test_backtest_scores_both_versions_against_studio_labels(
    scanned: dict[str, Any], tmp_path: Path
) -> None:
    policies, store = _copy(scanned, tmp_path)
    flags = scanned["flags"]
    by_clip = {Path(f["stream_id"]).name: f for f in flags}
    config = StudioConfig(
        policies_dir=policies,
        data_dir=tmp_path / "data",
        store=store,
        incidents=_missed_incident(tmp_path, scanned["clean"]),
        user="rita",
        warm=False,
    )
    verdicts: dict[str, str] = {}
    with TestClient(create_app(config), base_url=BASE) as c:
        assert c.post("/store/queue", headers=SAME).status_code == 200
        for name, verdict in (("a.mp4", "correct"), ("b.mp4", "incorrect")):
            f = by_clip[name]
            verdicts[incident_id(f["stream_id"], f["policy"], f["label"], f["start_ts"])] = verdict
        verdicts[incident_id(scanned["clean"], "red-triangle", "red-triangle", 1.0)] = "correct"
        queue = c.app.state.studio.queue  # type: ignore[attr-defined]
        spam = [i for i in queue.all() if i.policy == "spam-text"]
        assert len(spam) == 1  # the shadow policy's incident, found in the store
        verdicts[spam[0].id] = "unsure"
        for incident, verdict in verdicts.items():
            page = c.post(f"/review/{incident}", data={"verdict": verdict}, headers=SAME)
            assert page.status_code == 200
            assert f"Marked {verdict} by rita" in page.text
    # the labels live beside the store, where the backtest looks by default
    assert (store / "_labels.sqlite").is_file()
    assert not (tmp_path / "data" / "labels.sqlite3").exists()

    edited = tmp_path / "edited"
    shutil.copytree(policies, edited)
    red = edited / "red-triangle.yaml"
    red.write_text(red.read_text().replace("threshold: 0.63", "threshold: 0.99"))
    out = tmp_path / "bt"
    code, stdout, err = _run(
        "policy", "backtest", str(edited), "--store", str(store), "--out", str(out)
    )
    assert code == 0, err
    doc = json.loads((out / "backtest.json").read_text())
    review = doc["review"]
    assert review["labels_database"] == str(store / "_labels.sqlite")
    assert "true positive" in review["rule"]
    # ground truth: the spans marked, from the scan's flags and the reported miss
    spans = [
        (
            by_clip["a.mp4"]["stream_id"],
            by_clip["a.mp4"]["start_ts"],
            by_clip["a.mp4"]["end_ts"],
            "correct",
        ),
        (
            by_clip["b.mp4"]["stream_id"],
            by_clip["b.mp4"]["start_ts"],
            by_clip["b.mp4"]["end_ts"],
            "incorrect",
        ),
        (scanned["clean"], 1.0, 3.0, "correct"),
    ]
    red_review = review["labels"][RED]
    assert (red_review["labelled"], red_review["correct"], red_review["incorrect"]) == (3, 2, 1)
    assert red_review["unsure"] == 0 and red_review["outside"] == 0
    # deployed: what the scan flagged live (the policy set stored with the frames)
    tp, fp, fn = _expected(flags, spans)
    assert (tp, fp, fn) == (1, 1, 1)
    deployed = red_review["deployed"]
    assert (deployed["true_positives"], deployed["false_positives"]) == (tp, fp)
    assert deployed["false_negatives"] == fn
    assert deployed["precision"] == pytest.approx(tp / (tp + fp))
    assert deployed["recall"] == pytest.approx(1 / 2)  # one of the two correct spans caught
    # edited: the backtest's own incidents of the edited policy (none at 0.99)
    mine = [i for i in doc["incidents"] if f"{i['policy']}/{i['label']}" == RED]
    tp, fp, fn = _expected(mine, spans)
    assert (tp, fp, fn) == (0, 0, 2)
    e = red_review["edited"]
    assert (e["true_positives"], e["false_positives"], e["false_negatives"]) == (tp, fp, fn)
    assert e["precision"] is None and e["recall"] == 0.0
    # the shadow label: one unsure span, scored by neither version
    spam_review = review["labels"][SPAM]
    assert (spam_review["labelled"], spam_review["unsure"]) == (1, 1)
    for side in ("edited", "deployed"):
        s = spam_review[side]
        assert (s["true_positives"], s["false_positives"], s["false_negatives"]) == (0, 0, 0)
        assert s["unreviewed_incidents"] == 1
    # the HTML report and the summary say the same
    html = (out / "report.html").read_text()
    row = html.split('id="review-label-red-triangle-red-triangle"', 1)[1].split("</tr>", 1)[0]
    assert "0 / 0 / 2" in row and "1 / 1 / 1" in row and "0.500" in row
    assert "is a true positive" in html
    assert f"{RED}: 3 reviewed incidents: precision -, recall 0.000 (before 0.500, 0.500)" in stdout

    # the studio's Backtest page of the edited files scores against the same labels
    again = StudioConfig(policies_dir=edited, data_dir=tmp_path / "d2", store=store, warm=False)
    with TestClient(create_app(again), base_url=BASE) as c:
        page = whole_page(c, "/backtest?run=1")
    row = page.split(f'data-label="{RED}"', 1)[1].split("</tr>", 1)[0]
    assert re.findall(r"<td>([^<]*)</td>", row) == [
        RED,
        "3 (2 correct, 1 incorrect, 0 unsure)",
        "\u2014",  # no incident now: no precision
        "0.000",
        "0.500",
        "0.500",
    ]

    # --no-labels leaves them out; an explicit --labels that is not a labels database is refused
    code, _, _ = _run(
        "policy", "backtest", str(edited), "--store", str(store), "--out", str(out), "--no-labels"
    )
    assert code == 0 and "review" not in json.loads((out / "backtest.json").read_text())
    bogus = tmp_path / "bogus.sqlite"
    bogus.write_bytes(b"not a database at all" * 100)
    code, _, err = _run(
        "policy", "backtest", str(edited), "--store", str(store), "--labels", str(bogus)
    )
    assert code != 0 and "not a labels database" in err
    code, _, err = _run(
        "policy", "backtest", str(edited), "--store", str(store), "--labels", str(tmp_path / "no")
    )
    assert code != 0 and "no labels database there" in err


def _old_id(stream: str, source: str | None, policy: str, label: str, start: float) -> str:
    """How an older studio named an incident (its source hashed in)."""
    key = f"{stream}\0{source or ''}\0{policy}\0{label}\0{start:.6f}"
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]


def _old_database(path: Path, flags: list[dict[str, Any]], verdict: str) -> str:
    """A labels database as an older studio wrote it: the queue holds the first flag's
    incident under its old id, labelled ``verdict``; the old id."""
    f = flags[0]
    old = _old_id(f["stream_id"], f["source"], f["policy"], f["label"], f["start_ts"])
    data = {k: f[k] for k in ("stream_id", "source", "policy", "policy_version", "label")}
    data.update(
        {k: f[k] for k in ("severity", "action", "start_ts", "end_ts", "peak_ts", "peak_score")}
    )
    data.update(
        id=old,
        threshold=f["threshold"],
        top_prompt=f["top_prompt"],
        model=f["model"],
        origin="flags",
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path)
    db.executescript(
        """CREATE TABLE labels (incident TEXT PRIMARY KEY, policy TEXT NOT NULL,
            label TEXT NOT NULL, peak_score REAL NOT NULL, verdict TEXT NOT NULL CHECK
            (verdict IN ('correct', 'incorrect', 'unsure')), note TEXT NOT NULL,
            reviewer TEXT NOT NULL, at TEXT NOT NULL);
        CREATE TABLE incidents (id TEXT PRIMARY KEY, origin TEXT NOT NULL, policy TEXT NOT NULL,
            label TEXT NOT NULL, peak_score REAL NOT NULL, closed INTEGER NOT NULL,
            data TEXT NOT NULL);
        CREATE TABLE feed_offsets (topic TEXT NOT NULL, partition INTEGER NOT NULL,
            next INTEGER NOT NULL, PRIMARY KEY (topic, partition));"""
    )
    db.execute(
        "INSERT INTO incidents VALUES (?, 'flags', ?, ?, ?, 1, ?)",
        (old, f["policy"], f["label"], f["peak_score"], json.dumps(data)),
    )
    db.execute(
        "INSERT INTO labels VALUES (?, ?, ?, ?, ?, 'seen before', 'ola', '2026-01-01T00:00:00')",
        (old, f["policy"], f["label"], f["peak_score"], verdict),
    )
    db.commit()
    db.close()
    return old


def test_an_older_labels_database_is_read_and_brought_up_to_date(
    scanned: dict[str, Any], tmp_path: Path
) -> None:
    policies, store = _copy(scanned, tmp_path)
    flags = sorted(scanned["flags"], key=lambda f: f["stream_id"])  # a.mp4 first
    legacy = tmp_path / "data" / "labels.sqlite3"
    old = _old_database(legacy, flags, "correct")
    # the backtest reads it as it is (read-only): the label's span comes from the queue
    out = tmp_path / "bt"
    code, _, err = _run(
        "policy",
        "backtest",
        str(policies),
        "--store",
        str(store),
        "--out",
        str(out),
        "--labels",
        str(legacy),
    )
    assert code == 0, err
    red = json.loads((out / "backtest.json").read_text())["review"]["labels"][RED]
    assert (red["labelled"], red["correct"]) == (1, 1)
    assert red["deployed"]["true_positives"] == 1 and red["edited"]["true_positives"] == 1
    assert sqlite3.connect(legacy).execute("PRAGMA user_version").fetchone()[0] == 0

    # the studio copies it beside the store and brings it up to date
    config = StudioConfig(
        policies_dir=policies, data_dir=tmp_path / "data", store=store, warm=False
    )
    f = flags[0]
    new = incident_id(f["stream_id"], f["policy"], f["label"], f["start_ts"])
    assert new != old
    with TestClient(create_app(config), base_url=BASE) as c:
        studio = c.app.state.studio  # type: ignore[attr-defined]
        assert [i.id for i in studio.queue.all()] == [new]
        label = studio.labels.by_incident()[new]
        assert (label.verdict, label.note, label.reviewer) == ("correct", "seen before", "ola")
        assert (label.stream_id, label.start_ts, label.end_ts) == (
            f["stream_id"],
            f["start_ts"],
            f["end_ts"],
        )
        # the store finds the same incident again: still one item, still the flags' one
        page = c.post("/store/queue", headers=SAME).text
        assert 'id="origin-flags">1<' in page and 'id="origin-store">2<' in page
        assert 'id="queue-total">3<' in page  # a.mp4 once, b.mp4, the shadow spam incident
        assert 'id="count-correct">1<' in page
        kept = studio.queue.get(new)
        assert kept.origin == "flags" and kept.source == f["source"]
    db = sqlite3.connect(store / "_labels.sqlite")
    assert db.execute("PRAGMA user_version").fetchone()[0] == 1
    assert db.execute("SELECT count(*) FROM labels WHERE incident = ?", (old,)).fetchone() == (0,)
