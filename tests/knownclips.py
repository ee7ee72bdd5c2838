"""Generated known content for the hash tests: textured clips (PDQ needs detail: flat synthetic
scenes have a low PDQ quality), a live stream with a known clip spliced into it, and writers.

Every picture is multi-scale noise with a few discs drawn on it, drifting slowly, so that
frames half a second apart stay within a few bits of each other while pictures of another seed
are about 128 bits away.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np

FPS = 10
W, H = 320, 240


def texture(seed: int, w: int = W, h: int = H) -> np.ndarray:
    """A textured picture, ``(h, w, 3)`` RGB uint8, different for every seed."""
    rng = np.random.default_rng(seed)
    tex = np.zeros((h, w, 3), np.float32)
    for scale in (4, 16, 48):
        noise = rng.normal(0, 1, (h // scale + 2, w // scale + 2, 3)).astype(np.float32)
        tex += cv2.resize(noise, (w, h)) * (50 / scale**0.3)
    image = np.clip(tex + rng.uniform(70, 180, 3), 0, 255).astype(np.uint8)
    for _ in range(4):
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        cv2.circle(image, centre, int(rng.integers(h // 10, h // 4)), colour, -1)
    return image


def frames(seed: int, seconds: float, fps: int = FPS) -> list[np.ndarray]:
    """``seconds`` of a textured picture drifting by a pixel every few frames."""
    base = texture(seed)
    return [np.roll(base, i // 3, axis=1) for i in range(round(seconds * fps))]


def write(path: Path, pictures: list[np.ndarray], *, fps: int = FPS, crf: int = 20) -> Path:
    """H.264 in the container ``path``'s suffix names, a keyframe every second."""
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = pictures[0].shape[:2]
    with av.open(str(path), "w") as out:
        stream: Any = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {
            "crf": str(crf),
            "preset": "veryfast",
            "x264-params": f"log-level=none:keyint={fps}:min-keyint={fps}:scenecut=0",
        }
        for i, rgb in enumerate(pictures):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def resized(pictures: list[np.ndarray], scale: float) -> list[np.ndarray]:
    h, w = pictures[0].shape[:2]
    size = (round(w * scale) // 2 * 2, round(h * scale) // 2 * 2)
    return [cv2.resize(p, size, interpolation=cv2.INTER_AREA) for p in pictures]


HASH_POLICY = """\
id: known-clips
version: {version}
kind: hash
description: Clips we have taken down before.
owner: trust-and-safety@example.com
severity: high
action: block
banks: [known]
signals: [pdq]
max_distance: {distance}
"""
SCAN_FPS = 2.0  # frames a stored-stream scan samples a second


def hash_policy(folder: Path, version: int, distance: int) -> Path:
    """``known-clips.yaml`` in ``folder``: a hash policy on bank ``known`` at ``distance``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "known-clips.yaml"
    path.write_text(HASH_POLICY.format(version=version, distance=distance))
    return path


class ScannedStore:
    """A folder of streams scanned into a frame store with a hash policy in force: ``live.mp4``
    holds 6 s of a known clip (from 3 s on) between unrelated content, ``other.mp4`` is
    unrelated; bank ``known`` holds the clip's frame at 3 s into it (6 s into the stream) as
    PDQ entry ``case-12`` (tag ``spam``); the deployed policy (``deployed/``) matches within
    31 bits. The clip drifts a pixel every few frames, so its frames' distance to the banked
    one grows with their time from it."""

    def __init__(self, root: Path) -> None:
        from consumers.cli import main

        self.root = root
        self.store = root / "store"
        self.banks = root / "banks"
        self.deployed = root / "deployed"
        self.stream = root / "streams" / "live.mp4"
        clip = frames(2, 6.0)
        write(self.stream, frames(5, 3.0) + clip + frames(7, 3.0))
        write(root / "streams" / "other.mp4", frames(9, 3.0))
        still = root / "reported.png"
        cv2.imwrite(str(still), cv2.cvtColor(clip[30], cv2.COLOR_RGB2BGR))
        argv = ["banks", "add", "known", "--image", str(still), "--id", "case-12", "--tags", "spam"]
        assert main([*argv, "--dir", str(self.banks)]) == 0
        hash_policy(self.deployed, 1, 31)
        self.out = root / "scan-out"
        argv = [
            "scan", str(root / "streams"), "--policies", str(self.deployed),
            "--banks", str(self.banks), "--store", str(self.store), "--out", str(self.out),
            "--sample-fps", str(SCAN_FPS),
        ]  # fmt: skip
        assert main(argv) == 0
