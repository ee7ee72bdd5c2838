"""``clipguard scan`` end to end: real H.264 clips made here from the synthetic scene generator
(demo concepts shown between known times), a corrupt file and an audio-only file, scanned with
the bundled demo model and the demo policies; a real HTTP server for URL inputs; the report
rendered in headless Chromium.

Timing: clips are 128 px, 5 fps, sampled at 1 frame a second, so "the right time" means within
one second (one sampling interval) of where the concept appears and disappears. The demo
policies open an incident when 2 of the last 3 sampled frames pass, dating it from the first
passing frame, and close it 2 failing frames later, dating the end at the last passing frame.
"""

from __future__ import annotations

import contextlib
import functools
import html.parser
import http.server
import io
import json
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import cv2
import media
import pytest
from scanclips import SIDE, SPAM, TRIANGLE, make_library
from scanclips import clip as _clip
from scanclips import showing as _showing
from scanclips import write_clip as _write

from consumers.cli import main
from consumers.cli.common import EXIT_PARTIAL
from pipeline.decode import DecodePool
from pipeline.events import FlagEvent, ScoreRecord
from pipeline.models import DEMO_MODEL, load_clip
from pipeline.models.encoders import load_encoder
from pipeline.policies import load_policies
from pipeline.policies.bundled import DEMO_POLICIES
from pipeline.policies.compile import PolicyCompiler
from pipeline.scan import Scanner, discover

