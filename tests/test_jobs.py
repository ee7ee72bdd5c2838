"""Scan jobs on the worker fleet: the real embedded broker (Tansu), real H.264 clips, real
files, a real HTTP server, the demo model.

One module-wide run, on topics and a consumer group of its own on the session's broker
(tests/conftest.py): the folder of clips tests/test_scan.py scans (scanclips.make_library: a
red triangle, the word SPAM, a clean clip, a corrupt file and an audio-only file), submitted as
jobs (plus two malformed jobs) to a worker; then a job whose HTTP server holds back its answer
while that worker stops (the job is abandoned, uncommitted) and a second worker of the same
group starts (it runs that job, and none of the first ones again); then ``clipguard scan
--bootstrap-servers`` on the folder with the second worker. The tests compare what was
published with a local scan of the same folder.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import io
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import streaming
from kafkaspace import KafkaSpace
from scanclips import SPAM, TRIANGLE, make_library
from streaming import Record, read_topic, worker_thread

from consumers.cli import main
from consumers.cli.common import EXIT_PARTIAL
from consumers.jobs import job_options
from pipeline.decode import DecodePool
from pipeline.events import FlagEvent, JobRequest, JobStatus, ScoreRecord
from pipeline.models import load_clip
from pipeline.models.encoders import load_encoder
from pipeline.policies import load_policies
from pipeline.policies.compile import PolicyCompiler
from pipeline.policies.guard import regression_set
from pipeline.scan import FileScan, Scanner, discover

pytestmark = [
    pytest.mark.filterwarnings(r"ignore:(read_text|open_text) is deprecated:DeprecationWarning"),
    pytest.mark.timeout(300),
]

HELD = "held"  # the HTTP path prefix whose answers wait for the gate
MAX_POLL_MS = 4000  # the workers' max_poll_interval_ms
HOLD_S = 6.0  # how long the second worker's held job waits for its input: longer than that


@pytest.fixture(scope="module", autouse=True)
def _setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One policy cache for the module, never the user's; one torch thread (the 64 px demo model
    needs no more, and the decoders need the 2 cores)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLIPGUARD_POLICY_CACHE", str(tmp_path_factory.getbasetemp() / "pc"))
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_library(tmp_path_factory.mktemp("library"))


@pytest.fixture(scope="module")
def local(library: Path) -> dict[str, FileScan]:
    """The local scan of the folder, by file name: what the jobs must agree with."""
    model = load_clip("clipguard-demo")
    policies = load_policies([streaming.DEMO_POLICIES])
    policy_set = PolicyCompiler(model).compile(policies)
    with DecodePool(2) as pool:
        # the encoder as the workers choose it: the policies' examples are guard regressions
        examples = regression_set(policy_set, model.input_resolution)
        encoder = load_encoder(model, regressions=[examples] if examples is not None else [])
        scanner = Scanner(encoder, policy_set, pool=pool)
        return {Path(r.source).name: r for r in scanner.scan(i.source for i in discover([library]))}


# --------------------------------------------------------------------------------------------
# the module run


@contextlib.contextmanager
def _held_server(folder: Path, gate: threading.Event) -> Iterator[str]:
    """Serves ``folder``; a request under /held/ waits for ``gate`` before it is answered."""

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.startswith(f"/{HELD}/"):
                gate.wait(30)
                self.path = self.path[len(HELD) + 1 :]
            with contextlib.suppress(ConnectionError):  # the first asker may have gone
                super().do_GET()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(folder))
    )
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        gate.set()
        server.shutdown()
        server.server_close()


@dataclass
class Run:
    kafka: KafkaSpace
    jobs: dict[str, str] = field(default_factory=dict)  # job id -> what it is (file name, case)
    held_job: str = "held"
    statuses: list[Record] = field(default_factory=list)
    scores: list[Record] = field(default_factory=list)
    flags: list[Record] = field(default_factory=list)
    committed: int | None = None
    cli_code: int = -1
    cli_out: str = ""
    cli_err: str = ""
    cli_dir: Path = Path()

    def status_of(self, job_id: str) -> list[JobStatus]:
        return [
            JobStatus.model_validate_json(r.value or b"")
            for r in self.statuses
            if r.key == job_id.encode()
        ]

    def job_of(self, name: str) -> str:
        (job_id,) = [j for j, what in self.jobs.items() if what == name]
        return job_id

    def records_of(self, job_id: str) -> tuple[list[ScoreRecord], list[FlagEvent]]:
        scores = [
            ScoreRecord.model_validate_json(r.value or b"")
            for r in self.scores
            if r.key == job_id.encode()
        ]
        flags = [
            FlagEvent.model_validate_json(r.value or b"")
            for r in self.flags
            if r.key == job_id.encode()
        ]
        return scores, flags


def _produce(kafka: KafkaSpace, jobs: list[tuple[str, bytes]]) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap, acks="all")
    try:
        for key, value in jobs:
            producer.send(kafka.names.jobs, key=key.encode(), value=value)
        producer.flush(timeout=30)
    finally:
        producer.close()


def _final(job_ids: list[str]) -> Any:
    def done(records: list[Record]) -> bool:
        finals = {r.key for r in records if r.json()["state"] in ("done", "failed")}
        return all(j.encode() in finals for j in job_ids)

    return done


def _committed(kafka: KafkaSpace) -> int | None:
    """The workers' jobs group's committed offset on the jobs topic."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=kafka.bootstrap, group_id=kafka.jobs_group_id, enable_auto_commit=False
    )
    try:
        offset: int | None = consumer.committed(TopicPartition(kafka.names.jobs, 0))
        return offset
    finally:
        consumer.close(autocommit=False)


