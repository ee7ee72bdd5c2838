"""``clipguard scan``: moderate stored video (files, folders, URLs) on this machine.

:func:`add_scan_parser` adds the subcommand to the ``clipguard`` parser; :func:`run_scan` runs
it. The scanning itself is :class:`pipeline.scan.Scanner`; this module adds what a command
needs around it: defaults, the output folder, resuming, progress and the exit status.

The output folder (``--out``) holds

``scores.jsonl``
    one ``clipguard.score/1`` record per scored frame (tile), as on ``clipguard.scores``,
    with ``source`` the input's absolute path or URL (also its stream id);
``flags.jsonl``
    the ``clipguard.flag/1`` events (open and closed) of every incident, as on
    ``clipguard.flags``;
``summary.json``
    per input: status, duration, frames scored, incidents, and for a failed input its typed
    error (``{"class": "InvalidMedia", "message": ...}``); the model, policy set and settings;
``report.html``
    the report (:mod:`pipeline.scan.report`), with ``thumbnails/`` holding the peak frames it shows;
``.clipguard-scan/``
    what resuming needs: one line per input done, with the key it was scanned under.

With ``--kafka BOOTSTRAP`` the inputs are scanned by the worker fleet instead, as scan jobs
(:mod:`consumers.jobs`): one job per input, its path made absolute (the workers read it at the
same path, or fetch the URL), followed on ``clipguard.job-status`` until each is done or
failed; then the jobs' records are read back from the scores and flags topics and the same
files are written (the incidents' peak frames stay on the workers: the report shows none). The
workers' model and policies scan; ``--policies`` only names the files that describe them in
the report. Every input is scanned again (the key is known only once a job is done); the keys
written let a later local scan resume from the folder.

Resuming: an input is skipped when the folder already holds its results under the same key
(:func:`pipeline.scan.content_key`: the file's SHA-256, or the URL, with the model, the
policy set and the sampling settings) and it either was scanned or failed in a way that its
bytes would fail again (:data:`pipeline.scan.PERMANENT_ERRORS`); ``--force`` rescans. A
rescanned input's earlier records are replaced. The folder accumulates: results of inputs
from earlier runs stay in it (and in its summary and report) until it is deleted.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import fcntl
import importlib
import json
import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final

from consumers.argtypes import fraction, positive_float, positive_int

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from consumers.jobs import JobOutcome
    from pipeline.models.model import CLIP
    from pipeline.policy import PolicySet
    from pipeline.sampling import Sampling
    from pipeline.scan import FileScan, ScanInput, ScanOptions

__all__ = ["EXIT_OK", "EXIT_PARTIAL", "EXIT_USAGE", "add_parser", "run_scan"]

_log = logging.getLogger(__name__)

#: Every input was scanned.
EXIT_OK: Final = 0
#: Usage error (argparse's status).
EXIT_USAGE: Final = 2
#: The scan ran, but at least one input could not be scanned (see summary.json).
EXIT_PARTIAL: Final = 3
# (1: the scan could not run at all: bad policies, unknown model, no inputs; the CLI's status)

_STATE_DIR: Final = ".clipguard-scan"
_SUMMARY_FORMAT: Final = 1
_THUMB_PNG_MAX: Final = 128  # peak frames up to this side are PNG, larger ones JPEG
_DEMO_MODEL: Final = "clipguard-demo"  # pipeline.models.DEMO_MODEL, without importing torch
_RUNNING_EVERY_S: Final = 5.0  # at most one progress line this often for running jobs

_EPILOG = f"""\
inputs:
  files and folders (searched recursively for video files: .mp4 .mov .mkv .webm .ts ...),
  http(s) URLs (the type comes from the URL's extension), and text files (.txt .list .lst)
  listing any of these, one a line, # for comments, relative paths from the list's folder.

examples:
  clipguard scan uploads/                          demo model, policies/demo, 1 frame a second
  clipguard scan uploads/ --model ViT-B/32 --policies policies/ --out scan-2026-11
  clipguard scan urls.txt --keyframes --fit tiles
  clipguard scan uploads/ --out scan-2026-11       again: scans only new or changed files
  clipguard scan --kafka kafka:9092 /mnt/uploads/   as jobs on the worker fleet (paths the
                                                   workers can read, or URLs)

output (in --out): scores.jsonl, flags.jsonl, summary.json, report.html, thumbnails/

exit status:
  {EXIT_OK}  every input was scanned
  1  the scan could not run (unknown model, invalid policies, no inputs found)
  {EXIT_USAGE}  usage error
  {EXIT_PARTIAL}  some inputs could not be scanned: each is in summary.json and the report
     with its error class (InvalidMedia, UnsupportedMedia, MediaUnavailable, ...)
"""


# --------------------------------------------------------------------------- parser


def add_parser(subparsers: Any) -> None:
    """Add ``clipguard scan``."""
    scan = subparsers.add_parser(
        "scan",
        help="scan stored video (files, folders, URLs) and write results and a report",
        description=(
            "Decode, sample and score stored video with a CLIP model against moderation\n"
            "policies, on this machine (or with --kafka as jobs on the worker fleet). Writes\n"
            "scores.jsonl and flags.jsonl (the records of the clipguard.scores and\n"
            "clipguard.flags topics), summary.json and report.html. A bad input never stops\n"
            "the scan. A rerun into the same --out skips inputs already scanned with the same\n"
            "content, model, policies and sampling."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    scan.add_argument(
        "paths", nargs="+", metavar="PATH", help="video files, folders, http(s) URLs, list files"
    )
    scan.add_argument(
        "--policies",
        action="append",
        metavar="PATH",
        help="policy file or folder; repeatable (default: policies/demo for the demo model, "
        "policies/ for any other)",
    )
    scan.add_argument(
        "--model",
        metavar="NAME|PATH",
        help=f"CLIP model: a registry name or a weights file (default: {_DEMO_MODEL}, the "
        "bundled demo model, which only knows synthetic shapes, colours and a few words)",
    )
    how = scan.add_mutually_exclusive_group()
    how.add_argument(
        "--sample-fps",
        type=positive_float,
        metavar="N",
        help="score N frames per second of video (default: 1)",
    )
    how.add_argument("--keyframes", action="store_true", help="score keyframes only")
    how.add_argument(
        "--scene-change",
        type=fraction,
        nargs="?",
        const=-1.0,
        metavar="T",
        help="score the first frame and every scene change (optional threshold T in 0..1)",
    )
    scan.add_argument(
        "--fit",
        choices=("pad", "crop", "tiles"),
        default="pad",
        help="how frames become the model's square input (default: %(default)s)",
    )
    scan.add_argument(
        "--out",
        default="clipguard-scan",
        metavar="DIR",
        help="output folder (default: %(default)s)",
    )
    scan.add_argument("--force", action="store_true", help="rescan inputs already scanned in --out")
    scan.add_argument(
        "--decoders",
        type=positive_int,
        default=max(1, min(4, os.cpu_count() or 1)),
        metavar="N",
        help="decode processes (default: %(default)s)",
    )
    scan.add_argument(
        "--batch-size",
        type=positive_int,
        default=64,
        metavar="N",
        help="frames per encoder batch (default: %(default)s)",
    )
    scan.add_argument(
        "--timeout",
        type=positive_float,
        default=600.0,
        metavar="S",
        help="wall-clock seconds to decode one input (default: %(default)s); with --kafka: "
        "stop following the jobs when none has reported for S seconds",
    )
    scan.add_argument(
        "--kafka",
        metavar="BOOTSTRAP",
        help="scan on the worker fleet: submit one job per input to clipguard.jobs on these "
        "brokers (host:port[,...]) and follow them (the workers' model and policies scan)",
    )
    scan.set_defaults(func=run_scan)


# --------------------------------------------------------------------------- command


def run_scan(args: argparse.Namespace) -> int:
    """The ``clipguard scan`` command; returns the exit status."""
    from pipeline.compiler import PolicyCompiler
    from pipeline.decode import Limits
    from pipeline.decode_pool import DecodePool
    from pipeline.encoder import Encoder
    from pipeline.errors import ConfigError
    from pipeline.policy import load_policies
    from pipeline.scan import Scanner, ScanOptions, discover

    options = ScanOptions(
        sampling=_sampling(args), fit=args.fit, limits=Limits(timeout=args.timeout)
    )
    inputs = discover(args.paths)
    if not inputs:
        raise ConfigError(f"no video files found in {', '.join(args.paths)}")
    if args.kafka:
        return _run_jobs(args, inputs)

    model, demo = _load_model(args.model or _DEMO_MODEL)
    if demo:  # load_clip has logged the demo notice; this says why it is in use
        default = "the default" if not args.model else "as asked"
        print(
            f"note: scanning with the demo model {model.name} ({default}): it only knows "
            "synthetic shapes, colours and a few printed words; pass --model for real "
            "moderation",
            file=sys.stderr,
        )
    if args.policies:
        policy_paths = [Path(p) for p in args.policies]
    else:
        policy_paths = [_default_policies(demo)]
        print(f"note: policies from {policy_paths[0]} (pass --policies to change)", file=sys.stderr)
    policies = load_policies(policy_paths)
    for lp in policies:
        if lp.policy.model is not None and lp.policy.model != model.name:
            print(
                f"note: policy {lp.policy.id} was written for {lp.policy.model}; its "
                f"thresholds may mean nothing with {model.name}",
                file=sys.stderr,
            )
    compiled = PolicyCompiler(model).compile(policies)

    out = _OutDir(Path(args.out))
    with out.locked():
        known = out.load_state()
        out.save_policy_set(compiled.policy_set, _describe_policies(policies))
        plan = _plan(inputs, known, model, compiled.policy_set, options, force=args.force)
        out.drop_records(set(plan.todo) | {e["source"] for e in plan.failed})
        for entry in plan.failed:  # failed before decoding: missing, unreadable, bad scheme
            out.append(entry, [], [])
            known[entry["source"]] = entry
        skipped = sum(v == "skipped" for v in plan.run.values())
        if skipped:
            _log.info(
                "%d of %d inputs already scanned in %s with this model, policy set and "
                "sampling: skipped (--force rescans them)",
                skipped,
                len(plan.run),
                out.path,
            )
        frames = incidents = 0
        scan_started = time.monotonic()
        try:
            if plan.todo:
                encoder = Encoder(model, batch_size=args.batch_size)
                with DecodePool(args.decoders) as pool, _Progress(len(plan.todo)) as progress:
                    scanner = Scanner(encoder, compiled, policies, pool=pool, options=options)
                    for result in scanner.scan(list(plan.todo)):
                        key, sha = plan.todo[result.source]
                        entry = _entry(result, key, sha, model.name, compiled.policy_set)
                        for flag in entry["flags"]:
                            picture = result.peaks.get(flag["event_id"])
                            if picture is not None:
                                flag["thumbnail"] = out.write_thumbnail(flag["event_id"], picture)
                        out.append(entry, result.scores, result.flags)
                        known[result.source] = entry
                        frames += result.frames_scored
                        incidents += len(result.incidents)
                        progress.done(result)
        finally:  # interrupted too: the summary and report show what was done
            seconds = time.monotonic() - scan_started
            summary, report = _write_outputs(
                out,
                known,
                plan.run,
                model=model.name,
                weights=model.fingerprint(),
                demo=demo,
                policy_set=compiled.policy_set,
                options=options,
                frames=frames,
                seconds=seconds,
            )
    return _conclude(summary, out.path, report, frames=frames, seconds=seconds, incidents=incidents)


def _write_outputs(
    out: Any,
    known: Any,
    run: Any,
    *,
    model: str,
    weights: str,
    demo: bool,
    policy_set: str,
    options: ScanOptions,
    frames: int,
    seconds: float,
) -> tuple[dict[str, Any], Path]:
    """Write the summary (pruning thumbnails no incident shows) and the report."""
    from pipeline import __version__
    from pipeline.models import DEMO_NOTICE
    from pipeline.scan.report import write_report

    summary = _summary(
        known,
        run,
        model=model,
        weights=weights,
        demo=demo,
        notice=DEMO_NOTICE if demo else None,
        policy_set=policy_set,
        policy_sets=out.load_policy_sets(),
        options=options.describe(),
        version=__version__,
        frames=frames,
        seconds=seconds,
    )
    out.write_summary(summary)
    out.prune_thumbnails(summary)
    return summary, write_report(out.path)


def _conclude(
    summary: Mapping[str, Any],
    out: Path,
    report: Path,
    *,
    frames: int,
    seconds: float,
    incidents: int,
) -> int:
    """Print what the run did; its exit status."""
    mine = [f for f in summary["files"] if f["this_run"] is not None]
    failed = [f for f in mine if f["status"] == "failed"]
    now = sum(f["this_run"] == "scanned" and f["status"] == "scanned" for f in mine)
    earlier = sum(f["this_run"] == "skipped" and f["status"] == "scanned" for f in mine)
    rate = f" ({frames / seconds:.1f} frames/s)" if seconds > 0 and frames else ""
    print(
        f"scan: {len(mine)} inputs: {now} scanned, {earlier} scanned before (skipped), "
        f"{len(failed)} failed; {frames} frames scored in {seconds:.1f} s{rate}, "
        f"{incidents} incidents found"
    )
    for f in failed:
        print(f"failed: {f['source']}: {f['error']['class']}: {f['error']['message']}")
    print(f"results: {out}/ (scores.jsonl, flags.jsonl, summary.json)")
    print(f"report: {report}")
    return EXIT_PARTIAL if failed else EXIT_OK


def _run_jobs(args: argparse.Namespace, inputs: Sequence[ScanInput]) -> int:
    """``clipguard scan --kafka``: the inputs as scan jobs on the worker fleet."""
    from consumers.jobs import JobClient, job_options
    from pipeline.errors import ClipguardError
    from pipeline.events import JobRequest, JobStatus
    from pipeline.models import list_models
    from pipeline.policy import load_policies
    from pipeline.sampling import DEFAULT_SCENE_THRESHOLD

    if args.model:
        print(
            "clipguard scan: error: --model cannot be used with --kafka (the workers' model scans)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if getattr(args, "log_level", "INFO") != "DEBUG":  # it logs every connection at INFO
        logging.getLogger("kafka").setLevel(logging.CRITICAL)
    scene = args.scene_change
    request_options: dict[str, Any] = {
        "sample_fps": None if args.keyframes or scene is not None else args.sample_fps or 1.0,
        "keyframes": args.keyframes,
        "scene_change": None if scene is None else DEFAULT_SCENE_THRESHOLD if scene < 0 else scene,
        "fit": args.fit,
    }
    todo = [item for item in inputs if item.error is None]
    requests = [JobRequest(uri=item.source, **request_options) for item in todo]
    options = job_options(requests[0] if requests else JobRequest(uri="/", **request_options))
    run = {item.source: "scanned" for item in inputs}

    out = _OutDir(Path(args.out))
    with out.locked():
        known = out.load_state()
        out.drop_records(set(run))
        frames = incidents = 0
        started = time.monotonic()
        outcomes: list[JobOutcome] = []
        try:
            with _Progress(len(todo)) as progress:

                def on_status(job: JobOutcome, status: JobStatus) -> None:
                    source = status.source or job.request.uri
                    if status.state == "failed":
                        error = (str(status.error_class), str(status.reason))
                        progress.finished(source, frames=0, incidents=0, error=error, seconds=0)
                    elif status.state == "done":
                        seconds = status.at - (job.accepted_at or status.at)
                        progress.finished(
                            source,
                            frames=status.frames_scored,
                            incidents=status.flags,
                            error=None,
                            seconds=seconds,
                        )
                    else:
                        progress.running(source, status.frames_scored, status.frames_total)

                if requests:
                    print(
                        f"scan: {len(requests)} jobs to {args.kafka}; following "
                        "clipguard.job-status",
                        file=sys.stderr,
                    )
                    outcomes = JobClient(args.kafka).run(
                        requests, timeout=args.timeout, on_status=on_status
                    )
        finally:  # interrupted too: the summary and report show what was done
            seconds = time.monotonic() - started
            finals = [o.final for o in outcomes if o.final is not None]
            model = next((s.model for s in finals if s.model), None) or "unknown"
            weights = next((s.weights_sha256 for s in finals if s.weights_sha256), "") or ""
            policy_set = next((s.policy_set for s in reversed(finals) if s.policy_set), "") or ""
            demo = any(info.demo and info.name == model for info in list_models())
            for item in inputs:  # failed before submission: missing, unreadable, bad scheme
                if item.error is not None:
                    known[item.source] = _failed_entry(item.source, item.error, model, policy_set)
                    out.append(known[item.source], [], [])
            for job in outcomes:
                entry = _job_entry(job, options, args.timeout)
                out.append(entry, job.scores, job.flags)
                known[entry["source"]] = entry
                frames += entry["frames_scored"]
                incidents += len(entry["flags"])
            if policy_set:
                try:
                    paths = [Path(p) for p in args.policies or [_default_policies(demo)]]
                    policies = load_policies(paths)
                except ClipguardError as e:
                    print(f"note: cannot describe the workers' policies: {e}", file=sys.stderr)
                else:
                    if policies.digest == policy_set:
                        out.save_policy_set(policy_set, _describe_policies(policies))
                    else:
                        print(
                            f"note: the policies in {', '.join(map(str, paths))} are not the "
                            f"workers' set {policy_set} (pass --policies with theirs): the "
                            "report shows no thresholds",
                            file=sys.stderr,
                        )
            summary, report = _write_outputs(
                out,
                known,
                run,
                model=model,
                weights=weights,
                demo=demo,
                policy_set=policy_set,
                options=options,
                frames=frames,
                seconds=seconds,
            )
    return _conclude(summary, out.path, report, frames=frames, seconds=seconds, incidents=incidents)


def _job_entry(job: JobOutcome, options: ScanOptions, timeout: float) -> dict[str, Any]:
    """A finished (or unfinished) job's entry, as a local scan of its input would write it."""
    from pipeline.errors import DecodeError
    from pipeline.scan import FileScan, content_key, file_sha256

    status = job.final
    source = (status.source if status is not None else None) or job.request.uri
    if status is None or status.state != "done":
        last = job.last
        model = (last.model if last is not None else None) or "unknown"
        policy_set = (last.policy_set if last is not None else None) or ""
        if status is None:
            state = last.state if last is not None else "not taken by any worker"
            error = (
                "JobNotFinished",
                f"job {job.job_id}: no final status, none of the jobs reported for {timeout:g} "
                f"s (last: {state}); it may still finish on the workers",
            )
        else:
            error = (str(status.error_class), str(status.reason))
        return _failed_entry(source, error, model, policy_set)
    model, weights, policy_set = (
        str(status.model),
        str(status.weights_sha256),
        str(status.policy_set),
    )
    sha: str | None = None
    key: str | None = None
    try:
        if "://" not in source:
            sha = file_sha256(source)
        key = content_key(
            sha or f"url:{source}",
            model=model,
            weights=weights,
            policy_set=policy_set,
            options=options,
        )
    except DecodeError:  # not readable here (only by the workers): not resumable locally
        pass
    result = FileScan(
        source,
        scores=job.scores,
        flags=job.flags,
        duration=status.duration,
        width=status.width,
        height=status.height,
        codec=status.codec,
        frames_decoded=status.frames_decoded or 0,
        frames_scored=status.frames_scored,
        decode_errors=status.decode_errors or 0,
        first_decode_error=status.first_decode_error,
        seconds=status.at - (job.accepted_at or status.at),
    )
    return _entry(result, key, sha, model, policy_set)


@dataclass
class _Plan:
    run: dict[str, str]  # this run's inputs, in order: source -> "scanned" | "skipped"
    todo: dict[str, tuple[str, str | None]]  # source -> (scan key, SHA-256 of a file)
    failed: list[dict[str, Any]]  # entries of inputs that failed before decoding


def _plan(
    inputs: Sequence[ScanInput],
    known: Mapping[str, Mapping[str, Any]],
    model: CLIP,
    policy_set: str,
    options: ScanOptions,
    *,
    force: bool,
) -> _Plan:
    """Which inputs to scan, which to skip (done before under the same key), and which
    failed already (missing, unreadable, an unsupported URL scheme)."""
    from pipeline.errors import DecodeError
    from pipeline.scan import PERMANENT_ERRORS, content_key, file_sha256

    permanent = {cls.__name__ for cls in PERMANENT_ERRORS}
    weights = model.fingerprint()
    plan = _Plan(run={}, todo={}, failed=[])
    for item in inputs:
        try:
            if item.error is not None:
                raise item.error
            sha = file_sha256(item.source) if item.kind == "file" else None
        except DecodeError as e:
            plan.failed.append(_failed_entry(item.source, e, model.name, policy_set))
            plan.run[item.source] = "scanned"
            continue
        key = content_key(
            sha or f"url:{item.source}",
            model=model.name,
            weights=weights,
            policy_set=policy_set,
            options=options,
        )
        before = known.get(item.source)
        if not force and before is not None and before.get("key") == key:
            error_class = (before.get("error") or {}).get("class")
            if before.get("status") == "scanned" or error_class in permanent:
                plan.run[item.source] = "skipped"
                continue
        plan.todo[item.source] = (key, sha)
        plan.run[item.source] = "scanned"
    return plan


def _sampling(args: argparse.Namespace) -> Sampling:
    from pipeline.sampling import DEFAULT_SCENE_THRESHOLD, Sampling

    if args.keyframes:
        return Sampling(mode="keyframes")
    if args.scene_change is not None:
        threshold = DEFAULT_SCENE_THRESHOLD if args.scene_change < 0 else args.scene_change
        return Sampling(mode="scene", scene_threshold=threshold)
    return Sampling(mode="fps", fps=args.sample_fps or 1.0)


def _load_model(name: str) -> tuple[CLIP, bool]:
    from pipeline.models import list_models, load_clip

    model = load_clip(name)
    demo = any(info.demo and info.name == model.name for info in list_models())
    return model, demo


def _default_policies(demo: bool) -> Path:
    """``policies/demo`` for the demo model, ``policies/`` otherwise: in the current folder,
    else in the clipguard checkout the package runs from."""
    import pipeline
    from pipeline.errors import ConfigError

    name = Path("policies", "demo") if demo else Path("policies")
    for base in (Path.cwd(), Path(pipeline.__file__).resolve().parent.parent):
        if (base / name).is_dir():
            return base / name
    raise ConfigError(f"no {name}/ folder here or beside clipguard: pass --policies")


def _describe_policies(policies: PolicySet) -> list[dict[str, Any]]:
    return [
        {
            "id": lp.policy.id,
            "version": lp.policy.version,
            "severity": lp.policy.severity,
            "action": lp.policy.action,
            "mode": lp.policy.mode,
            "model": lp.policy.model,
            "calibrated": lp.policy.calibrated,
            "path": str(lp.path),
            "labels": [
                {
                    "name": lab.name,
                    "threshold": lab.threshold,
                    "probability": lab.probability,
                    "margin": lab.margin,
                }
                for lab in lp.policy.labels
            ],
        }
        for lp in policies
    ]


# --------------------------------------------------------------------------- entries


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _entry(
    result: FileScan, key: str | None, sha: str | None, model: str, policy_set: str
) -> dict[str, Any]:
    """An input's line in the state and its entry in summary.json."""
    error = result.error
    return {
        "source": result.source,
        "status": "failed" if error is not None else "scanned",
        "key": key,
        "content_sha256": sha,
        "scanned_at": _now(),
        "model": model,
        "policy_set": policy_set,
        "duration": None if result.duration is None else round(result.duration, 3),
        "width": result.width,
        "height": result.height,
        "codec": result.codec,
        "frames_decoded": result.frames_decoded,
        "frames_scored": result.frames_scored,
        "decode_errors": result.decode_errors,
        "first_decode_error": result.first_decode_error,
        "flags": [
            {
                "event_id": f.event_id,
                "policy": f.policy,
                "policy_version": f.policy_version,
                "label": f.label,
                "severity": f.severity,
                "action": f.action,
                "start_ts": f.start_ts,
                "end_ts": f.end_ts,
                "peak_score": f.peak_score,
                "peak_ts": f.peak_ts,
                "threshold": f.threshold,
                "top_prompt": f.top_prompt,
            }
            for f in result.incidents
        ],
        "shadow_incidents": result.shadow_incidents,
        "error": None if error is None else {"class": type(error).__name__, "message": str(error)},
        "seconds": round(result.seconds, 3),
    }


def _failed_entry(
    source: str, error: Exception | tuple[str, str], model: str, policy_set: str
) -> dict[str, Any]:
    """The entry of an input that failed before its scan (or as a job): ``error`` is the
    exception, or its class name and message."""
    cls, message = error if isinstance(error, tuple) else (type(error).__name__, str(error))
    return {
        "source": source,
        "status": "failed",
        "key": None,
        "content_sha256": None,
        "scanned_at": _now(),
        "model": model,
        "policy_set": policy_set,
        "duration": None,
        "width": None,
        "height": None,
        "codec": None,
        "frames_decoded": 0,
        "frames_scored": 0,
        "decode_errors": 0,
        "first_decode_error": None,
        "flags": [],
        "shadow_incidents": 0,
        "error": {"class": cls, "message": message},
        "seconds": 0.0,
    }


def _summary(
    known: Mapping[str, dict[str, Any]],
    run: Mapping[str, str],
    *,
    model: str,
    weights: str,
    demo: bool,
    notice: str | None,
    policy_set: str,
    policy_sets: Mapping[str, Any],
    options: Mapping[str, Any],
    version: str,
    frames: int,
    seconds: float,
) -> dict[str, Any]:
    # this run's inputs in the order given, then those of earlier runs
    order = [*run, *(source for source in known if source not in run)]
    files = [
        {**{k: v for k, v in known[source].items() if k != "key"}, "this_run": run.get(source)}
        for source in order
        if source in known
    ]
    mine = [f for f in files if f["this_run"] is not None]
    return {
        "format": _SUMMARY_FORMAT,
        "generated_at": _now(),
        "clipguard_version": version,
        "model": {
            "name": model,
            "weights_sha256": weights,
            "demo": demo,
            "notice": notice,
        },
        "policy_set": policy_set,
        "policy_sets": dict(policy_sets),
        "settings": dict(options),
        "run": {
            "inputs": len(run),
            "scanned": sum(1 for v in run.values() if v == "scanned"),
            "skipped": sum(1 for v in run.values() if v == "skipped"),
            "failed": sum(1 for f in mine if f["status"] == "failed"),
            "frames_scored": frames,
            "seconds": round(seconds, 3),
            "frames_per_second": round(frames / seconds, 2) if seconds > 0 else None,
        },
        "files": files,
    }


# --------------------------------------------------------------------------- output folder


class _OutDir:
    """The scan's output folder; see the module docstring for its files."""

    def __init__(self, path: Path) -> None:
        self.path = path.absolute()
        self.state = self.path / _STATE_DIR
        self.state.mkdir(parents=True, exist_ok=True)
        self.journal = self.state / "state.jsonl"
        self.sets = self.state / "policy-sets.json"
        self.scores = self.path / "scores.jsonl"
        self.flags = self.path / "flags.jsonl"
        self.thumbs = self.path / "thumbnails"

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the folder's lock: one scan writes into a folder at a time."""
        from pipeline.errors import ConfigError

        with open(self.state / "lock", "w") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ConfigError(f"another scan is writing into {self.path}") from None
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def load_state(self) -> dict[str, dict[str, Any]]:
        """The latest entry of every input done, by source, in first-seen order."""
        entries: dict[str, dict[str, Any]] = {}
        if not self.journal.is_file():
            return entries
        with self.journal.open(encoding="utf-8") as fh:
            for line in fh:
                try:
                    entry = json.loads(line)
                    entries[str(entry["source"])] = entry
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut short by an interrupted run
        return entries

    def load_policy_sets(self) -> dict[str, Any]:
        try:
            data = json.loads(self.sets.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def save_policy_set(self, digest: str, description: list[dict[str, Any]]) -> None:
        sets = self.load_policy_sets()
        if sets.get(digest) != description:
            sets[digest] = description
            _write_atomic(self.sets, json.dumps(sets, indent=1, sort_keys=True) + "\n")

    def drop_records(self, sources: set[str]) -> None:
        """Remove the score and flag records of ``sources`` (about to be rescanned, or left
        half-written by an interrupted run)."""
        if not sources:
            return
        for path in (self.scores, self.flags):
            if not path.is_file():
                continue
            tmp = path.with_name(path.name + ".tmp")
            kept = dropped = 0
            with path.open("rb") as src, tmp.open("wb") as dst:
                for line in src:
                    try:
                        source = json.loads(line).get("source")
                    except ValueError:
                        source = None  # a line cut short: drop it
                    if source is None or source in sources:
                        dropped += 1
                        continue
                    dst.write(line)
                    kept += 1
            if dropped:
                tmp.replace(path)
                _log.debug("%s: dropped %d earlier records, kept %d", path, dropped, kept)
            else:
                tmp.unlink()

    def append(self, entry: dict[str, Any], scores: Iterable[Any], flags: Iterable[Any]) -> None:
        """Append an input's records, then its state line: a run interrupted between the two
        rescans the input next time (and drops the records written so far)."""
        for path, records in ((self.scores, scores), (self.flags, flags)):
            with path.open("ab") as fh:
                fh.writelines(r.to_json() + b"\n" for r in records)
        with self.journal.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry, sort_keys=True) + "\n")

    def write_thumbnail(self, event_id: str, picture: npt.NDArray[np.uint8]) -> str:
        """Store a peak frame; its path relative to the folder."""
        import cv2

        self.thumbs.mkdir(exist_ok=True)
        png = max(picture.shape[:2]) <= _THUMB_PNG_MAX
        name = f"{event_id}.{'png' if png else 'jpg'}"
        bgr = picture[:, :, ::-1]
        ok, data = cv2.imencode(".png" if png else ".jpg", bgr)
        if not ok:  # pragma: no cover - cv2 encodes any uint8 RGB picture
            raise OSError(f"cannot encode the peak frame of {event_id}")
        (self.thumbs / name).write_bytes(data.tobytes())
        return f"thumbnails/{name}"

    def prune_thumbnails(self, summary: Mapping[str, Any]) -> None:
        """Delete thumbnails no incident in the summary refers to."""
        if not self.thumbs.is_dir():
            return
        used = {
            Path(flag["thumbnail"]).name
            for f in summary["files"]
            for flag in f.get("flags", [])
            if flag.get("thumbnail")
        }
        for path in self.thumbs.iterdir():
            if path.name not in used:
                path.unlink(missing_ok=True)

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        _write_atomic(self.path / "summary.json", json.dumps(summary, indent=2) + "\n")


