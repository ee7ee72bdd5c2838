"""Policy studio: response time of every page and interaction, on the demo policies.

The studio is served by uvicorn on a free local port, as `clipguard studio` serves it, and
requested over HTTP (urllib, one request at a time): the demo policies (policies/demo), a
review queue of 30 incidents on a 24 s demo video, and the demo model. For each request: the
first (cold: the model loads, the decode pool starts, regression examples are scored, frames
around each incident's peak are decoded) and the median and worst of --repeats warm ones.
Goal (issue: policy studio): every interaction under 300 ms on the demo data. No store is
connected (pipeline.store is not part of this build), so store-backed pages are not measured.

    python bench/bench_studio.py [--repeats 20]
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
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)

    import uvicorn

    from consumers.studio import StudioConfig, create_app

    tmp = Path(tempfile.mkdtemp(prefix="bench-studio-"))
    policies = tmp / "policies"
    shutil.copytree(ROOT / "policies" / "demo", policies)
    flags = _incidents(tmp, args.incidents)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = StudioConfig(policies_dir=policies, data_dir=tmp / "data", incidents=flags, port=port)
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

    def get(path: str) -> Callable[[], int]:
        return lambda: _request(base + path)

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
    print(f"studio on {base}: demo policies, {args.incidents} incidents, demo model")
    print(f"{'request':38} {'cold ms':>9} {'warm median':>12} {'warm max':>9}")
    worst = 0.0
    for name, call in cases:
        cold = _time(call)
        warm = [_time(call) for _ in range(args.repeats)]
        worst = max(worst, statistics.median(warm))
        print(f"{name:38} {cold:9.1f} {statistics.median(warm):12.1f} {max(warm):9.1f}")
    print(f"slowest warm median: {worst:.1f} ms (goal: under 300 ms on the demo data)")
    server.should_exit = True
    thread.join(timeout=30)
    shutil.rmtree(tmp, ignore_errors=True)


def _request(url: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> int:
    req = urllib.request.Request(url, data=body, headers=headers or {})
    with urllib.request.urlopen(req, timeout=120) as response:
        response.read()
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