@pytest.fixture(scope="module")
def run(
    kafka_spaces: Callable[[str], KafkaSpace],
    library: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Run]:
    inputs = {Path(i.source).name: i.source for i in discover([library])}
    gate = threading.Event()
    kafka = kafka_spaces("test_jobs-run").create()
    status_topic = kafka.names.job_status
    with _held_server(library, gate) as server:
        r = Run(kafka)
        jobs: list[tuple[str, bytes]] = []
        for n, (name, path) in enumerate(sorted(inputs.items())):
            uri = Path(path).as_uri() if name == "triangle.mp4" else path  # file:// too
            jobs.append((f"job-{n}", JobRequest(uri=uri).to_json()))
            r.jobs[f"job-{n}"] = name
        jobs.append(("job-not-json", b"{not json"))
        jobs.append(("job-relative", json.dumps({"uri": "clips/a.mp4"}).encode()))
        r.jobs.update({"job-not-json": "not json", "job-relative": "relative path"})
        s = streaming.settings(
            kafka,
            shutdown_deadline_s=1.0,
            max_poll_interval_ms=MAX_POLL_MS,
            **{
                "jobs.allowed_roots": [str(library)],
                "jobs.allowed_url_hosts": ["127.0.0.1"],
                "jobs.allowed_networks": ["127.0.0.1/32"],  # the test server's loopback
            },
        )

        # the first worker runs the jobs, then takes one it cannot finish before it stops
        with worker_thread(s):
            _produce(kafka, jobs)
            read_topic(kafka.bootstrap, status_topic, until=_final(list(r.jobs)))
            held = JobRequest(uri=f"{server}/{HELD}/triangle.mp4").to_json()
            _produce(kafka, [(r.held_job, held)])
            read_topic(
                kafka.bootstrap,
                status_topic,
                until=lambda recs: any(x.key == r.held_job.encode() for x in recs),
            )

        # a second worker of the group: the held job again (held longer than the group's max
        # poll interval), none of the others; then the command line (the test's topic names
        # reach it as the workers' environment variables)
        with worker_thread(s), pytest.MonkeyPatch.context() as mp:
            read_topic(
                kafka.bootstrap,
                status_topic,
                until=lambda recs: (
                    [x.json()["state"] for x in recs if x.key == b"held"].count("accepted") == 2
                ),
            )
            time.sleep(HOLD_S)
            gate.set()
            read_topic(kafka.bootstrap, status_topic, until=_final([r.held_job]))
            r.cli_dir = tmp_path_factory.mktemp("cli") / "out"
            for variable, value in kafka.env().items():
                mp.setenv(variable, value)
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                r.cli_code = main(
                    [
                        "scan",
                        "--bootstrap-servers",
                        kafka.bootstrap,
                        str(library),
                        "--out",
                        str(r.cli_dir),
                        "--timeout",
                        "60",
                    ]
                )
            r.cli_out, r.cli_err = out.getvalue(), err.getvalue()
        r.statuses = read_topic(kafka.bootstrap, status_topic)
        r.scores = read_topic(kafka.bootstrap, kafka.names.scores)
        r.flags = read_topic(kafka.bootstrap, kafka.names.flags)
        r.committed = _committed(kafka)
        yield r