pytestmark = pytest.mark.usefixtures("policy_cache", "one_torch_thread")

ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------------------------
# media


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder to scan (scanclips.make_library): three good clips in two folders, a corrupt
    file, an audio-only file and a text file that is not media."""
    return make_library(tmp_path_factory.mktemp("library"))


def _scan(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["scan", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def _summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def _by_source(summary: dict) -> dict[str, dict]:
    return {Path(f["source"]).name: f for f in summary["files"]}


def _text_lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.strip()]


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def first_scan(library: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("scan") / "out"
    stdout, stderr = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLIPGUARD_POLICY_CACHE", str(tmp_path_factory.getbasetemp() / "pc"))
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = main(["scan", str(library), "--out", str(out)])
    return code, stdout.getvalue(), stderr.getvalue(), out


def _assert_incident(flag: dict, label: str, shown_from: float, shown_until: float) -> None:
    """Within one sampling interval (1 s) of where the concept is on screen."""
    assert f"{flag['policy']}/{flag['label']}" == label
    assert abs(flag["start_ts"] - shown_from) <= 1.0, flag
    assert abs(flag["end_ts"] - shown_until) <= 1.0, flag
    assert shown_from <= flag["peak_ts"] < shown_until, flag
    assert flag["peak_score"] >= flag["threshold"]


# --------------------------------------------------------------------------------------------
# the folder scan


def test_folder_scan_flags_the_concepts_at_the_right_times(first_scan) -> None:
    _, _, err, outdir = first_scan
    files = _by_source(_summary(outdir))
    # the folder was searched recursively, by media type: the text file is not an input
    assert set(files) == {"triangle.mp4", "spam.mkv", "clean.ts", "corrupt.mp4", "audio-only.mp4"}
    tri, spam, clean = files["triangle.mp4"], files["spam.mkv"], files["clean.ts"]
    for f, seconds in ((tri, 8), (spam, 8), (clean, 4)):
        assert f["status"] == "scanned" and f["error"] is None
        assert f["duration"] == pytest.approx(seconds, abs=0.25)
        assert f["frames_scored"] == seconds  # 1 frame a second
        assert f["codec"] == "h264" and (f["width"], f["height"]) == (SIDE, SIDE)
    assert len(tri["flags"]) == 1 and len(spam["flags"]) == 1 and clean["flags"] == []
    _assert_incident(tri["flags"][0], *TRIANGLE)
    _assert_incident(spam["flags"][0], *SPAM)
    assert tri["flags"][0]["severity"] == "medium" and spam["flags"][0]["severity"] == "low"
    # the defaults were used and said so
    assert "clipguard-demo" in err and "demo model" in err
    assert f"policies from {DEMO_POLICIES}" in err


def test_bad_files_are_reported_with_typed_errors_and_a_partial_exit_status(first_scan) -> None:
    code, out, err, outdir = first_scan
    assert code == EXIT_PARTIAL == 3
    files = _by_source(_summary(outdir))
    corrupt, audio = files["corrupt.mp4"], files["audio-only.mp4"]
    assert corrupt["status"] == audio["status"] == "failed"
    assert corrupt["error"]["class"] == "InvalidMedia"
    assert audio["error"]["class"] == "UnsupportedMedia"
    assert "no video stream" in audio["error"]["message"]
    assert "corrupt.mp4" in corrupt["error"]["message"]
    assert corrupt["frames_scored"] == audio["frames_scored"] == 0
    summary = _summary(outdir)
    assert summary["run"] == summary["run"] | {"inputs": 5, "scanned": 5, "skipped": 0, "failed": 2}
    assert "scan: 5 inputs: 3 scanned, 0 scanned before (skipped), 2 failed" in out
    assert re.search(r"failed: .*corrupt\.mp4: InvalidMedia: ", out)
    assert re.search(r"failed: .*audio-only\.mp4: UnsupportedMedia: ", out)
    # not a terminal: one plain progress line per input
    assert len(re.findall(r"\[\d/5\] ", err)) == 5
    assert "FAILED InvalidMedia" in err


def test_records_have_the_kafka_topic_shapes_with_their_source(first_scan) -> None:
    _, _, _, outdir = first_scan
    files = _by_source(_summary(outdir))
    scores = [
        ScoreRecord.model_validate_json(line) for line in _text_lines(outdir / "scores.jsonl")
    ]
    flags = [FlagEvent.model_validate_json(x) for x in _text_lines(outdir / "flags.jsonl")]
    per_source: dict[str, list[ScoreRecord]] = {}
    for r in scores:
        assert r.source == r.stream_id and Path(r.source).is_absolute()
        assert r.seq == 0 and r.model == DEMO_MODEL
        assert set(r.scores) == {TRIANGLE[0], SPAM[0]}
        per_source.setdefault(Path(r.source).name, []).append(r)
    assert {k: len(v) for k, v in per_source.items()} == {
        "triangle.mp4": 8,
        "spam.mkv": 8,
        "clean.ts": 4,
    }
    assert [r.ts for r in per_source["triangle.mp4"]] == pytest.approx(range(8), abs=0.01)
    flagged = [r.ts for r in per_source["triangle.mp4"] if TRIANGLE[0] in r.flagged]
    assert flagged and all(2.0 <= t < 5.0 for t in flagged)
    # each incident: an open and a closed event with one id, the summary's
    for name in ("triangle.mp4", "spam.mkv"):
        (incident,) = files[name]["flags"]
        events = [f for f in flags if f.event_id == incident["event_id"]]
        assert [e.state for e in events] == ["open", "closed"]
        assert events[1].end_ts == incident["end_ts"] and Path(events[0].source).name == name
    assert len(flags) == 4


def test_thumbnails_hold_each_incidents_peak_frame(first_scan) -> None:
    _, _, _, outdir = first_scan
    (incident,) = _by_source(_summary(outdir))["triangle.mp4"]["flags"]
    picture = cv2.imread(str(outdir / incident["thumbnail"]))[:, :, ::-1]
    assert picture.shape == (64, 64, 3)  # the demo model's input, as scored
    red = (picture[:, :, 0] > 150) & (picture[:, :, 1] < 90) & (picture[:, :, 2] < 90)
    assert red.mean() > 0.02  # the red triangle is on it
    assert sorted(p.name for p in (outdir / "thumbnails").iterdir()) == sorted(
        Path(f["thumbnail"]).name for f in _summary(outdir)["files"] for f in f["flags"]
    )


def _close(a: object, b: object) -> bool:
    """Equal, numbers within 1e-5."""
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, int | float) and isinstance(b, int | float) and abs(a - b) <= 1e-5
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def test_the_per_input_api_gives_the_records_the_scan_wrote(first_scan, library: Path) -> None:
    """What a job runner calls: one input in, its records out, as the folder scan wrote them."""
    _, _, _, outdir = first_scan
    model = load_clip(DEMO_MODEL)
    policies = load_policies([DEMO_POLICIES])
    policy_set = PolicyCompiler(model).compile(policies)
    source = str(library / "triangle.mp4")
    with DecodePool(1) as pool:
        scanner = Scanner(load_encoder(model, batch_size=3), policy_set, pool=pool)
        records = list(scanner.records(source))
    written = [
        r
        for r in _lines(outdir / "scores.jsonl") + _lines(outdir / "flags.jsonl")
        if r["source"] == source
    ]
    got = [json.loads(r.to_json()) for r in records]
    key = lambda r: (r["schema"], r.get("ts", r.get("start_ts")), r.get("state", ""))  # noqa: E731
    # the same records; scores agree to 1e-5 (frames batched differently round differently)
    assert _close(sorted(got, key=key), sorted(written, key=key))
    # batches of 3 frames: the records come out as they are judged, in order
    assert [type(r).__name__ for r in records[:3]] == ["ScoreRecord"] * 3


# --------------------------------------------------------------------------------------------
# resuming


def test_a_rerun_scans_nothing_new_and_force_rescans(
    first_scan, library: Path, tmp_path: Path, capsys
) -> None:
    _, _, _, first = first_scan
    outdir = tmp_path / "out"
    shutil.copytree(first, outdir)
    scores_before = (outdir / "scores.jsonl").read_bytes()
    flags_before = (outdir / "flags.jsonl").read_bytes()

    code, out, err = _scan(capsys, str(library), "--out", str(outdir))
    assert code == EXIT_PARTIAL  # the two bad files are still bad
    run = _summary(outdir)["run"]
    assert run | {"seconds": 0, "frames_per_second": 0} == {
        "inputs": 5,
        "scanned": 0,
        "skipped": 5,
        "failed": 2,
        "frames_scored": 0,
        "seconds": 0,
        "frames_per_second": 0,
    }
    assert "0 scanned, 3 scanned before (skipped), 2 failed" in out
    assert "5 of 5 inputs already scanned" in err and "[1/" not in err
    assert (outdir / "scores.jsonl").read_bytes() == scores_before
    assert (outdir / "flags.jsonl").read_bytes() == flags_before
    files = _by_source(_summary(outdir))
    assert {f["this_run"] for f in files.values()} == {"skipped"}
    assert files["corrupt.mp4"]["error"]["class"] == "InvalidMedia"

    code, out, err = _scan(capsys, str(library), "--out", str(outdir), "--force")
    assert code == EXIT_PARTIAL
    assert (
        _summary(outdir)["run"]["scanned"] == 5 and _summary(outdir)["run"]["frames_scored"] == 20
    )
    assert "3 scanned, 0 scanned before (skipped), 2 failed" in out

    # rescanned inputs replace their records: the same records, none twice (scores may differ
    # in the last digits: the encoder's batches were made up differently)
    def frames(data: bytes) -> dict[tuple[str, int], dict[str, float]]:
        records = [json.loads(line) for line in data.splitlines()]
        out = {(r["source"], r["frame_index"]): r["scores"] for r in records}
        assert len(out) == len(records)
        return out

    again, before = frames((outdir / "scores.jsonl").read_bytes()), frames(scores_before)
    assert again.keys() == before.keys()
    for where, scores in again.items():
        assert scores == pytest.approx(before[where], abs=1e-3)

    def events(data: bytes) -> list[tuple[str, str, float]]:
        return sorted(
            (f["event_id"], f["state"], f["start_ts"]) for f in map(json.loads, data.splitlines())
        )

    assert events((outdir / "flags.jsonl").read_bytes()) == events(flags_before)


def test_a_changed_file_or_policy_set_is_rescanned(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "videos"
    _write(folder / "a.mp4", _clip(3, None, 0, 0, 21), "mp4")
    _write(folder / "b.mp4", _clip(3, None, 0, 0, 22), "mp4")
    outdir = tmp_path / "out"
    assert _scan(capsys, str(folder), "--out", str(outdir))[0] == 0
    assert _summary(outdir)["run"]["scanned"] == 2

    # new bytes under the same name: only that file is scanned again, its records replaced
    _write(folder / "b.mp4", _clip(6, _showing("triangle", "red", 3), 1, 5, 23), "mp4")
    code, out, _ = _scan(capsys, str(folder), "--out", str(outdir))
    assert code == 0 and "1 scanned, 1 scanned before (skipped), 0 failed" in out
    b = _by_source(_summary(outdir))["b.mp4"]
    assert b["this_run"] == "scanned" and b["frames_scored"] == 6 and len(b["flags"]) == 1
    sources = [Path(r["source"]).name for r in _lines(outdir / "scores.jsonl")]
    assert sources.count("a.mp4") == 3 and sources.count("b.mp4") == 6

    # another policy set (a threshold edited): every file is scanned again
    policies = tmp_path / "policies"
    shutil.copytree(DEMO_POLICIES, policies)
    path = policies / "spam-text.yaml"
    path.write_text(
        re.sub(r"\n    threshold: [0-9.]+\n", "\n    threshold: 0.52\n", path.read_text())
    )
    code, out, _ = _scan(capsys, str(folder), "--out", str(outdir), "--policies", str(policies))
    assert code == 0 and "2 scanned, 0 scanned before (skipped)" in out
    summary = _summary(outdir)
    assert len(summary["policy_sets"]) == 2
    assert {f["policy_set"] for f in summary["files"]} == {summary["policy_set"]}


# --------------------------------------------------------------------------------------------
# URLs and list files


@pytest.fixture
def server(library: Path) -> Iterator[str]:
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(library))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_urls_and_list_files(library: Path, server: str, tmp_path: Path, capsys) -> None:
    listing = tmp_path / "inputs.txt"
    listing.write_text(
        "# today's uploads\n"
        f"{server}/triangle.mp4\n"
        "\n"
        f"{server}/gone.mp4\n"
        f"{os.path.relpath(library / 'sub', tmp_path)}/spam.mkv\n"
    )
    outdir = tmp_path / "out"
    code, _, _ = _scan(capsys, str(listing), "--keyframes", "--out", str(outdir))
    assert code == EXIT_PARTIAL
    summary = _summary(outdir)
    assert summary["settings"]["sampling"] == {"mode": "keyframes"}
    files = {f["source"]: f for f in summary["files"]}
    assert list(files) == [
        f"{server}/triangle.mp4",
        f"{server}/gone.mp4",
        str(library / "sub" / "spam.mkv"),
    ]
    tri = files[f"{server}/triangle.mp4"]
    assert tri["status"] == "scanned" and tri["frames_scored"] == 8  # a keyframe a second
    _assert_incident(tri["flags"][0], *TRIANGLE)
    _assert_incident(files[str(library / "sub" / "spam.mkv")]["flags"][0], *SPAM)
    gone = files[f"{server}/gone.mp4"]
    assert gone["status"] == "failed" and gone["error"]["class"] == "MediaUnavailable"
    assert "404" in gone["error"]["message"]
    url_scores = [r for r in _lines(outdir / "scores.jsonl") if r["source"].startswith("http")]
    assert [r["stream_id"] for r in url_scores] == [f"{server}/triangle.mp4"] * 8


def test_discover_lists_folders_by_media_type_and_reports_missing_inputs(
    library: Path, tmp_path: Path
) -> None:
    nested = tmp_path / "nested.list"
    nested.write_text(f"{library / 'sub'}\n{tmp_path / 'missing.mp4'}\n{nested}\nrtsp://cam/1\n")
    found = discover([str(nested), "https://user:secret@host/v.webm?sig=1", str(library)])
    names = [(Path(i.source).name, i.kind, type(i.error).__name__) for i in found]
    assert names == [
        ("audio-only.mp4", "file", "NoneType"),  # the folders' videos, sorted, each once
        ("clean.ts", "file", "NoneType"),
        ("spam.mkv", "file", "NoneType"),
        ("missing.mp4", "file", "MediaUnavailable"),
        ("1", "url", "UnsupportedMedia"),
        ("v.webm?sig=1", "url", "NoneType"),
        ("corrupt.mp4", "file", "NoneType"),
        ("triangle.mp4", "file", "NoneType"),
    ]
    assert found[5].source == "https://host/v.webm?sig=1"  # credentials never recorded


def test_usage_errors_and_empty_inputs(tmp_path: Path, capsys) -> None:
    assert _scan(capsys, "--out", str(tmp_path / "o"))[0] == 2
    code, _, err = _scan(capsys, str(tmp_path), "--keyframes", "--sample-fps", "2")
    assert code == 2 and "not allowed with argument" in err
    assert _scan(capsys, str(tmp_path), "--fit", "stretch")[0] == 2
    assert _scan(capsys, str(tmp_path), "--sample-fps", "0")[0] == 2
    code, _, err = _scan(capsys, str(tmp_path), "--out", str(tmp_path / "o"))
    assert code == 1 and "no video files found" in err
    # a missing input is a failed input, not a failed scan
    code, out, _ = _scan(capsys, str(tmp_path / "nope.mp4"), "--out", str(tmp_path / "o"))
    assert code == EXIT_PARTIAL and "MediaUnavailable" in out


# --------------------------------------------------------------------------------------------
# the report


class _Elements(html.parser.HTMLParser):
    """Every start tag with its attributes, from a DOM dump."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def find(self, tag: str, cls: str | None = None) -> list[dict[str, str]]:
        return [
            a
            for t, a in self.tags
            if t == tag and (cls is None or cls in a.get("class", "").split())
        ]


