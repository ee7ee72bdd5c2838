"""The generated library of clips the scan tests use (tests/test_scan.py, tests/test_jobs.py).

Real H.264 clips made from the synthetic scene generator, 128 px at 5 fps with a keyframe a
second: an empty scene with a demo concept shown between known times. :func:`make_library`
writes the folder both tests scan.
"""

from __future__ import annotations

from pathlib import Path

import media
import numpy as np

from pipeline.demo import scenes

FPS = 5
SIDE = 128
TRIANGLE = ("red-triangle/red-triangle", 2.0, 5.0)  # label, shown from, shown until (seconds)
SPAM = ("spam-text/spam-text", 3.0, 6.0)


def empty(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return scenes.render(scenes.sample_spec(rng, split="train", p_empty=1.0), SIDE)


def showing(concept: str, colour: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    spec = scenes.sample_single_object_spec(rng, split="heldout", concept=concept, colour=colour)
    return scenes.render(spec, SIDE)


def clip(
    seconds: float, shown: np.ndarray | None, start: float, end: float, seed: int
) -> list[np.ndarray]:
    """``seconds`` of an empty scene with ``shown`` on screen from ``start`` to ``end``."""
    background = empty(seed)
    return [
        shown if shown is not None and start <= i / FPS < end else background
        for i in range(round(seconds * FPS))
    ]


def write_clip(path: Path, frames: list[np.ndarray], fmt: str) -> Path:
    """H.264 at FPS with a keyframe every second (tests/media.py writes it)."""
    media.write_frames(path, frames, fmt=fmt, fps=FPS, gop=FPS)
    return path


def make_library(base: Path) -> Path:
    """The folder to scan: three good clips in two folders (a red triangle from 2 s to 5 s,
    the word SPAM from 3 s to 6 s, a clean clip), a corrupt file, an audio-only file and a text
    file that is not media."""
    write_clip(base / "triangle.mp4", clip(8, showing("triangle", "red", 1), 2, 5, 11), "mp4")
    write_clip(
        base / "sub" / "spam.mkv", clip(8, showing("SPAM", "yellow", 2), 3, 6, 12), "matroska"
    )
    write_clip(base / "sub" / "clean.ts", clip(4, None, 0, 0, 13), "mpegts")
    (base / "corrupt.mp4").write_bytes(np.random.default_rng(5).bytes(20_000))
    (base / "sub" / "audio-only.mp4").write_bytes(media.audio_only("mp4", seconds=2.0))
    (base / "notes.txt").write_text("not a video\n")
    return base