def _incidents(flags: list[FlagEvent]) -> list[tuple[str, str, float, float | None]]:
    return sorted((f.policy, f.label, f.start_ts, f.end_ts) for f in flags if f.state == "closed")


def _same_incidents(got: list[FlagEvent], want: list[FlagEvent]) -> None:
    a, b = _incidents(got), _incidents(want)
    assert [x[:2] for x in a] == [x[:2] for x in b]
    for x, y in zip(a, b, strict=True):
        assert x[2] == pytest.approx(y[2], abs=1e-3) and x[3] == pytest.approx(y[3], abs=1e-3)


# --------------------------------------------------------------------------------------------
# the jobs


def test_jobs_give_the_flags_of_a_local_scan(run: Run, local: dict[str, FileScan]) -> None:
    for name in ("triangle.mp4", "spam.mkv", "clean.ts"):
        scores, flags = run.records_of(run.job_of(name))
        _same_incidents(flags, local[name].flags)
        # the very same events: open then closed, with the ids a local scan gives
        assert [(f.event_id, f.state) for f in flags] == [
            (f.event_id, f.state) for f in local[name].flags
        ]
        assert len(scores) == local[name].frames_scored == len(local[name].scores)
        for got, w in zip(scores, local[name].scores, strict=True):
            assert (got.ts, got.frame_index, got.flagged) == (w.ts, w.frame_index, w.flagged)
            assert got.scores == pytest.approx(w.scores, abs=1e-4)
    # the concepts where they are on screen (within one sampling interval)
    (tri,) = [f for f in run.records_of(run.job_of("triangle.mp4"))[1] if f.state == "closed"]
    assert f"{tri.policy}/{tri.label}" == TRIANGLE[0] and abs(tri.start_ts - TRIANGLE[1]) <= 1
    (spam,) = [f for f in run.records_of(run.job_of("spam.mkv"))[1] if f.state == "closed"]
    assert f"{spam.policy}/{spam.label}" == SPAM[0] and abs(spam.start_ts - SPAM[1]) <= 1
    assert run.records_of(run.job_of("clean.ts"))[1] == []


def test_job_records_carry_the_job_id_and_source(run: Run, library: Path) -> None:
    for job_id, name in run.jobs.items():
        scores, flags = run.records_of(job_id)
        if name not in ("triangle.mp4", "spam.mkv", "clean.ts"):
            assert scores == [] and flags == []  # failed jobs published no records
            continue
        source = str(next(library.rglob(name)))  # the path, also for the file:// job
        for record in [*scores, *flags]:
            assert record.job_id == job_id
            assert record.source == record.stream_id == source
    # every record on the topics came from a job here, keyed by its job id
    assert run.scores and all(r.key == r.json()["job_id"].encode() for r in run.scores + run.flags)


