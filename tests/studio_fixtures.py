"""Shared set-up for the studio tests: a copy of the demo policies (one switched to shadow
mode), a short demo video (empty, red triangle, blue circle, SPAM: a second each), and flag
events pointing into it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from pipeline.demo.video import demo_shots, write_video
from pipeline.policies.bundled import DEMO_POLICIES

ROOT = Path(__file__).resolve().parent.parent
#: Debian's Chromium, for the browser tests (the ``browser`` fixture in conftest.py drives it).
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Three incidents of red-triangle on the video: two on the triangle, one on the SPAM sign; peak
# scores chosen for the Tune check.
PEAKS = (0.62, 0.58, 0.47)
_PEAK_TS = (1.5, 1.25, 3.5)
VIDEO_SECONDS = 4


def make_policies(folder: Path) -> Path:
    """``folder/policies``: the demo policies, spam-text in shadow mode."""
    target = folder / "policies"
    shutil.copytree(DEMO_POLICIES, target)
    spam = target / "spam-text.yaml"
    spam.write_text(spam.read_text().replace("mode: enforce", "mode: shadow"))
    return target


def make_incidents(folder: Path) -> Path:
    """``folder/flags.jsonl``: three closed red-triangle incidents on a 4 s MP4."""
    video = write_video(folder / "clip.mp4", demo_shots(shot_seconds=1.0)[:VIDEO_SECONDS])
    lines = []
    for n, (peak, peak_ts) in enumerate(zip(PEAKS, _PEAK_TS, strict=True)):
        start = peak_ts - 0.5
        lines.append(
            {
                "schema": "clipguard.flag/1",
                "event_id": f"e{n}",
                "state": "closed",
                "stream_id": "clip",
                "policy": "red-triangle",
                "policy_version": 1,
                "label": "red-triangle",
                "severity": "medium",
                "action": "flag",
                "start_ts": start,
                "end_ts": start + 1.0,
                "peak_score": peak,
                "peak_ts": peak_ts,
                "threshold": 0.55,
                "margin": None,
                "top_prompt": "a red triangle",
                "model": "clipguard-demo",
                "source": str(video),
            }
        )
    flags = folder / "flags.jsonl"
    flags.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return flags


def scan_into_store(root: Path) -> tuple[Path, Path, Path]:
    """The demo policies in ``root/policies``, the 4 s video scanned at 4 frames a second with
    ``clipguard scan --store``: (policies, store, scan output with flags.jsonl and
    scores.jsonl). The stream is the video's path."""
    from consumers.cli import main

    policies = make_policies(root)
    make_incidents(root)  # writes clip.mp4: the red triangle from 1 s to 2 s
    store, out = root / "store", root / "scan"
    status = main(
        [
            "scan",
            str(root / "clip.mp4"),
            "--policies",
            str(policies),
            "--sample-fps",
            "4",
            "--store",
            str(store),
            "--out",
            str(out),
        ]
    )
    assert status == 0
    return policies, store, out


def serve(app: object, port: int) -> tuple[object, object]:
    """``app`` served by uvicorn on 127.0.0.1:``port`` in a thread, once it has started:
    (server, thread); stop with ``server.should_exit = True`` and join the thread."""
    import threading
    import time

    import uvicorn

    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")  # type: ignore[arg-type]
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the studio did not start"
        time.sleep(0.05)
    return server, thread


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def synthetic_store(root: Path, policies: Path, *, streams: int, frames: int) -> Path:
    """A store of ``streams`` streams of ``frames`` frames of the demo model (2 frames a
    second): random unit embeddings, with stretches near the red-triangle prompt of varied
    strength in every stream, so that every threshold passes some frames and opens a
    different number of incidents. Thumbnails (small noise pictures) on the first stream."""
    import numpy as np

    from pipeline.events import EncoderInfo
    from pipeline.models import load_model
    from pipeline.policies import load_policies
    from pipeline.policies.compile import PolicyCompiler
    from pipeline.policies.judge import FrameRef
    from pipeline.store import FrameRecorder

    model = load_model("clipguard-demo")
    compiler = PolicyCompiler(model, cache_dir=root / "compiled")
    policy_set = compiler.compile(load_policies([policies]))
    target = compiler.encode_text(["a red triangle"])[0]
    info = EncoderInfo(
        weights_sha256=model.fingerprint(), precision="fp32", backend="torch", runtime="test"
    )
    store = root / "store"
    recorder = FrameRecorder(
        store, encoder=info, model=model.name, fit="pad", resolution=32, policies=policy_set
    )
    rng = np.random.default_rng(7)
    for s in range(streams):
        emb = rng.standard_normal((frames, target.shape[0])).astype(np.float32)
        for start in range(5, frames - 12, 17):
            emb[start : start + int(rng.integers(2, 9))] += target * rng.uniform(2.0, 9.0)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        refs = [FrameRef(seq=i // 8, frame_index=i % 8, ts=i / 2) for i in range(frames)]
        images = None
        if s == 0:
            images = [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(frames)]
        recorder.add(f"cam-{s}", refs, emb, images)
        recorder.flush(f"cam-{s}")
    return store


def backtest_at(policies: Path, store: Path, threshold: float, folder: Path) -> tuple[int, int]:
    """(frames passing, incidents) of red-triangle in the store backtest
    (:func:`pipeline.store.backtest`) with the policy file edited to ``threshold``."""
    from pipeline.models import load_model
    from pipeline.policies import load_policies
    from pipeline.policies.compile import PolicyCompiler
    from pipeline.store import backtest, open_store

    edited = folder / f"at-{threshold}"
    if not edited.exists():
        shutil.copytree(policies, edited)
        red = edited / "red-triangle.yaml"
        red.write_text(red.read_text().replace("threshold: 0.63", f"threshold: {threshold}"))
    model = load_model("clipguard-demo")
    compiled = PolicyCompiler(model, cache_dir=folder / "compiled").compile(load_policies([edited]))
    result = backtest(
        compiled, open_store(store), model=model.name, weights_sha256=model.fingerprint()
    )
    diff = result.labels["red-triangle/red-triangle"]
    return diff.frames_passing, diff.incidents


def whole_page(client: Any, url: str, timeout: float = 60.0) -> str:
    """``url`` once the studio has prepared what it needs: a page asked while the store's
    answers (or the model) are still being prepared comes with a progress line and is asked
    again, as its own script does in a browser."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        page = str(client.get(url).text)
        if 'id="preparing"' not in page:
            return page
        assert time.monotonic() < deadline, f"{url} was never whole"
        time.sleep(0.1)
