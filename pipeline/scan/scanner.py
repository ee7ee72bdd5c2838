"""Batch scanning: stored video (files, folders, URLs) through decode, encode and judge.

The same stages as the stream worker, for inputs that are whole files: each input is decoded
in the sandboxed :class:`~pipeline.decode.pool.DecodePool`, its sampled frames are encoded
with CLIP, and :class:`~pipeline.policies.judge.Judge` turns the embeddings into score records
and flag events, with the input's path or URL as stream id and ``source``, segment ``seq`` 0 and
``ts`` the frame's time in the file. The records have the shapes of the Kafka topics.

Two ways in, sharing one per-input code path::

    scanner = Scanner(encoder, store.current, pool=pool)
    for record in scanner.records("https://host/clip.mp4"):   # one input, as a job runner
        publish(record)                                          # ScoreRecord or FlagEvent
    for result in scanner.scan(sources):                         # many, overlapped
        result.scores, result.flags, result.error                # one FileScan per input

Hash policies (``kind: hash``) are judged too when the scanner is given the banks in force
(``banks=``): every sampled frame's PDQ hash (taken by the decode stage) against their entries,
through the same temporal rules, and each whole file: its MD5 (local files) against the banks'
MD5 entries and its sampled frames, as one vPDQ hash, against their videos. A whole-file match is
an incident over the whole file labelled by its signal (``md5``, ``vpdq``); every entry matched is
in :attr:`FileScan.hash_matches`.

:meth:`Scanner.scan` keeps several decodes in flight (they run in the pool's processes while
this process encodes) and fills each encoder batch with the frames of every input decoded so
far, so a folder of short clips keeps the encoder busy. A bad input never stops a scan: its
:class:`FileScan` carries the typed :class:`~pipeline.errors.DecodeError`.

:func:`content_key` names what a scan of a source depends on, for resuming; the inputs
themselves come from :func:`pipeline.scan.inputs.discover`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

import numpy as np
import numpy.typing as npt

from pipeline.decode import (
    DecodeOptions,
    DecodePool,
    DecodeResult,
    Fit,
    Frame,
    InputAccess,
    Limits,
    Sampling,
)
from pipeline.decode.options import DEFAULT_HASH_SIDE
from pipeline.errors import (
    ConfigError,
    DecodeError,
    HashError,
    InvalidMedia,
    LimitExceeded,
    UnsupportedMedia,
)
from pipeline.events import FlagEvent, ScoreRecord
from pipeline.hashes.signals import VpdqFrame
from pipeline.models.encoders import ImageEncoder
from pipeline.policies.hashing import decode_hashes, file_matches
from pipeline.policies.judge import FrameRef, Judge, PolicyFacts
from pipeline.policies.snapshot import PolicySet
from pipeline.policies.temporal import StreamTemporalState

if TYPE_CHECKING:
    from pipeline.hashes.store import BankSnapshot

__all__ = [
    "PERMANENT_ERRORS",
    "FileScan",
    "FramesHook",
    "ScanOptions",
    "Scanner",
    "content_key",
]

#: Decode errors that the same bytes with the same settings will raise again: a resumed scan
#: does not retry them. The others (timeouts, crashes, unreadable inputs) are retried.
PERMANENT_ERRORS: Final = (InvalidMedia, UnsupportedMedia, LimitExceeded)
_Image = npt.NDArray[np.uint8]
#: ``on_frames(source, frames, refs, embeddings)``: a judged chunk of one input.
FramesHook = Callable[[str, Sequence[Frame], Sequence[FrameRef], npt.NDArray[np.float32]], object]

_log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- options


@dataclass(frozen=True, slots=True)
class ScanOptions:
    """How each input is decoded and sampled."""

    sampling: Sampling = field(default_factory=lambda: Sampling(mode="fps", fps=1.0))
    fit: Fit = "pad"
    limits: Limits | None = None  # None: the pool's
    content_type: str | None = None  # None: from each input's extension
    hash_side: int = DEFAULT_HASH_SIDE  # frames' PDQ hashes: downscale (0: full size)
    banks: str | None = None  # the digest of the banks hash policies match (None: no banks)
    access: InputAccess | None = None  # None: any file or URL (a person's own scan)
    hash_frames: bool = False  # PDQ of every sampled frame without hash policies (a store)

    def describe(self) -> dict[str, object]:
        """The settings that change a scan's records, as JSON-ready values (the banks and
        the hash size only when there are banks, so that a scan without keeps its keys)."""
        s = self.sampling
        sampling: dict[str, object] = {"mode": s.mode}
        if s.mode == "fps":
            sampling["fps"] = s.fps
        if s.mode == "scene":
            sampling["scene_threshold"] = s.scene_threshold
        if s.max_frames is not None:
            sampling["max_frames"] = s.max_frames
        out: dict[str, object] = {"sampling": sampling, "fit": self.fit}
        if self.banks is not None:
            out |= {"banks": self.banks, "hash_side": self.hash_side}
        return out


def content_key(
    content: str, *, model: str, weights: str, policy_set: str, options: ScanOptions
) -> str:
    """What a scan's results depend on, hashed: the input's content (its SHA-256, or its URL),
    the model and its weights, the policy set digest and the sampling settings."""
    blob = json.dumps(
        {
            "content": content,
            "model": model,
            "weights": weights,
            "policy_set": policy_set,
            "options": options.describe(),
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


# --------------------------------------------------------------------------- results


@dataclass(eq=False)
class FileScan:
    """One input scanned (or not): its records, what was learnt about it, or its error."""

    source: str
    scores: list[ScoreRecord] = field(default_factory=list)
    flags: list[FlagEvent] = field(default_factory=list)  # open and closed events, in order
    shadow_incidents: int = 0  # incidents of shadow-mode policies (counted, never flagged)
    peaks: dict[str, _Image] = field(default_factory=dict)  # flag event id -> peak picture
    duration: float | None = None
    width: int | None = None
    height: int | None = None
    codec: str | None = None
    frames_decoded: int = 0
    frames_scored: int = 0  # frames (the tiles of a frame count once)
    decode_errors: int = 0
    first_decode_error: str | None = None
    error: DecodeError | None = None
    seconds: float = 0.0  # from submission to the last record
    md5: str | None = None  # of the whole file, when a hash policy matches MD5s (local files)
    hash_matches: list[dict[str, Any]] = field(default_factory=list)  # entries matched

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def incidents(self) -> list[FlagEvent]:
        """The closed flag events: one per incident."""
        return [f for f in self.flags if f.state == "closed"]


class _FileJob:
    """One input on its way through the scanner: decode future, then frames in order."""

    def __init__(self, source: str, future: Future[DecodeResult], started: float) -> None:
        self.source = source
        self.future = future
        self.started = started
        self.result: DecodeResult | None = None
        self.next = 0  # index into result.frames of the first frame not yet judged
        self.state: StreamTemporalState | None = None
        self.facts: dict[str, PolicyFacts] = {}
        self.out = FileScan(source)

    @property
    def frames(self) -> tuple[Frame, ...]:
        assert self.result is not None
        return self.result.frames

    def remaining(self) -> int:
        return len(self.frames) - self.next

    def take(self, limit: int) -> list[Frame]:
        """Up to ``limit`` next frames, never splitting the tiles of one frame (so at least
        one whole frame, whatever the limit)."""
        frames = self.frames
        end = self.next
        while end < len(frames):
            stop = end + 1
            while stop < len(frames) and frames[stop].index == frames[end].index:
                stop += 1
            if end > self.next and stop - self.next > limit:
                break
            end = stop
        chunk = list(frames[self.next : end])
        self.next = end
        return chunk


class Scanner:
    """Scans inputs with one encoder (model) and one policy set.

    ``pool`` decodes (the caller owns it); ``batch_size`` caps the frames per encoder call;
    ``in_flight`` is how many inputs :meth:`scan` keeps submitted to the pool at once
    (default: twice its processes). ``model_name`` goes into every record (default: the
    encoder's model's name). ``on_frames`` is called with every judged chunk of an input (its
    source, frames, refs and embeddings), for keeping them in a frame store. ``banks``: the
    banks in force, for the set's hash policies (without, hash policies match nothing).
    """

    def __init__(
        self,
        encoder: ImageEncoder,
        policies: PolicySet,
        *,
        pool: DecodePool,
        options: ScanOptions | None = None,
        batch_size: int | None = None,
        in_flight: int | None = None,
        model_name: str | None = None,
        on_frames: FramesHook | None = None,
        banks: BankSnapshot | None = None,
    ) -> None:
        self.encoder = encoder
        self.on_frames = on_frames
        self.policies = policies
        self.banks = banks
        self.pool = pool
        self.options = options or ScanOptions()
        self.batch_size = batch_size or encoder.batch_size
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, not {self.batch_size}")
        self.in_flight = in_flight or 2 * pool.processes
        if self.in_flight < 1:
            raise ConfigError(f"in_flight must be >= 1, not {self.in_flight}")
        self.judge = Judge(model_name or encoder.model.name, encoder=encoder.info())

    # ------------------------------------------------------------------ one input

    def records(
        self,
        source: str,
        *,
        heartbeat: Callable[[], object] | None = None,
        heartbeat_s: float = 0.5,
        decoded: Callable[[DecodeResult], object] | None = None,
    ) -> Iterator[ScoreRecord | FlagEvent]:
        """Scan one input (a path or an http(s) URL) and yield its score records and flag
        events in publishing order, a batch at a time: what a job runner publishes. Raises
        the input's :class:`~pipeline.errors.DecodeError` before any record if it cannot be
        decoded.

        ``heartbeat`` is called every ``heartbeat_s`` seconds while the input decodes (a job
        runner polls its consumer there; an exception it raises ends the scan), ``decoded``
        once with the decode's result, before the first record."""
        job = self._submit(source)
        while heartbeat is not None and not job.future.done():
            wait([job.future], timeout=heartbeat_s)
            heartbeat()
        job.result = job.future.result()
        if decoded is not None:
            decoded(job.result)
        while job.remaining():
            chunk = job.take(self.batch_size)
            before_s, before_f = len(job.out.scores), len(job.out.flags)
            self._judge(job, chunk, self.encoder.encode([f.image for f in chunk]))
            yield from job.out.scores[before_s:]
            yield from job.out.flags[before_f:]
        before_f = len(job.out.flags)
        self._finish(job)
        yield from job.out.flags[before_f:]

    def scan_one(self, source: str) -> FileScan:
        """Scan one input; its error, if any, is in the result."""
        return next(iter(self.scan([source])))

    # ------------------------------------------------------------------ many inputs

    def scan(self, sources: Iterable[str]) -> Iterator[FileScan]:
        """Scan every source, overlapped (see the module docstring); one :class:`FileScan`
        per source, in the order they finish."""
        pending = iter(sources)
        jobs: deque[_FileJob] = deque()  # submitted, in submission order
        exhausted = False
        while True:
            while not exhausted and len(jobs) < self.in_flight:
                source = next(pending, None)
                if source is None:
                    exhausted = True
                else:
                    jobs.append(self._submit(source))
            if not jobs:
                return
            ready: list[_FileJob] = []
            for job in list(jobs):
                if job.result is None and job.future.done():
                    try:
                        job.result = job.future.result()
                    except DecodeError as e:
                        jobs.remove(job)
                        job.out.error = e
                        job.out.seconds = time.monotonic() - job.started
                        yield job.out
                        continue
                if job.result is not None:
                    ready.append(job)
            if not ready:
                wait([j.future for j in jobs], return_when=FIRST_COMPLETED)
                continue
            # one encoder batch from the frames of every decoded input, oldest first
            batch: list[tuple[_FileJob, list[Frame]]] = []
            room = self.batch_size
            for job in ready:
                if room <= 0:
                    break
                if job.remaining():
                    chunk = job.take(room)
                    batch.append((job, chunk))
                    room -= len(chunk)
            if batch:
                embeddings = self.encoder.encode([f.image for _, chunk in batch for f in chunk])
                start = 0
                for job, chunk in batch:
                    self._judge(job, chunk, embeddings[start : start + len(chunk)])
                    start += len(chunk)
            for job in ready:
                if not job.remaining():
                    jobs.remove(job)
                    self._finish(job)
                    yield job.out

    # ------------------------------------------------------------------ stages

    def _submit(self, source: str) -> _FileJob:
        opts = self.options
        hashes = decode_hashes(self.policies.hashes) if self.banks is not None else "none"
        if hashes == "none" and opts.hash_frames:
            hashes = "pdq"
        options = DecodeOptions(
            self.encoder.input_resolution,
            fit=opts.fit,
            sampling=opts.sampling,
            limits=opts.limits,
            hashes=hashes,
            hash_side=opts.hash_side,
        )
        future = self.pool.submit_uri(
            source, options, content_type=opts.content_type, access=opts.access
        )
        return _FileJob(source, future, time.monotonic())

    def _judge(
        self, job: _FileJob, chunk: Sequence[Frame], embeddings: npt.NDArray[np.float32]
    ) -> None:
        if job.state is None:
            job.state = self.judge.new_state(job.source, self.policies)
        refs = [FrameRef(seq=0, frame_index=f.index, ts=f.t, tile=f.tile) for f in chunk]
        out = self.judge.judge(
            job.state,
            refs,
            embeddings,
            self.policies,
            source=job.source,
            facts=job.facts,
            hashes=[f.pdq for f in chunk],
            banks=self.banks,
        )
        if self.on_frames is not None:
            self.on_frames(job.source, chunk, refs, embeddings)
        job.out.scores += out.scores
        job.out.flags += out.flags
        job.out.shadow_incidents += sum(e.state == "closed" for e in out.shadow)

    def _finish(self, job: _FileJob) -> None:
        result = job.result
        assert result is not None
        out = job.out
        if job.state is not None:
            end = self.judge.finish(job.state, self.policies, source=job.source, facts=job.facts)
            out.flags += end.flags
            out.shadow_incidents += sum(e.state == "closed" for e in end.shadow)
        self._match_file(job, result)
        out.duration = result.duration
        out.width, out.height, out.codec = result.width, result.height, result.codec
        out.frames_decoded = result.frames_decoded
        out.frames_scored = len({f.index for f in result.frames})
        out.decode_errors = result.decode_errors
        out.first_decode_error = result.first_error
        out.peaks = _peak_pictures(result.frames, out.scores, out.incidents)
        out.seconds = time.monotonic() - job.started
        job.result = None  # the frames' buffer can go

    def _match_file(self, job: _FileJob, result: DecodeResult) -> None:
        """The file's whole-file matches (MD5, vPDQ) as incidents, and every entry any hash
        policy matched in :attr:`FileScan.hash_matches`."""
        policies, out = self.policies.hashes, job.out
        if self.banks is None or not policies:
            return
        if any("md5" in p.signals for p in policies):
            out.md5 = _file_md5(job.source, self.options.limits, self.options.access)
        matches = file_matches(
            policies,
            md5=None if out.md5 is None else bytes.fromhex(out.md5),
            frames=_vpdq_of(result.frames),
            banks=self.banks,
        )
        end = self.judge.judge_file(
            job.source, self.policies, matches, duration=result.duration, source=job.source
        )
        out.flags += end.flags
        out.shadow_incidents += sum(e.state == "closed" for e in end.shadow)
        for m in matches:
            for info in m.matches:
                found = {"policy": m.policy.id, "label": m.label, "mode": m.policy.mode}
                out.hash_matches.append(found | info.model_dump(mode="json"))
        for f in out.incidents:
            if f.match is not None and f.label not in ("md5", "vpdq"):
                found = {"policy": f.policy, "label": f.label, "mode": "enforce"}
                span = {"start_ts": f.start_ts, "end_ts": f.end_ts}
                out.hash_matches.append(found | f.match.model_dump(mode="json") | span)


