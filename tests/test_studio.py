"""The policy studio through Starlette's test client: access rules, uploads, writes as new
versions with history and audit, the review queue, the hand-off export. The browser flows are
in tests/test_studio_browser.py."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from starlette.testclient import TestClient

from consumers.studio import StudioConfig, create_app
from consumers.studio.handoff import HandoffDocument
from consumers.studio.incidents import read_incidents
from pipeline.errors import ConfigError, PolicyError
from pipeline.policies.bundled import DEMO_POLICIES
from pipeline.policies.tools import lint_text
from tests.studio_fixtures import make_incidents, make_policies

BASE = "http://127.0.0.1:8600"
SAME = {"Origin": BASE}

PLAIN = """\
id: plain
version: 1
description: "A <script>alert(1)</script> policy"
owner: t&s
severity: low
action: flag
mode: shadow
labels:
  - name: thing
    prompts: [a thing]
    threshold: 0.3
"""


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "plain.yaml").write_text(PLAIN)
    return policies


def client(policies: Path, data: Path, base_url: str = BASE, **kw: object) -> TestClient:
    config = StudioConfig(policies_dir=policies, data_dir=data, **kw)  # type: ignore[arg-type]
    return TestClient(create_app(config), base_url=base_url)


def test_lint_text_reports_line_and_column_of_unsaved_text(tmp_path: Path) -> None:
    path = tmp_path / "plain.yaml"
    bad = PLAIN.replace("threshold: 0.3", "threshold: 3")
    report = lint_text(bad, path)
    assert not report.ok
    assert report.errors[0].startswith(f"{path}:11:16: labels.0.threshold")
    assert lint_text(PLAIN, path).ok
    wrong = lint_text(PLAIN, tmp_path / "other.yaml")
    assert wrong.errors and "must match the file name" in wrong.errors[0]
    assert wrong.errors[0].startswith(f"{tmp_path / 'other.yaml'}:1:5")


def test_prompts_longer_than_the_text_context_are_flagged(tmp_path: Path) -> None:
    from consumers.studio.library import lint_problems

    long = " ".join(["a red triangle"] * 30)  # under 500 characters, over 77 tokens
    text = PLAIN.replace("[a thing]", f"[{long}]") + "model: clipguard-demo\n"
    problems = lint_problems(text, tmp_path / "plain.yaml")
    assert len(problems) == 1 and problems[0].line == 9  # the label
    assert "labels.thing" in problems[0].message and "token" in problems[0].message


def test_config_refuses_an_open_address_without_a_token(folder: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--token"):
        StudioConfig(policies_dir=folder, data_dir=tmp_path / "d", host="0.0.0.0")
    with pytest.raises(ConfigError, match="at least 16"):
        StudioConfig(policies_dir=folder, data_dir=tmp_path / "d", host="0.0.0.0", token="short")
    StudioConfig(policies_dir=folder, data_dir=tmp_path / "d", host="0.0.0.0", behind_proxy=True)


def test_pages_escape_what_policy_files_say(folder: Path, tmp_path: Path) -> None:
    with client(folder, tmp_path / "data") as c:
        page = c.get("/").text
    assert "<script>alert(1)" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert 'class="mode mode-shadow"' in page


def test_requests_for_another_host_are_refused_on_localhost(folder: Path, tmp_path: Path) -> None:
    with client(folder, tmp_path / "data") as c:
        assert c.get("/").status_code == 200
        refused = c.get("/", headers={"Host": "evil.example:8600"})
        assert refused.status_code == 421


def test_cross_site_posts_are_refused(folder: Path, tmp_path: Path) -> None:
    url = "/policies/plain/lint"
    with client(folder, tmp_path / "data") as c:
        assert c.post(url, content=PLAIN, headers=SAME).status_code == 200
        evil = c.post(url, content=PLAIN, headers={"Origin": "http://evil.example"})
        assert evil.status_code == 403
        fetch = c.post(url, content=PLAIN, headers={"Sec-Fetch-Site": "cross-site"})
        assert fetch.status_code == 403
        referer = c.post(url, content=PLAIN, headers={"Referer": "http://evil.example/x"})
        assert referer.status_code == 403


def test_a_token_is_required_off_localhost(folder: Path, tmp_path: Path) -> None:
    token = "a-long-enough-secret-token"
    with client(
        folder, tmp_path / "data", host="0.0.0.0", token=token, base_url="http://studio.lan"
    ) as c:
        assert c.get("/").status_code == 401
        assert c.get("/?token=wrong-token-of-some-length").status_code == 401
        first = c.get(f"/?token={token}", follow_redirects=False)
        assert first.status_code == 303 and first.headers["location"] == "/"
        assert "HttpOnly" in first.headers["set-cookie"]
        assert "SameSite=Strict" in first.headers["set-cookie"]
        assert c.get("/").status_code == 200  # the cookie now
        c.cookies.clear()
        assert c.get("/").status_code == 401
        bearer = c.get("/", headers={"Authorization": f"Bearer {token}"})
        assert bearer.status_code == 200
        assert "frame-ancestors 'none'" in bearer.headers["content-security-policy"]


def test_uploads_are_capped_and_kept_in_the_data_folder(folder: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    with client(folder, data, max_upload_bytes=4096) as c:
        big = c.post(
            "/policies/plain/try",
            content=b"\0" * 5000,
            headers={**SAME, "X-Filename": "../../escape.png"},
        )
        assert big.status_code == 413
        odd = c.post("/policies/plain/try", content=b"x", headers={**SAME, "X-Filename": "a.html"})
        assert odd.status_code == 415
    assert list((data / "uploads").iterdir()) == []
    assert not (tmp_path / "escape.png").exists()


def test_unknown_or_unsafe_policy_names_are_not_found(folder: Path, tmp_path: Path) -> None:
    with client(folder, tmp_path / "data") as c:
        for name in ("nope", "..%2Fplain", "PLAIN"):
            assert c.get(f"/policies/{name}/edit").status_code == 404


def _base(c: TestClient, name: str) -> str:
    page = c.get(f"/policies/{name}/promote").text
    return page.split('name="base" value="')[1].split('"')[0]


def test_promote_needs_a_note_and_writes_a_new_version(folder: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    path = folder / "plain.yaml"
    with client(folder, data) as c:
        base = _base(c, "plain")
        form = {"target": "enforce", "base": base, "note": "  "}
        refused = c.post("/policies/plain/promote", data=form, headers=SAME)
        assert refused.status_code == 400 and "write a note" in refused.text
        assert path.read_text() == PLAIN
        form["note"] = "checked the <examples>"
        done = c.post("/policies/plain/promote", data=form, headers=SAME, follow_redirects=False)
        assert done.status_code == 303
        stale = c.post("/policies/plain/promote", data=form, headers=SAME)
        assert stale.status_code == 400 and "changed since you opened it" in stale.text
        audit = c.get("/audit").text
        assert "checked the &lt;examples&gt;" in audit
        export = c.get("/audit.jsonl")
    now = yaml.safe_load(path.read_text())
    assert (now["mode"], now["version"]) == ("enforce", 2)
    assert (data / "history" / "plain" / "v1.yaml").read_text() == PLAIN
    assert (data / "history" / "plain" / "v2.yaml").read_text() == path.read_text()
    [entry] = [json.loads(line) for line in export.text.splitlines()]
    assert entry["action"] == "promote" and entry["note"] == "checked the <examples>"
    assert (entry["from_version"], entry["to_version"]) == (1, 2)
    assert "-mode: shadow" in entry["diff"] and "+mode: enforce" in entry["diff"]


def test_saving_an_edit_bumps_the_version_and_refuses_invalid_text(
    folder: Path, tmp_path: Path
) -> None:
    path = folder / "plain.yaml"
    with client(folder, tmp_path / "data") as c:
        base = _base(c, "plain")
        bad = PLAIN.replace("threshold: 0.3", "threshold: 7")
        refused = c.post("/policies/plain/save", data={"text": bad, "base": base}, headers=SAME)
        assert refused.status_code == 400 and "line 11, column 16" in refused.text
        assert path.read_text() == PLAIN
        good = PLAIN.replace("[a thing]", "[a thing, a drawn thing]")
        saved = c.post(
            "/policies/plain/save",
            data={"text": good, "base": base, "note": "wider"},
            headers=SAME,
            follow_redirects=False,
        )
        assert saved.status_code == 303
    now = yaml.safe_load(path.read_text())
    assert now["version"] == 2 and now["labels"][0]["prompts"] == ["a thing", "a drawn thing"]


def test_review_labels_are_stored_and_exported(tmp_path: Path) -> None:
    policies = make_policies(tmp_path)
    flags = make_incidents(tmp_path)
    data = tmp_path / "data"
    incidents = read_incidents(flags)
    assert len(incidents) == 3
    with client(policies, data, incidents=flags) as c:
        page = c.get("/review").text
        assert page.count('class="incident"') == 3
        assert page.count('class="blur"') == 9  # the peak and a frame either side, blurred
        one = incidents[0].id
        assert c.get(f"/thumbs/{one}/1.jpg").content[:2] == b"\xff\xd8"
        assert c.get("/thumbs/..%2F..%2Fx/1.jpg").status_code == 404
        form = {"verdict": "incorrect", "note": "a <b>red square</b>"}
        c.post(f"/review/{one}", data=form, headers=SAME)
        bad = c.post(f"/review/{one}", data={"verdict": "maybe"}, headers=SAME)
        assert bad.status_code == 422
        page = c.get("/review").text
        assert "a &lt;b&gt;red square&lt;/b&gt;" in page
        doc = c.get("/export/handoff.json").json()
        # one click: the peak frame becomes a regression example expecting no flag
        two = incidents[1].id
        unlabelled = c.post(f"/review/{two}/example", headers=SAME)
        assert unlabelled.status_code == 400 and "mark the incident" in unlabelled.text
        added = c.post(f"/review/{one}/example", headers=SAME, follow_redirects=False)
        assert added.status_code == 303
        again = c.post(f"/review/{one}/example", headers=SAME)
        assert again.status_code == 400 and "already" in again.text
    policy = yaml.safe_load((policies / "red-triangle.yaml").read_text())
    assert policy["version"] == 2
    assert policy["examples"][-1] == {
        "path": f"examples/red-triangle-{one}.jpg",
        "expect": "no_flag",
        "label": "red-triangle",
    }
    assert (policies / "examples" / f"red-triangle-{one}.jpg").read_bytes()[:2] == b"\xff\xd8"
    assert "# Regression examples" in (policies / "red-triangle.yaml").read_text()  # comments kept
    assert doc["schema"] == "clipguard.studio.handoff/1"
    HandoffDocument.model_validate(doc)  # the documented shape, extra keys refused
    reviewed = [i for i in doc["incidents"] if i["review"]]
    assert [(i["id"], i["review"]["verdict"]) for i in reviewed] == [(one, "incorrect")]
    assert reviewed[0]["review"]["note"] == "a <b>red square</b>"


def test_saving_a_threshold_writes_a_new_version(folder: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    with client(folder, data) as c:
        base = _base(c, "plain")
        form = {"label": "thing", "threshold": "0.3125", "base": base}
        done = c.post("/policies/plain/tune", data=form, headers=SAME, follow_redirects=False)
        assert done.status_code == 303
        nan = {**form, "threshold": "nan"}
        assert c.post("/policies/plain/tune", data=nan, headers=SAME).status_code == 422
    now = yaml.safe_load((folder / "plain.yaml").read_text())
    assert now["version"] == 2 and now["labels"][0]["threshold"] == 0.3125
    [entry] = [json.loads(x) for x in (data / "audit.jsonl").read_text().splitlines()]
    assert entry["action"] == "threshold" and entry["note"] == "thing: threshold 0.3 -> 0.3125"


def test_add_example_keeps_the_list_style() -> None:
    from consumers.studio.versions import add_example

    block = "id: x\nexamples:\n  - {path: a.png, expect: flag}\n# end\n"
    assert add_example(block, "{path: b.png, expect: no_flag}") == (
        "id: x\nexamples:\n  - {path: a.png, expect: flag}\n"
        "  - {path: b.png, expect: no_flag}\n# end\n"
    )
    flow = "id: x\nexamples: []\n"
    assert yaml.safe_load(add_example(flow, "{path: b.png, expect: flag}"))["examples"] == [
        {"path": "b.png", "expect": "flag"}
    ]
    none = "id: x\n"
    assert yaml.safe_load(add_example(none, "{path: b.png, expect: flag}"))["examples"] == [
        {"path": "b.png", "expect": "flag"}
    ]


def test_set_lists_rewrites_only_the_lists() -> None:
    from consumers.studio.versions import set_lists

    text = (
        "id: x\nlabels:\n  - name: a\n    prompts:\n      - one\n      - two  # c\n"
        "    threshold: 0.3\n# tail\n"
    )
    new = set_lists(text, "a", {"prompts": ["p: 1", 'say "hi"', "  "], "negatives": ["n"]})
    label = yaml.safe_load(new)["labels"][0]
    assert label == {
        "name": "a",
        "prompts": ["p: 1", 'say "hi"'],
        "negatives": ["n"],
        "threshold": 0.3,
    }
    assert new.endswith("    threshold: 0.3\n# tail\n")
    assert set_lists(text, "a", {"negatives": []}) == text  # nothing to add
    with pytest.raises(PolicyError, match="no label"):
        set_lists(text, "b", {"prompts": ["x"]})


def test_incident_files_are_checked_line_by_line(tmp_path: Path) -> None:
    flags = tmp_path / "flags.jsonl"
    flags.write_text('{"schema": "clipguard.flag/1"}\n')
    with pytest.raises(ConfigError, match=r"flags.jsonl:1: not a flag event"):
        read_incidents(flags)
    flags.write_text("x" * 70_000 + "\n")
    with pytest.raises(ConfigError, match="longer than"):
        read_incidents(flags)


def test_the_handoff_schema_file_is_current() -> None:
    path = Path(__file__).resolve().parent.parent / "schemas" / "studio-handoff.schema.json"
    schema = HandoffDocument.model_json_schema(by_alias=True)
    assert json.loads(path.read_text()) == schema, (
        "schemas/studio-handoff.schema.json is stale: run `python -m consumers.studio.handoff`"
    )


def test_every_studio_module_exports_what_it_lists() -> None:
    import importlib
    import pkgutil

    import consumers.studio as package

    names = [m.name for m in pkgutil.iter_modules(package.__path__)]
    assert {"access", "app", "library", "versions", "store_link", "pages_store"} <= set(names)
    for name in names:
        module = importlib.import_module(f"consumers.studio.{name}")
        assert module.__all__, name
        for exported in module.__all__:
            assert hasattr(module, exported), f"{name}.{exported}"


def test_the_studio_command_is_registered() -> None:
    from consumers.cli import build_parser

    args = build_parser().parse_args(["studio", "--policies", str(DEMO_POLICIES)])
    assert args.host == "127.0.0.1" and args.port == 8600


def test_uploads_score_in_the_precision_asked_for(folder: Path, tmp_path: Path) -> None:
    from consumers.studio.scoring import Scorer
    from pipeline.policies import load_policies

    with pytest.raises(ConfigError, match="precision"):
        StudioConfig(policies_dir=folder, data_dir=tmp_path / "d", precision="fp64")
    lp = next(p for p in load_policies([DEMO_POLICIES]) if p.policy.id == "red-triangle")
    image = lp.resolve(lp.policy.examples[0].path)
    scores = {}
    for precision in ("fp32", "int8"):
        scorer = Scorer(
            model=None,
            data_dir=tmp_path / precision,
            max_upload_bytes=1 << 20,
            sample_fps=2.0,
            precision=precision,
        )
        try:
            result = scorer.try_file(lp, image, "image/png")
        finally:
            scorer.close()
        scores[precision] = [d.score for f in result.frames for d in f.decisions]
    # int8 runs through the converted encoder, fp32 through the reference: close, not equal
    assert scores["int8"] != scores["fp32"]
    assert scores["int8"] == pytest.approx(scores["fp32"], abs=0.02)


def test_queue_pages_and_a_timeline_from_the_source(tmp_path: Path) -> None:
    policies = make_policies(tmp_path)
    flags = make_incidents(tmp_path)
    first = read_incidents(flags)[0]
    with client(policies, tmp_path / "data", incidents=flags) as c:
        assert c.get("/review?start=-1").status_code == 422
        assert c.get("/review", params={"policy": "x" * 201}).status_code == 422
        page = c.get("/review?start=2").text
        assert page.count('class="incident"') == 1 and "3\u20133 of 3" in page
        assert 'id="origin-file">3<' in page
        page = c.get(f"/review/{first.id}").text
        # no store: the scanned file decoded around the incident (4 s, 4 frames a second)
        assert 'data-origin="source"' in page and 'data-points="16"' in page
        assert 'data-value="0.63"' in page  # the threshold line: the file's threshold
        thumbs = re.findall(r'src="(/timeline/[^"]+\.jpg)"', page)
        assert thumbs and all(c.get(t).content[:2] == b"\xff\xd8" for t in thumbs)
        form = {"verdict": "unsure", "back": "incident"}
        back = c.post(f"/review/{first.id}", data=form, headers=SAME, follow_redirects=False)
        assert back.headers["location"] == f"/review/{first.id}"
        form["back"] = "elsewhere"
        assert c.post(f"/review/{first.id}", data=form, headers=SAME).status_code == 422


def test_a_page_of_incidents_decodes_their_shared_source_once(tmp_path: Path) -> None:
    from consumers.studio.frames import incident_frames, page_frames
    from consumers.studio.scoring import Scorer
    from consumers.studio.store_link import StoreLink

    incidents = read_incidents(make_incidents(tmp_path))
    assert len({i.source for i in incidents}) == 1 and len(incidents) == 3
    scorer = Scorer(model=None, data_dir=tmp_path / "d", max_upload_bytes=1 << 20, sample_fps=2.0)
    try:
        pool = scorer.pool()
        real = pool.decode_uri
        calls: list[object] = []

        def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
            calls.append(args[0])
            return real(*args, **kwargs)

        pool.decode_uri = counted  # type: ignore[method-assign]
        paged = page_frames(incidents, scorer, tmp_path / "paged", StoreLink(None))
        assert len(calls) == 1  # one decode for the page, not one per incident
        one_by_one = {i.id: incident_frames(i, scorer, tmp_path / "single") for i in incidents}
        assert len(calls) == 1 + len(incidents)
    finally:
        scorer.close()
    for incident in incidents:
        assert [t for t, _ in paged[incident.id]] == [-1.0, 0.0, 1.0]
        got = [p.read_bytes() for _, p in paged[incident.id]]
        want = [p.read_bytes() for _, p in one_by_one[incident.id]]
        assert got == want  # the same frames as decoding for each incident
