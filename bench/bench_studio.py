"""Policy studio: response time of every page and interaction, on the demo policies.

The studio is served by uvicorn on a free local port, as `clipguard studio` serves it, and
requested over HTTP (urllib, one request at a time): the demo policies (bundled), a
review queue of 30 incidents on a 24 s demo video, and the demo model. For each request: the
first (cold: the model loads, the decode pool starts, regression examples are scored, frames
around each incident's peak are decoded) and the median and worst of --repeats warm ones.
Goal (issue: policy studio): every interaction under 300 ms on the demo data, under 2 s at
1 million stored frames.

With ``--store DIR`` (a frame store, e.g. from ``clipguard scan --store``) or
``--synthetic-store N`` (N frames of the demo model written first: streams of 1,000 frames at
2 frames a second, random unit embeddings with a red-triangle-like stretch in every tenth
stream, no thumbnails), the store pages are timed too: the Backtest page with a run (every
stored frame re-scored, temporal rules, diff) and a text search. These need the frame store
package (``pipeline.store``).

    python bench/bench_studio.py [--repeats 20] [--store DIR | --synthetic-store 1000000]
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _incidents(folder: Path, count: int) -> Path:
    from pipeline.demo.video import demo_shots, write_video

    video = write_video(folder / "demo.mp4", demo_shots())
    lines = []
    for n in range(count):
        start = (n * 0.7) % 20
        lines.append(
            {
                "schema": "clipguard.flag/1",
                "event_id": f"e{n}",
                "state": "closed",
                "stream_id": f"cam-{n}",
                "policy": "red-triangle",
                "policy_version": 1,
                "label": "red-triangle",
                "severity": "medium",
                "action": "flag",
                "start_ts": start,
                "end_ts": start + 2,
                "peak_score": 0.4 + (n % 10) / 30,
                "peak_ts": start + 1,
                "threshold": 0.55,
                "margin": None,
                "top_prompt": "a red triangle",
                "model": "clipguard-demo",
                "source": str(video),
            }
        )
    path = folder / "flags.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--incidents", type=int, default=30)
    parser.add_argument("--store", type=Path, help="time the store pages on this store")
    parser.add_argument(
        "--synthetic-store", type=int, metavar="N", help="write a store of N frames and use it"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)

    import uvicorn

    from consumers.studio import StudioConfig, create_app
    from pipeline.policies.bundled import DEMO_POLICIES

    tmp = Path(tempfile.mkdtemp(prefix="bench-studio-"))
    policies = tmp / "policies"
    shutil.copytree(DEMO_POLICIES, policies)
    flags = _incidents(tmp, args.incidents)
    store = args.store
    if args.synthetic_store:
        store = tmp / "store"
        started = time.perf_counter()
        _synthetic_store(store, policies, args.synthetic_store)
        print(f"wrote {args.synthetic_store} frames in {time.perf_counter() - started:.1f} s")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = StudioConfig(
        policies_dir=policies, data_dir=tmp / "data", incidents=flags, port=port, store=store
    )
    server = uvicorn.Server(
        uvicorn.Config(create_app(config), host="127.0.0.1", port=port, log_level="error")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    base = f"http://127.0.0.1:{port}"
    origin = {"Origin": base}
    yaml_text = (policies / "red-triangle.yaml").read_bytes()
    image = (policies / "examples" / "red-triangle-1.png").read_bytes()
    clip = (tmp / "demo.mp4").read_bytes()

    def get(path: str, expect: str = "") -> Callable[[], int]:
        return lambda: _request(base + path, expect=expect)

    def post(path: str, body: bytes, **headers: str) -> Callable[[], int]:
        return lambda: _request(base + path, body, {**origin, **headers})

    cases = [
        ("policies page", get("/")),
        ("edit page", get("/policies/red-triangle/edit")),
        ("live lint (a keystroke)", post("/policies/red-triangle/lint", yaml_text)),
        ("tune page", get("/policies/red-triangle/tune")),
        ("promote page (diff)", get("/policies/red-triangle/promote")),
        ("review page (30 incidents)", get("/review")),
        ("audit page", get("/audit")),
        ("hand-off export", get("/export/handoff.json")),
        (
            "try: upload an image",
            post("/policies/red-triangle/try", image, **{"X-Filename": "a.png"}),
        ),
        (
            f"try: upload a {len(clip) // 1024} KB 24 s video",
            post("/policies/red-triangle/try", clip, **{"X-Filename": "demo.mp4"}),
        ),
    ]
    if store is not None:
        cases += [
            ("backtest: run over the store", get("/backtest?run=1", "frames judged in")),
            ("search the store by text", get("/search?q=a+red+triangle", "nearest frames")),
            ("tune page with stored traffic", get("/policies/red-triangle/tune", "stored-passing")),
        ]
    print(f"studio on {base}: demo policies, {args.incidents} incidents, demo model")
    if store is not None:
        print(f"store: {store}")
    print(f"{'request':38} {'cold ms':>9} {'warm median':>12} {'warm max':>9}")
    worst = 0.0
    for name, call in cases:
        cold = _time(call)
        warm = [_time(call) for _ in range(args.repeats)]
        worst = max(worst, statistics.median(warm))
        print(f"{name:38} {cold:9.1f} {statistics.median(warm):12.1f} {max(warm):9.1f}")
    print(f"slowest warm median: {worst:.1f} ms (goal: under 300 ms on the demo data)")
    if store is not None:
        page = urllib.request.urlopen(base + "/backtest?run=1", timeout=600).read().decode()
        summary = page.split('id="backtest-summary">', 1)[1].split("</p>", 1)[0]
        print("backtest:", " ".join(summary.replace("<b>", "").replace("</b>", "").split())[:200])
    server.should_exit = True
    thread.join(timeout=30)
    shutil.rmtree(tmp, ignore_errors=True)


def _synthetic_store(root: Path, policies: Path, frames: int) -> None:
    """``frames`` stored frames of the demo model: random unit embeddings, and in every tenth
    stream a stretch of 20 frames near the red-triangle prompt (so backtests find incidents)."""
    import numpy as np

    from pipeline.events import EncoderInfo
    from pipeline.models import load_model
    from pipeline.policies import load_policies
    from pipeline.policies.compile import PolicyCompiler
    from pipeline.policies.judge import FrameRef

    store = __import__("pipeline.store", fromlist=["FrameRecorder"])
    model = load_model("clipguard-demo")
    compiler = PolicyCompiler(model, cache_dir=root.parent / "compiled")
    policy_set = compiler.compile(load_policies([policies]))
    target = compiler.encode_text(["a red triangle"])[0]
    info = EncoderInfo(
        weights_sha256=model.fingerprint(), precision="fp32", backend="torch", runtime="bench"
    )
    recorder = store.FrameRecorder(
        root, encoder=info, model=model.name, fit="pad", resolution=64, policies=policy_set
    )
    rng = np.random.default_rng(0)
    per_stream = 1000
    for n in range(0, frames, per_stream):
        count = min(per_stream, frames - n)
        emb = rng.standard_normal((count, target.shape[0])).astype(np.float32)
        if (n // per_stream) % 10 == 0:
            emb[100:120] = target * 8 + emb[100:120]
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        refs = [FrameRef(seq=0, frame_index=i, ts=i / 2) for i in range(count)]
        stream = f"synthetic-{n // per_stream}"
        recorder.add(stream, refs, emb)
        recorder.flush(stream)


def _request(
    url: str, body: bytes | None = None, headers: dict[str, str] | None = None, expect: str = ""
) -> int:
    """The status of a request; exits when the page lacks ``expect`` (it showed an error)."""
    req = urllib.request.Request(url, data=body, headers=headers or {})
    with urllib.request.urlopen(req, timeout=600) as response:
        page = response.read().decode("utf-8", "replace")
        if expect and expect not in page:
            start = page.find("<main>")
            raise SystemExit(
                f"{url}: the page did not show {expect!r}:\n{page[start : start + 1500]}"
            )
        return int(response.status)


def _time(call: Callable[[], int]) -> float:
    start = time.perf_counter()
    status = call()
    elapsed = (time.perf_counter() - start) * 1000
    if status != 200:
        raise SystemExit(f"status {status}")
    return elapsed


if __name__ == "__main__":
    main()
