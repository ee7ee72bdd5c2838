"""``clipguard policy {lint,compile,test,explain,calibrate,backtest}``: tools for writing moderation
policies. Every command but ``lint`` scores with ``--model``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from consumers.cli import store
from consumers.cli.common import (
    DEMO_MODEL,
    PROG,
    add_command,
    add_group,
    add_model_option,
    add_sample_fps_option,
    load_model,
    plural,
    print_table,
)

if TYPE_CHECKING:
    from pipeline.models.base import ImageTextModel
    from pipeline.policies import LoadedPolicy
    from pipeline.policies.tools import ImageExplanation, VideoExplanation

__all__ = ["add_parser"]

_MODEL_HELP = (
    "CLIP model to score with: a registry name (see `clipguard models list`) or a weights "
    f"file. Default: {DEMO_MODEL}, the bundled demo model, which only knows synthetic "
    "shapes, colours and a few printed words. For real policies download a real CLIP "
    "(`clipguard models download ViT-B/32`) and pass `--model ViT-B/32`."
)

_EPILOG = """\
examples:
  clipguard policy lint policies/
  clipguard policy compile                 the bundled demo policies, for the demo model
  clipguard policy test                    run the demo policies' regression examples
  clipguard policy explain red-triangle.yaml red-square.png
  clipguard policy calibrate policies/weapons.yaml --model ViT-B/32 \\
      --positives data/weapons/yes --negatives data/weapons/no --plot pr.png --write