def test_a_job_goes_accepted_progress_done(run: Run) -> None:
    for name in ("triangle.mp4", "spam.mkv", "clean.ts"):
        job_id = run.job_of(name)
        statuses = run.status_of(job_id)
        states = [s.state for s in statuses]
        assert states[0] == "accepted" and states[-1] == "done"
        assert set(states[1:-1]) == {"progress"}  # at least one: after the decode
        done = statuses[-1]
        scores, flags = run.records_of(job_id)
        assert done.frames_scored == len(scores) == done.frames_total
        assert done.flags == sum(f.state == "closed" for f in flags)
        progress = [s.frames_scored for s in statuses[1:-1]]
        assert progress == sorted(progress) and progress[-1] <= done.frames_scored
        assert statuses[1].frames_total == done.frames_scored  # known once decoded
        assert done.codec == "h264" and done.width == done.height == 128
        assert done.duration == pytest.approx(8 if name != "clean.ts" else 4, abs=0.25)
        assert done.model == "clipguard-demo" and done.policy_set and done.weights_sha256
        assert {s.job_id for s in statuses} == {job_id}
        assert all(s.source == done.source and s.worker == done.worker for s in statuses)


def test_bad_inputs_and_malformed_jobs_fail_with_their_error_class(run: Run) -> None:
    cases = {  # a decode failure's reason is generic: no path, size or detail (in the log)
        "corrupt.mp4": ("InvalidMedia", "not valid media"),
        "audio-only.mp4": ("UnsupportedMedia", "no video stream"),
        "not json": ("InvalidJob", "Invalid JSON"),
        "relative path": ("InvalidJob", "not an absolute path"),
    }
    for name, (error_class, words) in cases.items():
        statuses = run.status_of(run.job_of(name))
        states = [s.state for s in statuses]
        # a request that is no job is never accepted
        assert states == (["failed"] if error_class == "InvalidJob" else ["accepted", "failed"])
        failed = statuses[-1]
        assert failed.error_class == error_class, failed
        assert failed.reason and words in failed.reason, failed.reason
        if error_class != "InvalidJob":  # a request's own problems are its own to read
            assert name not in failed.reason and "/" not in failed.reason


def test_jobs_are_committed_and_a_second_worker_does_not_redo_them(run: Run) -> None:
    first = {s.worker for j in run.jobs for s in run.status_of(j)}
    assert len(first) == 1  # one worker ran the first jobs, each once
    for job_id in run.jobs:
        assert [s.state for s in run.status_of(job_id)].count("accepted") <= 1
    # the held job: taken by the first worker, abandoned uncommitted when it stopped, then
    # run by the second one
    held = run.status_of(run.held_job)
    assert held[0].state == "accepted" and held[0].worker in first
    assert "done" not in {s.state for s in held if s.worker in first}
    second = held[-1].worker
    assert second not in first and held[-1].state == "done"
    mine = [s for s in held if s.worker == second]
    assert [s.state for s in mine].count("accepted") == 1 and mine[0].state == "accepted"
    # it ran longer than the group's max poll interval, and stayed in the group: polled
    # while it waited, it was neither taken over nor run again, and its commit held
    assert mine[-1].at - mine[0].at >= HOLD_S > MAX_POLL_MS / 1000
    scores, flags = run.records_of(run.held_job)
    assert {s.source for s in scores} == {held[-1].source} and held[-1].source.startswith("http")
    tri = [f for f in flags if f.state == "closed"]
    assert [(f.policy, f.label) for f in tri] == [tuple(TRIANGLE[0].split("/"))]
    # every job record of the run is committed: 9 here, 5 from the command line
    assert run.committed == len(run.jobs) + 1 + 5


# --------------------------------------------------------------------------------------------
# clipguard scan --bootstrap-servers