def _vpdq_of(frames: Sequence[Frame]) -> list[VpdqFrame]:
    """The hashed frames of a file as a vPDQ hash (one a frame: tiles share it)."""
    from pipeline.hashes.pdq import PdqHash

    out: list[VpdqFrame] = []
    for f in frames:
        if f.pdq is None or f.tile != 0:
            continue
        pdq = f.pdq.hash if isinstance(f.pdq, PdqHash) else f.pdq.hashes[0]
        out.append(VpdqFrame(pdq, f.pdq.quality, round(f.t, 3)))
    return out


def _file_md5(source: str, limits: Limits | None, access: InputAccess | None) -> str | None:
    """The MD5 of a local file (None for a URL, or a file that cannot be read: logged), opened
    as the decode stage opens it: a regular file within the input limit, and with ``access``,
    under its roots."""
    if urlsplit(source).scheme.lower() in ("http", "https"):
        return None
    from pipeline.decode.access import open_input_file
    from pipeline.hashes.md5 import md5_stream

    bound = (limits or Limits()).max_input_bytes
    try:
        handle, _size = open_input_file(source, access, limit=bound, label=source)
        with handle:
            return md5_stream(handle, max_bytes=bound).hex()
    except (HashError, DecodeError, OSError) as e:
        _log.warning("%s: no MD5 (%s)", source, e)
        return None


def _peak_pictures(
    frames: Sequence[Frame], scores: Sequence[ScoreRecord], incidents: Sequence[FlagEvent]
) -> dict[str, _Image]:
    """Each incident's peak frame (the best-scoring tile of it for the incident's label),
    copied out of the decode buffer."""
    if not incidents:
        return {}
    by_ts: dict[float, list[tuple[ScoreRecord, Frame]]] = {}
    for record, frame in zip(scores, frames, strict=True):
        by_ts.setdefault(record.ts, []).append((record, frame))
    peaks: dict[str, _Image] = {}
    for event in incidents:
        candidates = by_ts.get(event.peak_ts)
        if not candidates:
            continue
        key = f"{event.policy}/{event.label}"
        _, frame = max(candidates, key=lambda rf: rf[0].scores.get(key, float("-inf")))
        peaks[event.event_id] = np.array(frame.image, copy=True)
    return peaks
