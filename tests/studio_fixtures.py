"""Shared set-up for the studio tests: a copy of the demo policies (one switched to shadow
mode), a short real video, and flag events pointing into it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.media import encode

ROOT = Path(__file__).resolve().parent.parent
# Three incidents of red-triangle on one real video; peak scores chosen for the Tune check.
PEAKS = (0.62, 0.58, 0.47)


def make_policies(folder: Path) -> Path:
    """``folder/policies``: the demo policies, spam-text in shadow mode."""
    target = folder / "policies"
    shutil.copytree(ROOT / "policies" / "demo", target)
    spam = target / "spam-text.yaml"
    spam.write_text(spam.read_text().replace("mode: enforce", "mode: shadow"))
    return target


def make_incidents(folder: Path) -> Path:
    """``folder/flags.jsonl``: three closed red-triangle incidents on a 3 s MP4."""
    video = folder / "clip.mp4"
    video.write_bytes(encode(75, fmt="mp4"))
    lines = []
    for n, peak in enumerate(PEAKS):
        start = 0.5 * n
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
                "peak_ts": start + 0.5,
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