def test_scan_kafka_writes_what_a_local_scan_writes(
    run: Run, local: dict[str, FileScan], library: Path
) -> None:
    assert run.cli_code == EXIT_PARTIAL == 3, run.cli_err
    outdir = run.cli_dir
    summary = json.loads((outdir / "summary.json").read_text())
    files = {Path(f["source"]).name: f for f in summary["files"]}
    assert set(files) == {"triangle.mp4", "spam.mkv", "clean.ts", "corrupt.mp4", "audio-only.mp4"}
    assert files["corrupt.mp4"]["error"]["class"] == "InvalidMedia"
    assert files["audio-only.mp4"]["error"]["class"] == "UnsupportedMedia"
    flags = [
        FlagEvent.model_validate_json(x) for x in (outdir / "flags.jsonl").read_text().splitlines()
    ]
    scores = [
        ScoreRecord.model_validate_json(x)
        for x in (outdir / "scores.jsonl").read_text().splitlines()
    ]
    for name in ("triangle.mp4", "spam.mkv", "clean.ts"):
        f = files[name]
        assert f["status"] == "scanned" and f["frames_scored"] == local[name].frames_scored
        assert f["duration"] == pytest.approx(local[name].duration, abs=1e-3)
        assert f["content_sha256"]
        source = local[name].source
        _same_incidents([x for x in flags if x.source == source], local[name].flags)
        assert [x["event_id"] for x in f["flags"]] == [x.event_id for x in local[name].incidents]
        mine = [x for x in scores if x.source == source]
        assert len(mine) == len(local[name].scores) and len({x.job_id for x in mine}) == 1
    assert summary["model"]["name"] == "clipguard-demo" and summary["model"]["demo"]
    assert summary["settings"] == {"sampling": {"mode": "fps", "fps": 1.0}, "fit": "pad"}
    assert summary["policy_set"] in summary["policy_sets"]  # described for the report
    page = (outdir / "report.html").read_text()
    assert page.count('<svg class="timeline"') == 3 and "InvalidMedia" in page
    assert "scan: 5 inputs: 3 scanned, 0 scanned before (skipped), 2 failed" in run.cli_out
    assert "corrupt.mp4: InvalidMedia" in run.cli_out
    assert len([x for x in run.cli_err.splitlines() if "/5] " in x]) == 5  # progress lines

    # a local scan into the folder resumes from it: the scanned inputs were scanned with the
    # same content, model, weights, policies and sampling
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["scan", str(library), "--out", str(outdir)])
    assert code == EXIT_PARTIAL, err.getvalue()
    assert "0 scanned, 3 scanned before (skipped), 2 failed" in out.getvalue()


# --------------------------------------------------------------------------------------------
# the job request


def test_job_requests_are_validated() -> None:
    for uri in ("/data/a.mp4", "file:///data/a%20b.mp4", "https://host/v.webm?sig=1"):
        assert JobRequest.model_validate({"uri": uri}).uri == uri
    bad = [
        ({"uri": "a.mp4"}, "not an absolute path"),
        ({"uri": "ftp://host/a.mp4"}, "scheme 'ftp'"),
        ({"uri": "https://u:p@host/a.mp4"}, "credentials"),
        ({"uri": "/a.mp4", "keyframes": True, "sample_fps": 2}, "at most one sampling"),
        ({"uri": "/a.mp4", "colour": "red"}, "Extra inputs"),
        ({"uri": "/a.mp4", "fit": "stretch"}, "fit"),
        ({}, "uri"),
    ]
    for value, words in bad:
        with pytest.raises(ValueError, match=words):
            JobRequest.model_validate(value)
    options = job_options(JobRequest(uri="/a.mp4", scene_change=0.3, fit="tiles"))
    assert options.describe() == {
        "sampling": {"mode": "scene", "scene_threshold": 0.3},
        "fit": "tiles",
    }
    assert job_options(JobRequest(uri="/a.mp4")).describe()["sampling"] == {
        "mode": "fps",
        "fps": 1.0,
    }
    assert json.loads(JobRequest(uri="/a.mp4").to_json())["schema"] == "clipguard.job/1"
