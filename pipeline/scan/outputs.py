"""What a scan writes into its output folder, and what lets a later scan resume from it.

The folder (:class:`ScanFolder`) holds

``scores.jsonl``
    one ``clipguard.score/1`` record per scored frame (tile), as on ``clipguard.scores``,
    with ``source`` the input's absolute path or URL (also its stream id);
``flags.jsonl``
    the ``clipguard.flag/1`` events (open and closed) of every incident, as on
    ``clipguard.flags``;
``summary.json``
    per input: status, duration, frames scored, incidents (with the bank entry a hash policy's
    incident matched), the known content found (``hash_matches``: every bank entry matched,
    by MD5, vPDQ or frame PDQ, with the file's ``md5``), and for a failed input its typed
    error (``{"class": "InvalidMedia", "message": ...}``); the model, policy set and settings
    (:func:`summarize`);
``report.html``
    the report (:mod:`pipeline.scan.report`), with ``thumbnails/`` holding the peak frames it
    shows;
``.clipguard-scan/``
    what resuming needs: one line per input done (its entry: :func:`scan_entry`,
    :func:`failed_entry`), with the key it was scanned under, and the policy sets' descriptions.

Resuming (:func:`plan_scan`): an input is skipped when the folder already holds its results
under the same key (:func:`resume_key`: the file's SHA-256, or the URL, with the model, the
policy set and the sampling settings) and it either was scanned or failed in a way that its
bytes would fail again (:data:`pipeline.scan.PERMANENT_ERRORS`); ``force`` rescans. A rescanned
input's earlier records are replaced. The folder accumulates: results of inputs from earlier
runs stay in it (and in its summary and report) until it is deleted.

Entries are the JSON objects written to the state and to ``summary.json``, kept as dicts.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from pipeline.errors import ConfigError, DecodeError
from pipeline.scan.inputs import ScanInput, file_sha256
from pipeline.scan.scanner import PERMANENT_ERRORS, FileScan, ScanOptions, content_key

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from pipeline.events import FlagEvent, ScoreRecord
    from pipeline.policies import LoadedPolicies

__all__ = [
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
]

_log = logging.getLogger(__name__)

#: The folder's state, under the output folder.
STATE_DIR: Final = ".clipguard-scan"
#: ``format`` of summary.json.
SUMMARY_FORMAT: Final = 1
_THUMB_PNG_MAX: Final = 128  # peak frames up to this side are PNG, larger ones JPEG


# --------------------------------------------------------------------------- entries


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def scan_entry(
    result: FileScan, key: str | None, sha: str | None, model: str, policy_set: str
) -> dict[str, Any]:
    """An input's line in the state and its entry in summary.json: ``key`` is its
    :func:`resume_key` (None when it cannot be resumed here), ``sha`` its file's SHA-256."""
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
                "match": None if f.match is None else f.match.model_dump(mode="json"),
            }
            for f in result.incidents
        ],
        "shadow_incidents": result.shadow_incidents,
        "md5": result.md5,
        "hash_matches": result.hash_matches,
        "error": None if error is None else {"class": type(error).__name__, "message": str(error)},
        "seconds": round(result.seconds, 3),
    }


def failed_entry(
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
        "md5": None,
        "hash_matches": [],
        "error": {"class": cls, "message": message},
        "seconds": 0.0,
    }


def describe_policies(policies: LoadedPolicies) -> list[dict[str, Any]]:
    """The policies of a set as the report shows them: ids, versions, rules and files (hash
    policies: ``kind: hash``, their banks and matching settings, no labels)."""
    hashes = [
        {
            "id": hp.policy.id,
            "version": hp.policy.version,
            "kind": "hash",
            "severity": hp.policy.severity,
            "action": hp.policy.action,
            "mode": hp.policy.mode,
            "banks": list(hp.policy.banks),
            "signals": list(hp.policy.signals),
            "max_distance": hp.policy.max_distance,
            "min_quality": hp.policy.min_quality,
            "dihedral": hp.policy.dihedral,
            "path": str(hp.path),
            "labels": [],
        }
        for hp in policies.hashes
    ]
    return hashes + [
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
                    "sigmoid": lab.sigmoid,
                    "margin": lab.margin,
                }
                for lab in lp.policy.labels
            ],
        }
        for lp in policies
    ]