def test_exported_names() -> None:
    import consumers.cli
    import consumers.cli.common
    import consumers.cli.scan
    import pipeline.scan
    import pipeline.scan.outputs
    import pipeline.scan.report

    assert set(pipeline.scan.__all__) == {
        "LIST_SUFFIXES",
        "PERMANENT_ERRORS",
        "FileScan",
        "ScanInput",
        "ScanOptions",
        "Scanner",
        "content_key",
        "discover",
        "file_sha256",
    }
    assert set(pipeline.scan.report.__all__) == {
        "REPORT_STYLE",
        "SEVERITY_RANK",
        "render_report",
        "write_report",
    }
    assert set(pipeline.scan.outputs.__all__) == {
        "STATE_DIR",
        "SUMMARY_FORMAT",
        "ScanFolder",
        "ScanPlan",
        "describe_policies",
        "failed_entry",
        "plan_scan",
        "resume_key",
        "scan_entry",
        "summarize",
        "write_outputs",
    }
    assert set(consumers.cli.__all__) == {"build_parser", "main"}
    assert set(consumers.cli.scan.__all__) == {"add_parser", "run_scan"}
    assert {"EXIT_OK", "EXIT_PARTIAL", "EXIT_USAGE"} <= set(consumers.cli.common.__all__)
    modules = (
        pipeline.scan,
        pipeline.scan.report,
        pipeline.scan.outputs,
        consumers.cli,
        consumers.cli.common,
        consumers.cli.scan,
    )
    for module in modules:
        for name in module.__all__:
            assert hasattr(module, name), name


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_report_is_self_contained(first_scan) -> None:
    _, _, _, outdir = first_scan
    page = (outdir / "report.html").read_text()
    assert "Content-Security-Policy" in page and "<script" not in page
    links = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert links and all(link.startswith(("data:", "#")) for link in links)
    assert "Demo model." in page  # the demo notice, on the page itself


