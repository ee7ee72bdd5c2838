"""``clipguard scan``: moderate stored video (files, folders, URLs) on this machine, or with
``--bootstrap-servers`` (formerly ``--kafka``) as scan jobs on the worker fleet.

:func:`add_parser` adds the subcommand to the ``clipguard`` parser; :func:`run_scan` runs it.
The scanning itself is :class:`pipeline.scan.Scanner`, and what a scan writes (scores, flags,
summary, report, thumbnails, the keys that let a rerun resume) is
:mod:`pipeline.scan.outputs`; this module adds what a command needs around them: defaults,
progress, the exit status, and the Kafka mode.

With ``--bootstrap-servers HOST:PORT`` the inputs are scanned by the worker fleet instead, as
scan jobs (:mod:`consumers.jobs`): one job per input, its path made absolute (the workers read it
at the same path, or fetch the URL), followed on ``clipguard.job-status`` until each is done or
failed; then the jobs' records are read back from the scores and flags topics and the same
files are written (the incidents' peak frames stay on the workers: the report shows none). The
workers' model and policies scan; ``--policies`` only names the files that describe them in
the report. Every input is scanned again (the key is known only once a job is done); the keys
written let a later local scan resume from the folder.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final

from consumers.argtypes import fraction, positive_float, positive_int
from consumers.cli.common import (
    DEMO_MODEL,
    EXIT_OK,
    EXIT_PARTIAL,
    EXIT_USAGE,
    PROG,
    add_banks_option,
    add_bootstrap_servers,
    add_command,
    add_fit_option,
    add_model_option,
    add_policies_option,
    add_sample_fps_option,
    load_model,
    plural,
    quiet_kafka,
)
from consumers.kafka_auth import client_security

if TYPE_CHECKING:
    from consumers.jobs import JobOutcome
    from consumers.settings import TopicNames
    from pipeline.decode import Frame, Sampling
    from pipeline.hashes.store import BankSnapshot
    from pipeline.models.base import ImageTextModel
    from pipeline.models.encoders import ImageEncoder
    from pipeline.policies import LoadedPolicies
    from pipeline.policies.judge import FrameRef
    from pipeline.policies.snapshot import PolicySet
    from pipeline.scan import FileScan, ScanInput, ScanOptions
    from pipeline.scan.outputs import ScanFolder, ScanPlan
    from pipeline.scan.scanner import FramesHook
    from pipeline.store import FrameRecorder

__all__ = ["add_parser", "run_scan"]

_log = logging.getLogger(__name__)

_RUNNING_EVERY_S: Final = 5.0  # at most one progress line this often for running jobs

_DESCRIPTION = (
    "Decode, sample and score stored video with a CLIP model against moderation\n"
    "policies, on this machine (or with --bootstrap-servers as jobs on the worker\n"
    "fleet). Writes scores.jsonl and flags.jsonl (the records of the clipguard.scores\n"
    "and clipguard.flags topics), summary.json and report.html. A bad input never stops\n"
    "the scan. A rerun into the same --out skips inputs already scanned with the same\n"
    "content, model, policies and sampling."
)

_EPILOG = f"""\
inputs:
  files and folders (searched recursively for video files: .mp4 .mov .mkv .webm .ts ...),
  http(s) URLs (the type comes from the URL's extension), and text files (.txt .list .lst)
  listing any of these, one a line, # for comments, relative paths from the list's folder.

examples:
  clipguard scan uploads/                          demo model and policies, 1 frame a second
  clipguard scan uploads/ --model ViT-B/32 --policies policies/ --out scan-2026-11
  clipguard scan urls.txt --keyframes --fit tiles
  clipguard scan uploads/ --out scan-2026-11       again: scans only new or changed files
  clipguard scan uploads/ --policies policies/known.yaml --banks banks/
                                                   known content: hash policies against banks
  clipguard scan --bootstrap-servers kafka:9092 /mnt/uploads/
                                                   as jobs on the worker fleet (paths the
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
    scan = add_command(
        subparsers,
        "scan",
        help="scan stored video (files, folders, URLs) and write results and a report",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        wrap=False,
    )
    add = scan.add_argument
    add("paths", nargs="+", metavar="PATH", help="video files, folders, http(s) URLs, list files")
    add_policies_option(
        scan,
        repeatable=True,
        help="policy file or folder; repeatable (default: the bundled demo policies for the "
        "demo model, policies/ for any other)",
    )
    add_banks_option(
        scan,
        help="hash bank files (*.bank.tsv) or folders, for kind: hash policies: frames, whole "
        "files (MD5) and videos (vPDQ) are matched against them (local scans; on the worker "
        "fleet the workers' banks are used)",
    )
    add_model_option(
        scan,
        help=f"CLIP model: a registry name or a weights file (default: {DEMO_MODEL}, the "
        "bundled demo model, which only knows synthetic shapes, colours and a few words)",
    )
    _add_frame_options(scan)
    add(
        "--out",
        default="clipguard-scan",
        metavar="DIR",
        help="output folder (default: %(default)s)",
    )
    add("--force", action="store_true", help="rescan inputs already scanned in --out")
    add(
        "--store",
        metavar="DIR",
        help="also keep every scored frame (embedding, thumbnail) in this frame store: a "
        "folder or a pyarrow URI such as s3://bucket/frames (see clipguard store)",
    )
    add(
        "--no-thumbnails",
        action="store_true",
        help="with --store: keep no thumbnails (they show what was flagged)",
    )
    add(
        "--decoders",
        type=positive_int,
        default=max(1, min(4, os.cpu_count() or 1)),
        metavar="N",
        help="decode processes (default: %(default)s)",
    )
    add(
        "--batch-size",
        type=positive_int,
        default=64,
        metavar="N",
        help="frames per encoder batch (default: %(default)s)",
    )
    add(
        "--precision",
        choices=("auto", "fp32", "bf16", "fp16", "int8"),
        default="auto",
        help="image encoder precision (default: %(default)s, the fastest that passes the "
        "accuracy guard)",
    )
    add(
        "--timeout",
        type=positive_float,
        default=600.0,
        metavar="S",
        help="wall-clock seconds to decode one input (default: %(default)s); on the worker "
        "fleet: stop following the jobs when none has reported for S seconds",
    )
    add_bootstrap_servers(
        scan,
        metavar="BOOTSTRAP",
        help="scan on the worker fleet: submit one job per input to clipguard.jobs on these "
        "brokers (host:port[,...]) and follow them (the workers' model and policies scan)",
        old_spellings=("--kafka",),
    )
    scan.set_defaults(func=run_scan)


def _add_frame_options(scan: argparse.ArgumentParser) -> None:
    """Which frames are scored (one way of sampling) and how they fit the model's input."""
    how = scan.add_mutually_exclusive_group()
    add_sample_fps_option(how, metavar="N", help="score N frames per second of video (default: 1)")
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
        "--skip-b-frames",
        action="store_true",
        help="with N frames per second at a quarter of a video's frame rate or less, decode "
        "without B-frames: faster (about 0.6x the decode time on H.264 with B-frames), but a "
        "scored frame can be up to a few tenths of a second after its wanted time",
    )
    add_fit_option(
        scan,
        default="pad",
        help="how frames become the model's square input (default: %(default)s)",
    )


# --------------------------------------------------------------------------- local scan


def run_scan(args: argparse.Namespace) -> int:
    """The ``clipguard scan`` command; returns the exit status."""
    from pipeline.decode import Limits
    from pipeline.errors import ConfigError
    from pipeline.scan import ScanOptions, discover

    inputs = discover(args.paths)
    if not inputs:
        raise ConfigError(f"no video files found in {', '.join(args.paths)}")
    if args.bootstrap_servers:
        return _run_jobs(args, inputs)
    banks = None
    if args.banks:
        from pipeline.hashes.store import BankStore

        banks = BankStore(args.banks).snapshot
    options = ScanOptions(
        sampling=_sampling(args),
        fit=args.fit,
        limits=Limits(timeout=args.timeout),
        banks=None if banks is None else banks.digest,
        hash_frames=bool(args.store),  # stored frames keep their PDQ, for bank backtests
    )
    return _scan_here(args, inputs, options, banks)


@dataclass
class _Counts:
    """What a run did, for its last lines."""

    frames: int = 0
    incidents: int = 0


def _scan_here(
    args: argparse.Namespace,
    inputs: Sequence[ScanInput],
    options: ScanOptions,
    banks: BankSnapshot | None,
) -> int:
    """Scan ``inputs`` on this machine into ``--out``, resuming from what it holds."""
    from pipeline.policies.compile import PolicyCompiler
    from pipeline.policies.hashing import check_banks
    from pipeline.scan.outputs import ScanFolder, describe_policies, plan_scan, write_outputs

    model, demo, policies = _model_and_policies(args)
    check_banks(policies.hashes, frozenset(banks.banks) if banks is not None else frozenset())
    policy_set = PolicyCompiler(model).compile(policies)
    folder = ScanFolder(Path(args.out))
    with folder.locked():
        known = folder.load_state()
        folder.save_policy_set(policy_set.id, describe_policies(policies))
        plan = plan_scan(
            inputs,
            known,
            model=model.name,
            weights=model.fingerprint(),
            policy_set=policy_set.id,
            options=options,
            force=args.force,
        )
        folder.drop_records(set(plan.todo) | {e["source"] for e in plan.failed})
        for entry in plan.failed:  # failed before decoding: missing, unreadable, bad scheme
            folder.append(entry, [], [])
            known[entry["source"]] = entry
        skipped = sum(v == "skipped" for v in plan.run.values())
        if skipped:
            _log.info(
                "%d of %d inputs already scanned in %s with this model, policy set and "
                "sampling: skipped (--force rescans them)",
                skipped,
                len(plan.run),
                folder.path,
            )
        counts = _Counts()
        started = time.monotonic()
        try:
            if plan.todo:
                _scan_todo(
                    args,
                    folder,
                    plan,
                    known,
                    counts,
                    model=model,
                    policies=policy_set,
                    options=options,
                    banks=banks,
                )
        finally:  # interrupted too: the summary and report show what was done
            seconds = time.monotonic() - started
            summary, report = write_outputs(
                folder,
                known,
                plan.run,
                model=model.name,
                weights=model.fingerprint(),
                demo=demo,
                policy_set=policy_set.id,
                options=options,
                frames=counts.frames,
                seconds=seconds,
            )
    return _conclude(summary, folder.path, report, counts, seconds=seconds)


def _model_and_policies(args: argparse.Namespace) -> tuple[ImageTextModel, bool, LoadedPolicies]:
    """The model (and whether it is a demo model) and policies to scan with, with notes on
    stderr about the defaults taken and policies written for another model."""
    from pipeline.models.loading import model_identity
    from pipeline.policies import load_policies
    from pipeline.policies.bundled import default_policies

    model, demo = load_model(args.model or DEMO_MODEL)
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
        policy_paths = [default_policies(demo)]
        print(f"note: policies from {policy_paths[0]} (pass --policies to change)", file=sys.stderr)
    policies = load_policies(policy_paths)
    for lp in policies:
        named = lp.policy.model
        if named is not None and named != model.name and model_identity(named) != model.name:
            print(
                f"note: policy {lp.policy.id} was written for {lp.policy.model}; its "
                f"thresholds may mean nothing with {model.name}",
                file=sys.stderr,
            )
    return model, demo, policies


def _scan_todo(
    args: argparse.Namespace,
    folder: ScanFolder,
    plan: ScanPlan,
    known: dict[str, dict[str, Any]],
    counts: _Counts,
    *,
    model: ImageTextModel,
    policies: PolicySet,
    options: ScanOptions,
    banks: BankSnapshot | None,
) -> None:
    """Scan the plan's inputs, writing each one's records and entry as it is done."""
    from pipeline.decode import DecodePool
    from pipeline.models.encoders import load_encoder
    from pipeline.scan import Scanner
    from pipeline.scan.outputs import scan_entry

    encoder = load_encoder(model, precision=args.precision, batch_size=args.batch_size)
    recorder = _recorder(args, encoder, model, policies, options)
    # sockets in the decode processes only to fetch URLs
    network = any(s.lower().startswith(("http://", "https://")) for s in plan.todo)
    pool = DecodePool(args.decoders, network=network)
    with pool, _Progress(len(plan.todo)) as progress:
        scanner = Scanner(
            encoder,
            policies,
            pool=pool,
            options=options,
            banks=banks,
            on_frames=None if recorder is None else _recording(recorder),
        )
        for result in scanner.scan(list(plan.todo)):
            if recorder is not None:
                recorder.flush(result.source)
            key, sha = plan.todo[result.source]
            entry = scan_entry(result, key, sha, model.name, policies.id)
            for flag in entry["flags"]:
                picture = result.peaks.get(flag["event_id"])
                if picture is not None:
                    flag["thumbnail"] = folder.write_thumbnail(flag["event_id"], picture)
            folder.append(entry, result.scores, result.flags)
            known[result.source] = entry
            counts.frames += result.frames_scored
            counts.incidents += len(result.incidents)
            progress.done(result)


def _recorder(
    args: argparse.Namespace,
    encoder: ImageEncoder,
    model: ImageTextModel,
    policies: PolicySet,
    options: ScanOptions,
) -> FrameRecorder | None:
    """The frame store recorder ``--store`` asks for."""
    if not args.store:
        return None
    from pipeline.store import THUMBNAIL_SIZE, FrameRecorder

    return FrameRecorder(
        args.store,
        encoder=encoder.info(),
        model=model.name,
        fit=options.fit,
        resolution=encoder.input_resolution,
        policies=policies,
        thumbnail_size=0 if args.no_thumbnails else THUMBNAIL_SIZE,
    )


def _recording(recorder: FrameRecorder) -> FramesHook:
    def on_frames(
        source: str, frames: Sequence[Frame], refs: Sequence[FrameRef], embeddings: Any
    ) -> None:
        from pipeline.store.schema import frame_hashes

        images = [f.image for f in frames]
        hashes = frame_hashes(frames)
        recorder.add(source, refs, embeddings, images, source=source, hashes=hashes)

    return on_frames


def _conclude(
    summary: Mapping[str, Any], out: Path, report: Path, counts: _Counts, *, seconds: float
) -> int:
    """Print what the run did; its exit status."""
    mine = [f for f in summary["files"] if f["this_run"] is not None]
    failed = [f for f in mine if f["status"] == "failed"]
    now = sum(f["this_run"] == "scanned" and f["status"] == "scanned" for f in mine)
    earlier = sum(f["this_run"] == "skipped" and f["status"] == "scanned" for f in mine)
    frames = counts.frames
    rate = f" ({frames / seconds:.1f} frames/s)" if seconds > 0 and frames else ""
    print(
        f"scan: {len(mine)} inputs: {now} scanned, {earlier} scanned before (skipped), "
        f"{len(failed)} failed; {frames} frames scored in {seconds:.1f} s{rate}, "
        f"{counts.incidents} incidents found"
    )
    for f in failed:
        print(f"failed: {f['source']}: {f['error']['class']}: {f['error']['message']}")
    print(f"results: {out}/ (scores.jsonl, flags.jsonl, summary.json)")
    print(f"report: {report}")
    return EXIT_PARTIAL if failed else EXIT_OK


def _sampling(args: argparse.Namespace) -> Sampling:
    from pipeline.decode import DEFAULT_SCENE_THRESHOLD, Sampling

    if args.keyframes:
        return Sampling(mode="keyframes")
    if args.scene_change is not None:
        threshold = DEFAULT_SCENE_THRESHOLD if args.scene_change < 0 else args.scene_change
        return Sampling(mode="scene", scene_threshold=threshold)
    return Sampling(mode="fps", fps=args.sample_fps or 1.0, skip_b_frames=args.skip_b_frames)


# --------------------------------------------------------------------------- Kafka mode


def _run_jobs(args: argparse.Namespace, inputs: Sequence[ScanInput]) -> int:
    """``clipguard scan --bootstrap-servers``: the inputs as scan jobs on the worker fleet."""
    from consumers.jobs import job_options
    from consumers.settings import topic_names_from_env
    from pipeline.events import JobRequest
    from pipeline.scan.outputs import ScanFolder

    if args.model:
        print(
            f"{PROG} scan: error: --model cannot be used with --bootstrap-servers (the workers' "
            "model scans)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    quiet_kafka(getattr(args, "log_level", "INFO"))  # it logs every connection at INFO
    topics = topic_names_from_env()  # a fleet with other topic names: the workers' variables
    request_options = _request_options(args)
    todo = [item for item in inputs if item.error is None]
    requests = [JobRequest(uri=item.source, **request_options) for item in todo]
    options = job_options(requests[0] if requests else JobRequest(uri="/", **request_options))
    run = {item.source: "scanned" for item in inputs}

    folder = ScanFolder(Path(args.out))
    with folder.locked():
        known = folder.load_state()
        folder.drop_records(set(run))
        started = time.monotonic()
        outcomes: list[JobOutcome] = []
        try:
            outcomes = _follow_jobs(args, requests, topics)
        finally:  # interrupted too: the summary and report show what was done
            seconds = time.monotonic() - started
            summary, report, counts = _write_jobs(
                args, folder, known, run, inputs, outcomes, options, seconds=seconds
            )
    return _conclude(summary, folder.path, report, counts, seconds=seconds)


def _request_options(args: argparse.Namespace) -> dict[str, Any]:
    """A job request's sampling and fit, from the options."""
    from pipeline.decode import DEFAULT_SCENE_THRESHOLD

    scene = args.scene_change
    return {
        "sample_fps": None if args.keyframes or scene is not None else args.sample_fps or 1.0,
        "keyframes": args.keyframes,
        "scene_change": None if scene is None else DEFAULT_SCENE_THRESHOLD if scene < 0 else scene,
        "fit": args.fit,
    }


def _follow_jobs(
    args: argparse.Namespace, requests: Sequence[Any], topics: TopicNames
) -> list[JobOutcome]:
    """Submit the jobs and follow them, showing progress, until each is done or failed (or
    none reported for ``--timeout`` seconds)."""
    from consumers.jobs import JobClient
    from pipeline.events import JobStatus

    with _Progress(len(requests)) as progress:

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

        if not requests:
            return []
        print(
            f"scan: {len(requests)} jobs to {args.bootstrap_servers}; following "
            f"{topics.job_status}",
            file=sys.stderr,
        )
        return JobClient(
            args.bootstrap_servers, topics=topics, client_config=client_security()
        ).run(requests, timeout=args.timeout, on_status=on_status)


def _write_jobs(
    args: argparse.Namespace,
    folder: ScanFolder,
    known: dict[str, dict[str, Any]],
    run: dict[str, str],
    inputs: Sequence[ScanInput],
    outcomes: Sequence[JobOutcome],
    options: ScanOptions,
    *,
    seconds: float,
) -> tuple[dict[str, Any], Path, _Counts]:
    """Write the jobs' records and entries (and those of inputs never submitted), then the
    summary and report, with the model and policy set the workers reported."""
    from pipeline.models import list_models
    from pipeline.scan.outputs import failed_entry, write_outputs

    finals = [o.final for o in outcomes if o.final is not None]
    model = next((s.model for s in finals if s.model), None) or "unknown"
    weights = next((s.weights_sha256 for s in finals if s.weights_sha256), "") or ""
    policy_set = next((s.policy_set for s in reversed(finals) if s.policy_set), "") or ""
    demo = any(info.demo and info.name == model for info in list_models())
    for item in inputs:  # failed before submission: missing, unreadable, bad scheme
        if item.error is not None:
            known[item.source] = failed_entry(item.source, item.error, model, policy_set)
            folder.append(known[item.source], [], [])
    counts = _Counts()
    for job in outcomes:
        entry = _job_entry(job, options, args.timeout)
        folder.append(entry, job.scores, job.flags)
        known[entry["source"]] = entry
        counts.frames += entry["frames_scored"]
        counts.incidents += len(entry["flags"])
    if policy_set:
        _describe_workers_policies(args, folder, policy_set, demo)
    summary, report = write_outputs(
        folder,
        known,
        run,
        model=model,
        weights=weights,
        demo=demo,
        policy_set=policy_set,
        options=options,
        frames=counts.frames,
        seconds=seconds,
    )
    return summary, report, counts


def _describe_workers_policies(
    args: argparse.Namespace, folder: ScanFolder, policy_set: str, demo: bool
) -> None:
    """Describe the workers' policy set in the report from ``--policies`` (or the default
    folder), when those files are that set."""
    from pipeline.errors import ClipguardError
    from pipeline.policies import load_policies
    from pipeline.policies.bundled import default_policies
    from pipeline.scan.outputs import describe_policies

    try:
        paths = [Path(p) for p in args.policies or [default_policies(demo)]]
        policies = load_policies(paths)
    except ClipguardError as e:
        print(f"note: cannot describe the workers' policies: {e}", file=sys.stderr)
        return
    if policies.digest == policy_set:
        folder.save_policy_set(policy_set, describe_policies(policies))
    else:
        print(
            f"note: the policies in {', '.join(map(str, paths))} are not the "
            f"workers' set {policy_set} (pass --policies with theirs): the "
            "report shows no thresholds",
            file=sys.stderr,
        )


def _job_entry(job: JobOutcome, options: ScanOptions, timeout: float) -> dict[str, Any]:
    """A finished (or unfinished) job's entry, as a local scan of its input would write it."""
    from pipeline.errors import DecodeError
    from pipeline.scan import FileScan, file_sha256
    from pipeline.scan.outputs import failed_entry, resume_key, scan_entry

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
        return failed_entry(source, error, model, policy_set)
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
        key = resume_key(
            source, sha, model=model, weights=weights, policy_set=policy_set, options=options
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
    return scan_entry(result, key, sha, model, policy_set)


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
            what = f"{frames} frames, {plural(incidents, 'incident')} ({seconds:.1f} s)"
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