def summarize(
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
    """summary.json: every input's entry (``known``: by source), with what this run did to it
    (``run``: source -> ``scanned`` | ``skipped``), the model, the policy sets, the settings
    and this run's counts."""
    # this run's inputs in the order given, then those of earlier runs
    order = [*run, *(source for source in known if source not in run)]
    files = [
        {**{k: v for k, v in known[source].items() if k != "key"}, "this_run": run.get(source)}
        for source in order
        if source in known
    ]
    mine = [f for f in files if f["this_run"] is not None]
    return {
        "format": SUMMARY_FORMAT,
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


# --------------------------------------------------------------------------- resuming


def resume_key(
    source: str,
    sha: str | None,
    *,
    model: str,
    weights: str,
    policy_set: str,
    options: ScanOptions,
) -> str:
    """The key a scan of ``source`` is stored under: its file's SHA-256 (``sha``), or for a URL
    its address, with what the results depend on (:func:`pipeline.scan.content_key`)."""
    return content_key(
        sha or f"url:{source}",
        model=model,
        weights=weights,
        policy_set=policy_set,
        options=options,
    )


@dataclass
class ScanPlan:
    """What a run does with each of its inputs."""

    #: this run's inputs, in order: source -> "scanned" | "skipped"
    run: dict[str, str] = field(default_factory=dict)
    #: the inputs to scan: source -> (resume key, SHA-256 of a file)
    todo: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    #: entries of inputs that failed before decoding (missing, unreadable, bad URL scheme)
    failed: list[dict[str, Any]] = field(default_factory=list)


def plan_scan(
    inputs: Sequence[ScanInput],
    known: Mapping[str, Mapping[str, Any]],
    *,
    model: str,
    weights: str,
    policy_set: str,
    options: ScanOptions,
    force: bool,
) -> ScanPlan:
    """Which inputs to scan, which to skip (done before under the same key, ``known`` holding
    the folder's entries by source), and which failed already (missing, unreadable, an
    unsupported URL scheme)."""
    permanent = {cls.__name__ for cls in PERMANENT_ERRORS}
    plan = ScanPlan()
    for item in inputs:
        try:
            if item.error is not None:
                raise item.error
            sha = file_sha256(item.source) if item.kind == "file" else None
        except DecodeError as e:
            plan.failed.append(failed_entry(item.source, e, model, policy_set))
            plan.run[item.source] = "scanned"
            continue
        key = resume_key(
            item.source, sha, model=model, weights=weights, policy_set=policy_set, options=options
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


# --------------------------------------------------------------------------- output folder


class ScanFolder:
    """A scan's output folder (see the module docstring for its files); created if missing."""

    def __init__(self, path: Path) -> None:
        self.path = path.absolute()
        self.state = self.path / STATE_DIR
        self.state.mkdir(parents=True, exist_ok=True)
        self.journal = self.state / "state.jsonl"
        self.sets = self.state / "policy-sets.json"
        self.scores = self.path / "scores.jsonl"
        self.flags = self.path / "flags.jsonl"
        self.thumbs = self.path / "thumbnails"

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the folder's lock: one scan writes into a folder at a time."""
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
        """The descriptions of every policy set scanned with here, by digest."""
        try:
            data = json.loads(self.sets.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def save_policy_set(self, digest: str, description: list[dict[str, Any]]) -> None:
        """Keep a policy set's description (:func:`describe_policies`) for the report."""
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
            if path.is_file():
                _drop_lines(path, sources)

    def append(
        self,
        entry: dict[str, Any],
        scores: Iterable[ScoreRecord],
        flags: Iterable[FlagEvent],
    ) -> None:
        """Append an input's records, then its state line: a run interrupted between the two
        rescans the input next time (and drops the records written so far)."""
        with self.scores.open("ab") as fh:
            fh.writelines(r.to_json() + b"\n" for r in scores)
        with self.flags.open("ab") as fh:
            fh.writelines(r.to_json() + b"\n" for r in flags)
        with self.journal.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry, sort_keys=True) + "\n")

    def write_thumbnail(self, event_id: str, picture: npt.NDArray[np.uint8]) -> str:
        """Store a peak frame (RGB); its path relative to the folder."""
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
        """Replace summary.json."""
        _write_atomic(self.path / "summary.json", json.dumps(summary, indent=2) + "\n")


def write_outputs(
    folder: ScanFolder,
    known: Mapping[str, dict[str, Any]],
    run: Mapping[str, str],
    *,
    model: str,
    weights: str,
    demo: bool,
    policy_set: str,
    options: ScanOptions,
    frames: int,
    seconds: float,
) -> tuple[dict[str, Any], Path]:
    """Write the summary (:func:`summarize`; pruning thumbnails no incident shows) and the
    report; the summary and the report's path."""
    from pipeline import __version__
    from pipeline.models import DEMO_NOTICE
    from pipeline.scan.report import write_report

    summary = summarize(
        known,
        run,
        model=model,
        weights=weights,
        demo=demo,
        notice=DEMO_NOTICE if demo else None,
        policy_set=policy_set,
        policy_sets=folder.load_policy_sets(),
        options=options.describe(),
        version=__version__,
        frames=frames,
        seconds=seconds,
    )
    folder.write_summary(summary)
    folder.prune_thumbnails(summary)
    return summary, write_report(folder.path)


def _drop_lines(path: Path, sources: set[str]) -> None:
    """Rewrite a JSON-lines file without the records of ``sources`` and lines cut short."""
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


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
