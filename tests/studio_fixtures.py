"""Shared set-up for the studio tests: a copy of the demo policies (one switched to shadow
mode), a short demo video (empty, red triangle, blue circle, SPAM: a second each), and flag
events pointing into it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from pipeline.demo.video import demo_shots, write_video
from pipeline.policies.bundled import DEMO_POLICIES

ROOT = Path(__file__).resolve().parent.parent
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