Every command but lint scores with --model, by default the bundled demo model
clipguard-demo, which only knows synthetic shapes, colours and a few printed words.
"""


def add_parser(subparsers: Any) -> None:
    """Add ``clipguard policy {lint,compile,test,explain,calibrate,backtest}``."""
    _, commands = add_group(
        subparsers,
        "policy",
        help="lint, compile, test, explain, calibrate and backtest moderation policies",
        description="Tools for writing moderation policies (YAML files, one policy a file): "
        "validate them, compile them for a model, run their regression examples, see why a "
        "picture is flagged or not, and calibrate thresholds on labelled images.",
        epilog=_EPILOG,
    )
    lint = add_command(
        commands,
        "lint",
        help="validate policy files",
        description="Load and validate policy files, and check that the examples and exemplars "
        "they name exist, that each label's rule is one its model can produce and that every "
        "prompt fits the model's text context (the model each policy names, or --model; its "
        "weights are not loaded). Each problem is printed as file:line:col: message; the exit "
        "status is 1 if there are any.",
    )
    _add_paths(lint)
    lint.add_argument(
        "--model",
        metavar="NAME",
        help="check every policy against this registry model instead of the one it names",
    )
    lint.set_defaults(func=_lint)

    compile_ = add_command(
        commands,
        "compile",
        help="compile policies for a model into the policy cache",
        description="Encode every policy's prompts, negatives and exemplars with the model and "
        "store the result in the policy cache ($CLIPGUARD_POLICY_CACHE), so that workers "
        "start without running the text encoder. Prints the rows of each policy and the "
        "cache hits and misses.",
    )
    _add_paths(compile_)
    _add_model(compile_)
    compile_.set_defaults(func=_compile)

    test = add_command(
        commands,
        "test",
        help="run the policies' regression examples",
        description="Score every example listed under `examples:` in the policies, as the "
        "pipeline would (videos through the policy's temporal rule), and print a pass/fail "
        "table. The exit status is 1 if any example fails or cannot be decoded.",
    )
    _add_paths(test)
    _add_model(test)
    _add_sample_fps(test)
    test.set_defaults(func=_test)

    explain = add_command(
        commands,
        "explain",
        help="show why a policy flags an image or video, or not",
        description="For an image: every label's score, threshold, margin over its best "
        "negative, probability, and the score of each single prompt and negative. For a "
        "video: every label's score at each sampled frame, and the incidents the policy's "
        "temporal rule opens.",
    )
    explain.add_argument("policy_file", metavar="POLICY_FILE", help="one policy file (.yaml)")
    explain.add_argument("media", metavar="MEDIA", help="an image (jpg, png, webp) or a video")
    _add_model(explain)
    _add_sample_fps(explain)
    explain.set_defaults(func=_explain)

    _add_calibrate_parser(commands)
    store.add_backtest_parser(commands)


def _add_calibrate_parser(commands: Any) -> None:
    calibrate = add_command(
        commands,
        "calibrate",
        help="suggest thresholds from labelled images",
        description="Score every image (jpg, png, webp; folders searched recursively) of a "
        "positives and a negatives folder, sweep each label's threshold over the observed "
        "scores (keeping its margin rule) and suggest the threshold with the best recall "
        "whose precision reaches the target, placed midway in the score gap below it. "
        "--write puts the suggestion into the policy file (comments kept), adds 1 to its "
        "version and sets `calibrated: true`.",
    )
    calibrate.add_argument("policy_file", metavar="POLICY_FILE", help="one policy file (.yaml)")
    calibrate.add_argument(
        "--positives", required=True, metavar="DIR", help="images the label should flag"
    )
    calibrate.add_argument(
        "--negatives", required=True, metavar="DIR", help="images the label should not flag"
    )
    calibrate.add_argument(
        "--target-precision",
        type=_precision,
        default=0.95,
        metavar="P",
        help="the precision the suggested threshold must reach, in (0, 1] (default: %(default)s)",
    )
    calibrate.add_argument(
        "--label", metavar="NAME", help="calibrate this label only (default: every label)"
    )
    calibrate.add_argument("--plot", metavar="PR.png", help="draw the precision-recall curves here")
    calibrate.add_argument(
        "--write",
        action="store_true",
        help="write the suggested threshold(s) into POLICY_FILE",
    )
    _add_model(calibrate)
    calibrate.set_defaults(func=_calibrate)


def _add_paths(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "paths",
        nargs="*",
        metavar="PATH",
        help="policy files, or folders of them (*.yaml); default: the bundled demo policies "
        f"for {DEMO_MODEL}, else policies/",
    )


def _paths(args: argparse.Namespace) -> list[str]:
    """The paths named, else the default policies of the model asked for (as scan and worker)."""
    from pipeline.policies.bundled import default_policies

    if args.paths:
        return list(args.paths)
    return [str(default_policies(demo=(args.model or DEMO_MODEL) == DEMO_MODEL))]


def _add_model(parser: argparse.ArgumentParser) -> None:
    add_model_option(parser, default=DEMO_MODEL, help=_MODEL_HELP)


def _add_sample_fps(parser: argparse.ArgumentParser) -> None:
    add_sample_fps_option(
        parser, default=2.0, help="frames per second of video to score (default: %(default)s)"
    )


def _precision(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], not {text}")
    return value


def _model_notes(policies: Iterable[LoadedPolicy], model: ImageTextModel, demo: bool) -> None:
    """Say when the model is a demo model, and when a policy was written for another model."""
    from pipeline.models import DEMO_NOTICE

    for lp in policies:
        written_for = lp.policy.model
        if written_for is not None and written_for != model.name:
            print(
                f"note: {lp.policy.id} was written for {written_for}; its thresholds may mean "
                f"nothing with {model.name}"
            )
    if demo:
        print(f"note: {DEMO_NOTICE}")


def _lint(args: argparse.Namespace) -> int:
    from pipeline.policies.tools import lint

    report = lint(_paths(args), model=args.model)
    for error in report.errors:
        print(error)
    for note in report.notes:
        print(f"note: {note}", file=sys.stderr)
    if not report.ok:
        print(f"{PROG}: {plural(len(report.errors), 'problem')} found", file=sys.stderr)
        return 1
    print(f"ok: {plural(report.policies, 'policy', 'policies')}")
    return 0


def _compile(args: argparse.Namespace) -> int:
    from pipeline.policies import load_policies
    from pipeline.policies.compile import PolicyCompiler

    policies = load_policies(_paths(args))
    model, demo = load_model(args.model)
    compiler = PolicyCompiler(model)
    compiled = compiler.compile(policies).compiled
    for lp in policies:
        labels = [lab for lab in compiled.labels if lab.policy == lp.policy.id]
        rows = sum(1 + len(lab.negative_rows) + len(lab.prompt_rows) for lab in labels)
        print(
            f"{lp.policy.id} v{lp.policy.version}: {plural(len(labels), 'label')}, "
            f"{plural(rows, 'row')} ({lp.path})"
        )
    rows, dim = compiled.matrix.shape
    print(
        f"compiled {plural(len(policies), 'policy', 'policies')} for {model.name}: "
        f"{rows} x {dim} matrix, policy set {compiled.policy_set}"
    )
    print(
        f"cache: {plural(compiler.hits, 'hit')}, {plural(compiler.misses, 'miss', 'misses')} "
        f"in {compiler.cache_dir}"
    )
    _model_notes(policies, model, demo)
    return 0


def _test(args: argparse.Namespace) -> int:
    from pipeline.policies import load_policies
    from pipeline.policies.tools import run_examples

    policies = load_policies(_paths(args))
    model, demo = load_model(args.model)
    results = run_examples(policies, model, sample_fps=args.sample_fps)
    if not results:
        print(f"no examples in {plural(len(policies), 'policy', 'policies')}")
        _model_notes(policies, model, demo)
        return 0
    headers = ("RESULT", "POLICY", "EXAMPLE", "EXPECT", "GOT", "SCORE", "DETAIL")
    table = []
    for r in results:
        detail = []
        if r.label is not None:
            detail.append(f"label {r.label}")
        if r.window is not None:
            lo, hi = r.window
            detail.append(f"window {max(lo, 0.0):.2f}-{hi:.2f} s")
        if r.kind == "video":
            spans = ", ".join(f"{i.label} {i.start_s:.2f}-{i.end_s:.2f} s" for i in r.incidents)
            detail.append(f"incidents: {spans or 'none'}")
        if r.error is not None:
            detail.append(f"error: {r.error}")
        table.append(
            (
                "pass" if r.passed else "FAIL",
                r.policy,
                r.path,
                r.expected,
                r.got or "error",
                "-" if r.best_score is None else f"{r.best_score:.3f}",
                "; ".join(detail),
            )
        )
    print_table(headers, table)
    failed = sum(not r.passed for r in results)
    print()
    print(
        f"{plural(len(results), 'example')}: {len(results) - failed} passed, {failed} failed "
        f"(model {model.name}, video sampled at {args.sample_fps:g} fps)"
    )
    _model_notes(policies, model, demo)
    return 1 if failed else 0


def _explain(args: argparse.Namespace) -> int:
    from pipeline.policies import load_policy
    from pipeline.policies.tools import ImageExplanation, explain

    lp = load_policy(args.policy_file)
    model, demo = load_model(args.model)
    result = explain(lp, model, args.media, sample_fps=args.sample_fps)
    if isinstance(result, ImageExplanation):
        _print_image_explanation(result, model.name)
    else:
        _print_video_explanation(result, model.name)
    _model_notes([lp], model, demo)
    return 0


def _print_image_explanation(result: ImageExplanation, model: str) -> None:
    print(f"policy {result.policy} v{result.version} on image {result.path} ({model})")
    for lab in result.labels:
        print()
        print(f"label {lab.label}: {'PASSES' if lab.passed else 'does not pass'}")
        if lab.threshold is not None:
            ok = lab.score >= lab.threshold
            print(f"  score        {lab.score:7.3f}  >= {lab.threshold:g}: {_yes(ok)}")
        else:
            print(f"  score        {lab.score:7.3f}  (cosine with the prompt ensemble)")
        if lab.margin is not None:
            worst = max(lab.negatives, key=lambda p: p.score)
            rule = ""
            if lab.margin_rule is not None:
                rule = f"  >= {lab.margin_rule:g}: {_yes(lab.margin >= lab.margin_rule)}"
            print(
                f"  margin       {lab.margin:+7.3f}{rule}  (score minus the best negative, "
                f"{worst.text!r} at {worst.score:.3f})"
            )
        if lab.probability is not None:
            rule = "  (softmax against the negatives)"
            if lab.probability_rule is not None:
                ok = lab.probability >= lab.probability_rule
                rule = f"  >= {lab.probability_rule:g}: {_yes(ok)}"
            print(f"  probability  {lab.probability:7.3f}{rule}")
        if lab.sigmoid is not None and lab.sigmoid_rule is not None:
            ok = lab.sigmoid >= lab.sigmoid_rule
            print(f"  sigmoid      {lab.sigmoid:7.3f}  >= {lab.sigmoid_rule:g}: {_yes(ok)}")
        print(f"  top prompt: {lab.top_prompt}")
        print("  prompts:")
        for p in lab.prompts:
            print(f"    {p.score:6.3f}  {p.text}")
        if lab.negatives:
            print("  negatives:")
            for p in lab.negatives:
                print(f"    {p.score:6.3f}  {p.text}")


def _print_video_explanation(result: VideoExplanation, model: str) -> None:
    print(
        f"policy {result.policy} v{result.version} on video {result.path} ({model}): "
        f"{plural(len(result.frames), 'frame')} sampled at {result.sample_fps:g} fps"
    )
    headers = ("T (s)", *result.labels)
    rows = [
        (
            f"{frame.t:.2f}",
            *(
                f"{score:.3f}{' *' if passed else '  '}"
                for score, passed in zip(frame.scores, frame.passed, strict=True)
            ),
        )
        for frame in result.frames
    ]
    print_table(headers, rows)
    print("(* passes the label's rule on that frame)")
    print("incidents:" if result.incidents else "incidents: none")
    for i in result.incidents:
        print(
            f"  {i.label}: {i.start_s:.2f}-{i.end_s:.2f} s, peak {i.peak_score:.3f} "
            f"at {i.peak_s:.2f} s"
        )


def _calibrate(args: argparse.Namespace) -> int:
    from pipeline.errors import ConfigError
    from pipeline.policies import load_policy
    from pipeline.policies.tools import calibrate, write_pr_plot, write_thresholds

    lp = load_policy(args.policy_file)
    model, demo = load_model(args.model)
    result = calibrate(
        lp,
        model,
        args.positives,
        args.negatives,
        target_precision=args.target_precision,
        label=args.label,
    )
    for skipped in result.skipped:
        print(f"skipped: {skipped}", file=sys.stderr)
    print(
        f"policy {lp.policy.id} v{lp.policy.version} on {result.positives} positive and "
        f"{result.negatives} negative images ({model.name})"
    )
    for curve in result.curves:
        margin = "" if curve.margin is None else f", margin >= {curve.margin:g} kept"
        print()
        print(f"label {curve.label} ({curve.rule}{margin}):")
        cur = curve.current_point
        if cur is None:
            print(f"  current    {curve.current:<8g} flags nothing on this data")
        else:
            print(
                f"  current    {curve.current:<8g} precision {cur.precision:.3f}  "
                f"recall {cur.recall:.3f}"
            )
        best = curve.suggested
        if best is None:
            print(f"  suggested  none: no threshold reaches precision {curve.target_precision:g}")
        else:
            print(
                f"  suggested  {best.threshold:<8g} precision {best.precision:.3f}  "
                f"recall {best.recall:.3f}  (best recall at precision >= "
                f"{curve.target_precision:g})"
            )
        step = max(1, len(curve.points) // 10)
        shown = curve.points[::step]
        print(f"  curve ({plural(len(curve.points), 'point')}, every {step}):")
        print(f"    {curve.rule:>11}  precision  recall")
        for p in shown:
            print(f"    {p.threshold:11.4f}  {p.precision:9.3f}  {p.recall:6.3f}")
    if args.plot:
        print()
        print(f"wrote {write_pr_plot(result.curves, args.plot)}")
    if args.write:
        missing = [c.label for c in result.curves if c.suggested is None]
        if missing:
            raise ConfigError(
                f"no threshold reaches precision {args.target_precision:g} for "
                f"{', '.join(missing)}; {lp.path} left unchanged"
            )
        values = {c.label: c.suggested.threshold for c in result.curves if c.suggested}
        written = write_thresholds(lp, values)
        print()
        for name, value in values.items():
            print(f"wrote {name}: {value:g} to {written.path}")
        print(f"version {lp.policy.version} -> {written.policy.version}")
    _model_notes([lp], model, demo)
    return 0


def _yes(ok: bool) -> str:
    return "yes" if ok else "no"