@pytest.mark.skipif(
    _chromium() is None and not os.environ.get("CI"),
    reason="needs Debian's chromium (make test installs it where it can)",
)
def test_report_renders_in_headless_chromium(first_scan, tmp_path: Path) -> None:
    _, _, _, outdir = first_scan
    report = outdir / "report.html"
    common = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1100,2400",
    ]
    shot = tmp_path / "report.png"
    subprocess.run(
        [*common, f"--screenshot={shot}", report.as_uri()],
        check=True,
        capture_output=True,
        timeout=120,
    )
    dom = subprocess.run(
        [*common, "--dump-dom", report.as_uri()],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout

    # the screenshot: a page with content, with the timelines' score lines drawn
    picture = cv2.imread(str(shot))
    assert picture is not None and picture.shape[:2] == (2400, 1100)
    assert picture.std() > 20  # not blank
    b, g, r = (picture[:, :, i].astype(int) for i in range(3))
    score_blue = (abs(r - 0x1F) < 40) & (abs(g - 0x5F) < 40) & (abs(b - 0xBF) < 40)
    assert score_blue.sum() > 200
    medium_orange = (abs(r - 0xF0) < 30) & (abs(g - 0x78) < 40) & (b < 80)
    assert medium_orange.sum() > 50  # severity badges and shaded spans

    # the DOM the browser built: a timeline per scanned video, a lane per label, a shaded
    # span and a thumbnail per incident, the failed files with their error class
    doc = _Elements()
    doc.feed(dom)
    assert len(doc.find("svg", "timeline")) == 3
    assert len(doc.find("g", "lane")) == 3 * 2
    assert len(doc.find("polyline", "score-line")) == 6
    assert len(doc.find("line", "threshold-line")) == 6
    spans = doc.find("rect", "flag-span")
    assert len(spans) == 2 and all(float(s["width"]) > 50 for s in spans)  # about 2 s of 8
    thumbs = doc.find("img", "thumb")
    assert len(thumbs) == 2 and all(t["src"].startswith("data:image/png;base64,") for t in thumbs)
    text = " ".join(doc.text)
    assert "InvalidMedia" in text and "UnsupportedMedia" in text and "no video stream" in text
    # the summary table: most severe first, then failed inputs, then clean ones
    rows = re.findall(r'<tr class="row">(.*?)</tr>', dom, re.S)
    order = [re.search(r"badge[^>]*>([a-z]+)<", row).group(1) for row in rows]
    assert order == ["medium", "low", "failed", "failed", "none"]
    assert "triangle.mp4" in rows[0] and "spam.mkv" in rows[1] and "clean.ts" in rows[4]


def test_skip_b_frames_decodes_fewer_frames_and_scores_as_many(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clip = tmp_path / "in" / "bframes.mp4"
    clip.parent.mkdir()
    clip.write_bytes(media.encode(50, fmt="mp4", gop=12, bframes=2))
    runs = {}
    for flag in ((), ("--skip-b-frames",)):
        out = tmp_path / f"out{len(flag)}"
        code, _, err = _scan(
            capsys, str(clip.parent), "--out", str(out), "--sample-fps", "2", *flag
        )
        assert code == 0, err
        runs[bool(flag)] = _by_source(_summary(out))["bframes.mp4"]
    assert runs[False]["frames_decoded"] == 50
    assert runs[True]["frames_decoded"] <= 25  # the I- and P-frames
    assert runs[True]["frames_scored"] == runs[False]["frames_scored"] == 4
