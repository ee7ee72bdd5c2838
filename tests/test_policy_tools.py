"""The policy authoring tools (``clipguard policy ...``) against the real bundled demo model,
real PNG/JPEG/WebP files and a real H.264 MP4 made here from the synthetic scene generator.

The demo model is retrained from time to time, so nothing here depends on exact scores: the
scenes are ones any working demo model gets right (a big red triangle, an empty background).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import media
import numpy as np
import pytest

from consumers.cli import main
from pipeline.demo import scenes
from pipeline.models import DEMO_MODEL, DEMO_NOTICE
from pipeline.policies import load_policy
from pipeline.policies import tools as policy_tools
from pipeline.policies.bundled import DEMO_POLICIES

pytestmark = pytest.mark.usefixtures("policy_cache", "one_torch_thread")

ROOT = Path(__file__).resolve().parent.parent
DEMO = DEMO_POLICIES
RED_TRIANGLE = DEMO / "red-triangle.yaml"
# the shipped threshold line of the red-triangle label, whatever its calibrated value
THRESHOLD_LINE = re.search(r"^    threshold: .*\n", RED_TRIANGLE.read_text(), re.M).group(0)
FPS = 10


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main([*argv])
    out, err = capsys.readouterr()
    return code, out, err


def _policy_copy(folder: Path, examples: str) -> Path:
    """A copy of the red-triangle policy in ``folder`` with its examples replaced."""
    text = RED_TRIANGLE.read_text(encoding="utf-8")
    found = re.search(r"^examples:", text, re.M)
    assert found is not None
    head = text[: found.start()]
    path = folder / "red-triangle.yaml"
    path.write_text(head + "examples:\n" + examples, encoding="utf-8")
    return path


def _write_image(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.ascontiguousarray(rgb[:, :, ::-1]))


# --------------------------------------------------------------------------------------------
# media


@pytest.fixture(scope="module")
def triangle_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """7 s at 10 fps, 128 px, H.264: 2 s empty, 3 s of a big red triangle, 2 s empty."""
    rng = np.random.default_rng(7)
    empty = scenes.render(scenes.sample_spec(rng, split="train", p_empty=1.0), 128)
    spec = scenes.sample_single_object_spec(rng, split="heldout", concept="triangle", colour="red")
    triangle = scenes.render(spec, 128)
    frames = [empty] * (2 * FPS) + [triangle] * (3 * FPS) + [empty] * (2 * FPS)
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    media.write_frames(path, frames, fmt="mp4", fps=FPS)
    return path


def _has_red_triangle(spec: scenes.SceneSpec) -> bool:
    return any(o.concept == "triangle" and o.colour == "red" for o in spec.objects)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """60 positive images (a red triangle) and 60 negatives (near misses, other scenes,
    empty backgrounds), as PNG with some JPEG and WebP in subfolders."""
    base = tmp_path_factory.mktemp("labelled")
    pos, neg = base / "positives", base / "negatives"
    rng = np.random.default_rng(20261128)
    positives = [
        scenes.sample_single_object_spec(
            rng,
            split="heldout" if i % 2 else "train",
            concept="triangle",
            colour="red",
            size_range=(0.2, 0.45),
        )
        for i in range(60)
    ]
    near = [
        ("square", "red"),
        ("circle", "red"),
        ("star", "red"),
        ("triangle", "purple"),
        ("triangle", "orange"),
        ("triangle", "yellow"),
    ]
    negatives = []
    for i in range(30):  # near misses: same shape in another colour, or another red shape
        concept, colour = near[i % len(near)]
        negatives.append(
            scenes.sample_single_object_spec(
                rng, split="heldout" if i % 2 else "train", concept=concept, colour=colour
            )
        )
    while len(negatives) < 50:  # random scenes without a red triangle
        spec = scenes.sample_spec(rng, split="train", p_empty=0.0)
        if not _has_red_triangle(spec):
            negatives.append(spec)
    while len(negatives) < 60:
        negatives.append(scenes.sample_spec(rng, split="train", p_empty=1.0))
    for folder, specs in ((pos, positives), (neg, negatives)):
        for i, spec in enumerate(specs):
            rgb = scenes.render(spec, 128)
            if i % 10 == 3:
                _write_image(folder / "jpeg" / f"{i:03d}.jpg", rgb)  # cv2 picks the codec
            elif i % 10 == 7:
                _write_image(folder / "webp" / f"{i:03d}.webp", rgb)
            else:
                _write_image(folder / f"{i:03d}.png", rgb)
    (neg / "notes.txt").write_text("not an image; calibrate ignores it")
    return pos, neg


# --------------------------------------------------------------------------------------------
# lint


def test_lint_accepts_the_bundled_policies(capsys):
    code, out, _ = _run(capsys, "policy", "lint", str(DEMO), str(ROOT / "policies"))
    assert code == 0
    files = [*DEMO.glob("*.yaml"), *(ROOT / "policies").glob("*.yaml")]
    assert out.strip() == f"ok: {len(files)} policies"


def test_lint_prints_file_line_col_and_fails(tmp_path, capsys):
    bad = _policy_copy(tmp_path, "  - {path: examples/missing.png, expect: flag}\n")
    text = bad.read_text().replace(THRESHOLD_LINE, THRESHOLD_LINE.replace("threshold", "treshold"))
    (tmp_path / "typo.yaml").write_text(text.replace("id: red-triangle", "id: typo"))
    code, out, err = _run(capsys, "policy", "lint", str(tmp_path))
    assert code == 1
    line = text.splitlines().index(THRESHOLD_LINE.replace("threshold", "treshold").rstrip("\n")) + 1
    assert f"{tmp_path / 'typo.yaml'}:{line}:5: labels.0.treshold: unknown key" in out
    row, col = next(
        (i, ln.index("examples/missing.png") + 1)
        for i, ln in enumerate(bad.read_text().splitlines(), 1)
        if "examples/missing.png" in ln
    )
    assert f"{bad}:{row}:{col}: examples.0.path: no such file: " in out
    assert "problems found" in err


# --------------------------------------------------------------------------------------------
# compile


def test_compile_reports_rows_and_uses_the_cache(capsys):
    code, out, _ = _run(capsys, "policy", "compile", str(DEMO))
    assert code == 0
    assert re.search(r"^red-triangle v\d+: 1 label, \d+ rows", out, re.M)
    assert re.search(r"^spam-text v\d+: 1 label, \d+ rows", out, re.M)
    assert DEMO_NOTICE in out
    code, out, _ = _run(capsys, "policy", "compile", str(DEMO))
    assert code == 0
    assert "cache: 2 hits, 0 misses" in out


# --------------------------------------------------------------------------------------------
# test


def test_the_demo_policies_pass_their_examples(capsys):
    code, out, _ = _run(capsys, "policy", "test", str(DEMO))
    assert code == 0, out
    assert "FAIL" not in out
    assert re.search(r"^(\d+) examples: \1 passed, 0 failed", out, re.M)
    assert DEMO_NOTICE in out


def test_a_wrong_expectation_and_a_missing_file_fail(tmp_path, capsys):
    shutil.copy(DEMO / "examples" / "red-triangle-1.png", tmp_path / "tri.png")
    _policy_copy(
        tmp_path,
        "  - {path: tri.png, expect: flag}\n"
        "  - {path: tri.png, expect: no_flag}\n"
        "  - {path: gone.png, expect: no_flag}\n",
    )
    code, out, _ = _run(capsys, "policy", "test", str(tmp_path))
    assert code == 1
    rows = [ln.split() for ln in out.splitlines() if ln.startswith(("pass", "FAIL"))]
    assert [r[:5] for r in rows] == [
        ["pass", "red-triangle", "tri.png", "flag", "flag"],
        ["FAIL", "red-triangle", "tri.png", "no_flag", "flag"],
        ["FAIL", "red-triangle", "gone.png", "no_flag", "error"],
    ]
    assert "error:" in out and "gone.png" in out
    assert "3 examples: 1 passed, 2 failed" in out


def test_a_video_example_flags_within_its_window(triangle_video, tmp_path, capsys):
    shutil.copy(triangle_video, tmp_path / "clip.mp4")
    _policy_copy(
        tmp_path,
        "  - {path: clip.mp4, expect: flag, label: red-triangle, start_s: 2, end_s: 5}\n"
        "  - {path: clip.mp4, expect: no_flag, start_s: 6, end_s: 7}\n"
        "  - {path: clip.mp4, expect: flag, start_s: 6, end_s: 7}\n",
    )
    code, out, _ = _run(capsys, "policy", "test", str(tmp_path), "--sample-fps", "2")
    assert code == 1  # the third example puts the incident where it is not
    rows = [ln for ln in out.splitlines() if ln.startswith(("pass", "FAIL"))]
    assert [r.split()[0] for r in rows] == ["pass", "pass", "FAIL"]
    assert "window 1.50-5.50 s" in rows[0]
    results = policy_tools.run_examples(
        [load_policy(tmp_path / "red-triangle.yaml")], _demo_model(), sample_fps=2.0
    )
    (incident,) = results[0].incidents
    assert results[0].kind == "video"
    assert 1.5 <= incident.start_s <= 2.5 and 4.0 <= incident.end_s <= 5.5


def _demo_model():
    from pipeline.models import load_clip

    return load_clip(DEMO_MODEL)


# --------------------------------------------------------------------------------------------
# explain


def test_explain_an_image_shows_every_prompt(capsys):
    image = DEMO / "examples" / "red-triangle-1.png"
    code, out, _ = _run(capsys, "policy", "explain", str(RED_TRIANGLE), str(image))
    assert code == 0
    assert "label red-triangle: PASSES" in out
    policy = load_policy(RED_TRIANGLE).policy.label("red-triangle")
    for text in [*policy.texts(), *policy.negative_texts()]:
        assert re.search(rf"^\s+-?\d\.\d{{3}}  {re.escape(text)}$", out, re.M), text
    threshold = re.escape(f"{policy.threshold:.2f}")
    assert re.search(rf"^  score +0\.\d{{3}}  >= {threshold}: yes$", out, re.M)
    # the shipped label has no margin rule: the margin is reported, not judged
    assert re.search(r"^  margin +[-+]\d\.\d{3}  \(score minus the best negative", out, re.M)
    assert re.search(r"^  probability +\d\.\d{3}", out, re.M)
    assert DEMO_NOTICE in out


def test_explain_a_video_shows_a_timeline(triangle_video, capsys):
    code, out, _ = _run(
        capsys, "policy", "explain", str(RED_TRIANGLE), str(triangle_video), "--sample-fps", "2"
    )
    assert code == 0
    times = re.findall(r"^(\d+\.\d\d) ", out, re.M)
    assert times == [f"{t / 2:.2f}" for t in range(14)]
    passing = re.findall(r"^(\d+\.\d\d) +-?\d\.\d{3} \*", out, re.M)
    assert "2.50" in passing and "0.00" not in passing and "6.50" not in passing
    assert re.search(r"^  red-triangle: \d\.\d\d-\d\.\d\d s, peak", out, re.M)


def test_explain_an_undecodable_file_is_an_error(tmp_path, capsys):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    code, _, err = _run(
        capsys, "policy", "explain", str(RED_TRIANGLE), str(tmp_path / "broken.png")
    )
    assert code == 1
    assert err.splitlines()[-1].startswith("clipguard: error: ")
    assert "broken.png" in err


# --------------------------------------------------------------------------------------------
# calibrate


def test_calibrate_suggests_plots_and_writes_a_threshold(labelled, tmp_path, capsys):
    pos, neg = labelled
    policy = tmp_path / "red-triangle.yaml"
    shutil.copy(RED_TRIANGLE, policy)
    before = load_policy(policy)
    plot = tmp_path / "pr.png"
    code, out, _ = _run(
        capsys,
        "policy",
        "calibrate",
        str(policy),
        "--positives",
        str(pos),
        "--negatives",
        str(neg),
        "--plot",
        str(plot),
        "--write",
    )
    assert code == 0, out
    assert "on 60 positive and 60 negative images" in out
    m = re.search(r"suggested  (-?[\d.]+)\s+precision ([\d.]+)  recall ([\d.]+)", out)
    assert m, out
    threshold, precision, recall = float(m[1]), float(m[2]), float(m[3])
    assert precision >= 0.95 and recall > 0
    assert DEMO_NOTICE in out

    image = cv2.imread(str(plot), cv2.IMREAD_COLOR)
    assert image is not None and image.shape[2] == 3
    drawn = (image < 250).any(axis=2)
    assert drawn.mean() > 0.02  # axes, grid, text and the curve
    colourful = (image.max(axis=2).astype(int) - image.min(axis=2)) > 60
    assert colourful.sum() > 200  # the curve and its markers are in colour

    after = load_policy(policy)  # still validates
    assert after.policy.label("red-triangle").threshold == threshold
    assert after.policy.version == before.policy.version + 1
    assert after.policy.calibrated is True
    literal = f"{threshold:.4f}".rstrip("0")
    literal += "0" if literal.endswith(".") else ""
    v = before.policy.version
    expected = (
        RED_TRIANGLE.read_text()
        .replace(f"\nversion: {v}\n", f"\nversion: {v + 1}\n")
        .replace("\n" + THRESHOLD_LINE, f"\n    threshold: {literal}\n")
    )
    assert policy.read_text() == expected  # comments and layout kept


def test_calibrate_library_curve(labelled):
    pos, neg = labelled
    lp = load_policy(RED_TRIANGLE)
    result = policy_tools.calibrate(lp, _demo_model(), pos, neg, target_precision=0.95)
    assert (result.positives, result.negatives, result.skipped) == (60, 60, ())
    (curve,) = result.curves
    assert curve.margin == lp.policy.label("red-triangle").margin and curve.rule == "threshold"
    thresholds = [p.threshold for p in curve.points]
    assert thresholds == sorted(thresholds)
    recalls = [p.recall for p in curve.points]
    assert recalls == sorted(recalls, reverse=True)  # recall only falls as the threshold rises
    best = curve.suggested
    assert best is not None and best.precision >= 0.95
    reaching = [p for p in curve.points if p.precision >= 0.95]
    assert best.recall == max(p.recall for p in reaching)  # the best recall at the target...
    assert best.precision == max(p.precision for p in reaching if p.recall == best.recall)
    # ...with the threshold in the gap below the first point that has those numbers
    first = min(
        (p for p in curve.points if (p.recall, p.precision) == (best.recall, best.precision)),
        key=lambda p: p.threshold,
    )
    assert best.threshold <= first.threshold
    assert all(p.threshold < best.threshold for p in curve.points if p.threshold < first.threshold)


def test_calibrate_a_probability_label(labelled, tmp_path):
    pos, neg = labelled
    policy = tmp_path / "red-triangle.yaml"
    text = RED_TRIANGLE.read_text().replace(THRESHOLD_LINE, "    probability: 0.6\n")
    policy.write_text(text)
    lp = load_policy(policy)
    result = policy_tools.calibrate(lp, _demo_model(), pos, neg, label="red-triangle")
    (curve,) = result.curves
    assert curve.rule == "probability" and curve.current == 0.6
    assert all(0.0 < p.threshold < 1.0 for p in curve.points)
    assert curve.suggested is not None and curve.suggested.precision >= 0.95
    written = policy_tools.write_threshold(lp, "red-triangle", curve.suggested.threshold)
    assert written.policy.label("red-triangle").probability == curve.suggested.threshold
    assert written.policy.label("red-triangle").threshold is None


# --------------------------------------------------------------------------------------------
# write_threshold, on its own


FLOW = """\
# a flow-style label; the comments must survive
id: flow
version: 7
description: d
owner: o
severity: low
action: flag
labels: [{name: a, prompts: [x], threshold: 0.3}, {name: b, prompts: [y], threshold: 0.3}]
"""


def test_write_threshold_edits_the_right_label_and_keeps_the_rest(tmp_path):
    path = tmp_path / "flow.yaml"
    path.write_text(FLOW)
    lp = policy_tools.write_threshold(load_policy(path), "b", 0.41237)
    assert lp.policy.label("b").threshold == 0.4124 and lp.policy.label("a").threshold == 0.3
    assert lp.policy.version == 8 and lp.policy.calibrated is False  # no key: none added
    assert path.read_text() == FLOW.replace("version: 7", "version: 8").replace(
        "threshold: 0.3}]", "threshold: 0.4124}]"
    )


def test_write_threshold_refuses_bad_values_and_stale_policies(tmp_path):
    from pipeline.errors import ConfigError, PolicyError

    path = tmp_path / "flow.yaml"
    path.write_text(FLOW)
    lp = load_policy(path)
    with pytest.raises(PolicyError, match=r"flow\.yaml:\d+:\d+: labels\.0\.threshold"):
        policy_tools.write_threshold(lp, "a", 3.0)
    with pytest.raises(ConfigError, match="no label 'c'"):
        policy_tools.write_threshold(lp, "c", 0.2)
    assert path.read_text() == FLOW  # nothing written
    path.write_text(FLOW + "\n")
    with pytest.raises(PolicyError, match="changed since it was loaded"):
        policy_tools.write_threshold(lp, "a", 0.2)


# --------------------------------------------------------------------------------------------
# the command line itself


def test_help_names_the_demo_model_and_needs_no_torch():
    code = (
        "import sys, contextlib, io\n"
        "from consumers.cli import main\n"
        "buf = io.StringIO()\n"
        "with contextlib.redirect_stdout(buf):\n"
        "    assert main(['policy', 'test', '--help']) == 0\n"
        "    assert main(['policy', 'lint']) == 0\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "print(buf.getvalue())\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    help_text = " ".join(proc.stdout.split())
    assert f"Default: {DEMO_MODEL}, the bundled demo model" in help_text
    assert "only knows synthetic shapes, colours" in help_text
    assert "--model ViT-B/32" in help_text


def test_usage_errors_exit_2(capsys):
    assert main(["policy", "test", str(DEMO), "--sample-fps", "0"]) == 2
    assert main(["policy", "calibrate", str(RED_TRIANGLE), "--positives", "x"]) == 2
    assert main(["policy", "calibrate", str(RED_TRIANGLE), "--positives", "x", "--negatives",
                 "y", "--target-precision", "1.5"]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "must be a positive number" in err and "must be in (0, 1]" in err


def test_exported_names():
    assert set(policy_tools.__all__) == {
        "Calibration",
        "CalibrationCurve",
        "CurvePoint",
        "ExampleResult",
        "Explanation",
        "ImageExplanation",
        "Incident",
        "LabelExplanation",
        "LintReport",
        "PromptScore",
        "TimelineFrame",
        "VideoExplanation",
        "calibrate",
        "explain",
        "lint",
        "lint_text",
        "run_examples",
        "write_pr_plot",
        "write_threshold",
        "write_thresholds",
    }
