"""Policy studio over a large frame store: the response time of every page that reads the store.

The bench builds its own store (cached under ``.cache/bench_studio_store``; ``--fresh``
rebuilds it): ``--frames`` frames (default 1 million) of the demo model (96-d float16 unit
embeddings), in streams of 1,000 frames at 2 frames a second, written as a store sink writes
them: Parquet files of about 64k rows in which the segments (4 frames) of 64 streams
interleave, each frame with a JPEG thumbnail of about 2 KB (distinct bytes per frame), the
demo policies' snapshot as the set in force. Every stream has stretches of frames near the
red-triangle prompt of varied strength, so backtests and counts find incidents.

It serves the studio (uvicorn, a free local port, as ``clipguard studio --store`` serves it)
and requests each page over HTTP, one request at a time: the first request (cold) and the
median and worst of ``--repeats`` warm ones; a request that must differ each time (a slider
count at a new threshold) is timed at new values. Goal (issue: policy studio): every
interaction under 2 s at 1 million stored frames. By default the bench waits for the studio's
background preparation (:mod:`consumers.studio.warm`) before the first request, as a user
opening the studio a little after it started would; ``--no-warm`` times the first requests
doing that work themselves. ``--during-preparation`` times the pages that need the prepared
answers (Tune, its live count, Backtest, queuing the store's incidents) right after start,
while the background preparation runs: each request's time to the first response (the whole
page, or the page with a progress line), and the time until the whole answer is shown.

    python bench/bench_studio_store.py [--frames 1000000] [--repeats 5] [--fresh] [--no-warm]
        [--during-preparation] [--data DIR]

The studio keeps what it prepares in its data folder (``prepared/``): with ``--data DIR`` given
twice, the second run times a studio restarted on an unchanged store.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PER_STREAM = 1000
GROUP = 64  # streams whose segments interleave in one file
DAY0 = 1_764_547_200.0  # 2025-12-01 00:00 UTC


def _thumbnail_pool(count: int) -> list[bytes]:
    """JPEGs of demo scenes at 96 px, about 2 KB each."""
    import cv2

    from pipeline.demo.video import demo_shots, render_frame

    shots = demo_shots()
    out = []
    for n in range(count):
        shot = shots[n % len(shots)]
        image = render_frame(shot, shot.start + (n % 8) / 8, width=96, height=96)
        ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        assert ok
        out.append(jpeg.tobytes())
    return out


def build(where: Path, policies: Path, frames: int) -> None:
    import pyarrow as pa

    from pipeline.models import load_model
    from pipeline.policies import load_policies
    from pipeline.policies.compile import PolicyCompiler
    from pipeline.policies.judge import FrameRef
    from pipeline.store import FrameInfo, StoreWriter, frame_table, snapshot_bytes

    model = load_model("clipguard-demo")
    compiler = PolicyCompiler(model, cache_dir=where.parent / "compiled")
    loaded = load_policies([policies])
    policy_set = compiler.compile(loaded)
    weights = model.fingerprint()
    target = compiler.encode_text(["a red triangle"])[0]
    writer = StoreWriter(where)
    writer.write_snapshot(
        policy_set.id, snapshot_bytes(policy_set, model=model.name, weights_sha256=weights)
    )
    pool = _thumbnail_pool(64)
    rng = np.random.default_rng(3)
    versions = {lp.policy.id: lp.policy.version for lp in loaded}
    streams = frames // PER_STREAM
    refs = [FrameRef(seq=i // 4, frame_index=i % 4, ts=i / 2) for i in range(PER_STREAM)]
    started = time.perf_counter()
    for group in range(0, streams, GROUP):
        tables = []
        for s in range(group, min(group + GROUP, streams)):
            emb = rng.standard_normal((PER_STREAM, target.shape[0])).astype(np.float32)
            for start in rng.choice(PER_STREAM - 20, size=5, replace=False):
                emb[start : start + int(rng.integers(2, 12))] += target * rng.uniform(2, 10)
            emb /= np.linalg.norm(emb, axis=1, keepdims=True)
            salt = rng.integers(0, 256, (PER_STREAM, 8), dtype=np.uint8)
            thumbs = [pool[(s + i) % len(pool)] + salt[i].tobytes() for i in range(PER_STREAM)]
            info = FrameInfo(
                model=model.name,
                weights_sha256=weights,
                preprocess="pad@64",
                policy_set=policy_set.id,
                policy_versions=versions,
                stream_id=f"cam-{s:04d}",
                scored_at=DAY0 + group * 10 + s % GROUP,
                segment_partition=s % 12,
                segment_offset=s,
            )
            tables.append(frame_table(info, refs, emb, thumbs))
        table = pa.concat_tables(tables)
        # segments of the group's streams in arrival order, as a sink writes them
        count = len(tables)
        seq = np.tile(np.arange(PER_STREAM) // 4, count)
        stream = np.repeat(np.arange(count), PER_STREAM)
        table = table.take(pa.array(np.lexsort((stream, seq))))
        writer.write(table, f"bench-{group // GROUP:05d}")
        print(f"  wrote {group + count} streams ({time.perf_counter() - started:.0f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--fresh", action="store_true")
    parser.add_argument(
        "--no-warm",
        action="store_true",
        help="without the background preparation: first requests compute what they need",
    )
    parser.add_argument(
        "--during-preparation",
        action="store_true",
        help="time the pages that need the prepared answers while the preparation runs",
    )
    parser.add_argument(
        "--data",
        type=Path,
        help="the studio's data folder, kept between runs (default: a new one each run); a "
        "second run with the same folder times a restarted studio, which reads the answers "
        "it prepared before from it",
    )
    parser.add_argument(
        "--prepare-store",
        action="store_true",
        help="the studio prepares the store's answers before serving (clipguard studio "
        "--prepare-store)",
    )
    parser.add_argument("--cache", type=Path, default=ROOT / ".cache" / "bench_studio_store")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)

    from consumers.studio import StudioConfig, create_app
    from pipeline.policies.bundled import DEMO_POLICIES
    from tests.studio_fixtures import free_port, serve

    tmp = Path(tempfile.mkdtemp(prefix="bench-studio-store-"))
    policies = tmp / "policies"
    shutil.copytree(DEMO_POLICIES, policies)
    where = args.cache / f"store-{args.frames}"
    if args.fresh and where.exists():
        shutil.rmtree(where)
    if not where.exists():
        print(f"building {where} ({args.frames} frames)")
        build(where, policies, args.frames)
    for old in where.glob("_labels.sqlite*"):  # the review queue of a run before
        old.unlink()
    size = sum(f.stat().st_size for f in where.rglob("*.parquet"))
    print(f"store: {args.frames} frames, {size / 1e9:.2f} GB in {where}")
    port = free_port()
    config = StudioConfig(
        policies_dir=policies,
        data_dir=args.data or tmp / "data",
        port=port,
        store=where,
        warm=not args.no_warm,
        prepare_store=args.prepare_store,
    )
    started = time.perf_counter()
    app = create_app(config, say=lambda line: print(f"  studio: {line}", flush=True))
    server, thread = serve(app, port)
    warmer = app.state.studio.warmer
    if args.during_preparation:
        _during_preparation(f"http://127.0.0.1:{port}", started, args.frames)
        server.should_exit = True  # type: ignore[attr-defined]
        thread.join(timeout=30)  # type: ignore[attr-defined]
        shutil.rmtree(tmp, ignore_errors=True)
        return
    if warmer is not None:
        while warmer.warmed is None:
            time.sleep(0.05)
        print(
            f"store's answers prepared in the background {time.perf_counter() - started:.1f} s "
            "after start (each policy's stored-traffic scores, the backtest)"
        )
    base = f"http://127.0.0.1:{port}"
    origin = {"Origin": base}
    found: dict[str, str] = {}

    def get(path: str, expect: str = "") -> Callable[[], str]:
        return lambda: _request(base + path, expect=expect)

    thresholds = iter(np.round(np.linspace(0.20, 0.75, 400), 4).tolist())

    def count() -> str:
        t = next(thresholds)
        return _request(
            f"{base}/policies/red-triangle/tune/count?label=red-triangle&threshold={t}",
            expect='"incidents"',
        )

    def queue() -> str:
        page = _request(base + "/store/queue", b"", origin, expect="incidents queued")
        found["incident"] = re.findall(r'href="/review/([0-9a-f]{16})"', page)[0]
        return page

    cases: list[tuple[str, Callable[[], str]]] = [
        ("policies page", get("/")),
        ("tune page (stored traffic)", get("/policies/red-triangle/tune", "stored-passing")),
        ("tune: live count, new threshold", count),
        ("backtest page (store status)", get("/backtest", "stored frames in")),
        ("backtest: run over the store", get("/backtest?run=1", "frames judged in")),
        ("review: queue the store's incidents", queue),
        ("review page (50 store incidents)", get("/review", "queue-total")),
        ("incident page (timeline)", lambda: _request(f"{base}/review/{found['incident']}")),
        ("search the store by text", get("/search?q=a+red+triangle", "nearest frames")),
    ]
    print(f"studio on {base}: demo policies, demo model, {args.frames} stored frames")
    print(f"{'request':38} {'cold ms':>9} {'warm median':>12} {'warm max':>9}")
    worst = 0.0
    for name, call in cases:
        cold = _time(call)
        warm = [_time(call) for _ in range(args.repeats)]
        worst = max(worst, cold, max(warm))
        print(f"{name:38} {cold:9.1f} {statistics.median(warm):12.1f} {max(warm):9.1f}")
    print(f"slowest request, cold or warm: {worst:.1f} ms (goal: under 2000 ms at 1 M frames)")
    server.should_exit = True  # type: ignore[attr-defined]
    thread.join(timeout=30)  # type: ignore[attr-defined]
    shutil.rmtree(tmp, ignore_errors=True)


def _during_preparation(base: str, started: float, frames: int) -> None:
    """Each page that needs a prepared answer, asked as soon as the studio serves: the first
    response's time, whether it was the whole answer, and the time until it is (the page
    asked again, as its progress line does, until it is whole)."""
    whole = {
        "tune page (stored traffic)": ("/policies/red-triangle/tune", "stored-passing"),
        "tune: live count": (
            "/policies/red-triangle/tune/count?label=red-triangle&threshold=0.42",
            '"incidents"',
        ),
        "backtest: run over the store": ("/backtest?run=1", "frames judged in"),
    }
    print(f"studio serving {time.perf_counter() - started:.1f} s after start; {frames} frames")
    print(
        f"{'request (during preparation)':38} {'first ms':>9} {'whole?':>7} {'whole after ms':>15}"
    )
    worst = 0.0
    for name, (path, done) in whole.items():
        asked = time.perf_counter()
        first = _timed_get(base + path)
        worst = max(worst, first[0])
        complete = done in first[1]
        while done not in first[1]:
            time.sleep(0.5)
            first = (first[0], _timed_get(base + path)[1])
        after = (time.perf_counter() - asked) * 1000
        print(f"{name:38} {first[0]:9.1f} {'yes' if complete else 'no':>7} {after:15.1f}")
    asked = time.perf_counter()
    t0 = time.perf_counter()
    page = _request(base + "/store/queue", b"", {"Origin": base})
    queue_ms = (time.perf_counter() - t0) * 1000
    worst = max(worst, queue_ms)
    while "incidents queued" not in page:  # queued once the backtest is ready
        time.sleep(0.5)
        if not json.loads(_request(base + "/store/preparing"))["busy"]:
            break
    after = (time.perf_counter() - asked) * 1000
    print(f"{'review: queue the store incidents':38} {queue_ms:9.1f} {'':>7} {after:15.1f}")
    print(f"slowest first response: {worst:.1f} ms (goal: under 2000 ms at 1 M frames)")


def _timed_get(url: str) -> tuple[float, str]:
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=600) as response:
        page = str(response.read().decode("utf-8", "replace"))
    return (time.perf_counter() - t0) * 1000, page


def _request(
    url: str, body: bytes | None = None, headers: dict[str, str] | None = None, expect: str = ""
) -> str:
    req = urllib.request.Request(url, data=body, headers=headers or {})
    with urllib.request.urlopen(req, timeout=600) as response:
        page = str(response.read().decode("utf-8", "replace"))
    if expect and expect not in page:
        start = page.find("<main>")
        raise SystemExit(f"{url}: the page did not show {expect!r}:\n{page[start : start + 1500]}")
    return page


def _time(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return (time.perf_counter() - started) * 1000


if __name__ == "__main__":
    main()