def _plural(n: int, one: str) -> str:
    return f"{n} {one if n == 1 else one + 's'}"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


# --------------------------------------------------------------------------- progress


class _Progress:
    """Files done of total, frames/s, ETA and flags so far: a tqdm bar when ``stream`` is a
    terminal (and tqdm is installed), else one log line per input."""

    def __init__(self, total: int, stream: IO[str] | None = None) -> None:
        stream = stream if stream is not None else sys.stderr
        self.total = total
        self.files = self.frames = self.incidents = self.failed = 0
        self.started = time.monotonic()
        self._last_running = 0.0
        self._bar: Any = None
        if stream.isatty():
            try:
                tqdm: Any = importlib.import_module("tqdm")
            except ImportError:  # pragma: no cover - tqdm is a dependency
                return
            self._bar = tqdm.tqdm(
                total=total, unit="file", file=stream, dynamic_ncols=True, desc="scan"
            )

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.close()

    def done(self, result: FileScan) -> None:
        error = None if result.error is None else (type(result.error).__name__, str(result.error))
        self.finished(
            result.source,
            frames=result.frames_scored,
            incidents=len(result.incidents),
            error=error,
            seconds=result.seconds,
        )

    def running(self, source: str, frames: int, total: int | None) -> None:
        """An input in progress elsewhere (a scan job): a log line at most every 5 s."""
        now = time.monotonic()
        if self._bar is not None or now - self._last_running < _RUNNING_EVERY_S:
            return
        self._last_running = now
        of = f" of {total}" if total is not None else ""
        _log.info("[%d/%d done] %s: %d%s frames scored", self.files, self.total, source, frames, of)

    def finished(
        self,
        source: str,
        *,
        frames: int,
        incidents: int,
        error: tuple[str, str] | None,
        seconds: float,
    ) -> None:
        """An input done: scanned (``error`` None) or failed (its class name and message)."""
        self.files += 1
        self.frames += frames
        self.incidents += incidents
        self.failed += error is not None
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = self.frames / elapsed
        if self._bar is not None:
            self._bar.set_postfix_str(
                f"{rate:.1f} frames/s, {self.incidents} flags, {self.failed} failed",
                refresh=False,
            )
            self._bar.update(1)
            return
        eta = elapsed / self.files * (self.total - self.files)
        if error is not None:
            what = f"FAILED {error[0]}: {error[1]}"
        else:
            what = f"{frames} frames, {_plural(incidents, 'incident')} ({seconds:.1f} s)"
        _log.info(
            "[%d/%d] %s: %s | %.1f frames/s, %d flags so far, eta %.0f s",
            self.files,
            self.total,
            source,
            what,
            rate,
            self.incidents,
            eta,
        )
