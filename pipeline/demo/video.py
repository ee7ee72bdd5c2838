"""Videos of synthetic scenes with known objects at known times, for the demo, tests and benches.

A video is a list of :class:`Shot` s, each a scene (:mod:`pipeline.demo.scenes`) shown from
``start`` to ``end`` seconds. The ground truth is the shot list itself::

    shots = demo_shots()                      # empty, red triangle 4-8 s, blue circle, ...
    write_video("demo.mp4", shots)            # H.264 in MP4, 25 fps, a keyframe every second
    [s for s in shots if s.concept == "triangle" and s.colour == "red"]   # when it is on screen

The scene is drawn centred on a canvas of the video's size (``width`` x ``height``; letterbox
bars of the scene's mean colour when the video is not square), with a slow drift so that the
encoder has motion to code, as in real footage.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import numpy.typing as npt

from pipeline.demo import scenes
from pipeline.errors import ConfigError

__all__ = ["Shot", "demo_shots", "render_frame", "write_video"]


@dataclass(frozen=True)
class Shot:
    """``scene`` on screen from ``start`` (inclusive) to ``end`` (exclusive), seconds."""

    start: float
    end: float
    scene: scenes.SceneSpec
    name: str  # what a person would call it: "red triangle", "empty", ...

    @property
    def concept(self) -> str | None:
        primary = self.scene.primary
        return primary.concept if primary is not None else None

    @property
    def colour(self) -> str | None:
        primary = self.scene.primary
        return primary.colour if primary is not None else None


def _single(rng: np.random.Generator, concept: str, colour: str) -> scenes.SceneSpec:
    return scenes.sample_single_object_spec(
        rng, split="heldout", concept=concept, colour=colour, size_range=(0.45, 0.6)
    )


def demo_shots(seed: int = 7, *, shot_seconds: float = 4.0) -> list[Shot]:
    """The demo timeline, ``shot_seconds`` a shot: an empty background, a red triangle, a blue
    circle, a yellow SPAM word, a purple triangle (a near miss for the red-triangle policy),
    then an empty background again. Seeded: the same seed gives the same video."""
    rng = np.random.default_rng(seed)
    empty = scenes.SceneSpec(
        background=scenes.sample_spec(rng, split="train", p_empty=1.0).background
    )
    plan: list[tuple[str, scenes.SceneSpec]] = [
        ("empty", empty),
        ("red triangle", _single(rng, "triangle", "red")),
        ("blue circle", _single(rng, "circle", "blue")),
        ("yellow SPAM", _single(rng, "SPAM", "yellow")),
        ("purple triangle", _single(rng, "triangle", "purple")),
        ("empty", empty),
    ]
    return [
        Shot(i * shot_seconds, (i + 1) * shot_seconds, scene, name)
        for i, (name, scene) in enumerate(plan)
    ]


def render_frame(
    shot: Shot, t: float, *, width: int, height: int, scene_px: int | None = None
) -> npt.NDArray[np.uint8]:
    """The RGB frame at ``t`` seconds: the shot's scene, drifting slowly, on a canvas."""
    side = scene_px or min(width, height)
    scene = scenes.render(shot.scene, 128)
    scene = np.asarray(
        cv2.resize(scene, (side, side), interpolation=cv2.INTER_LINEAR), dtype=np.uint8
    )
    fill = scene.reshape(-1, 3).mean(axis=0).astype(np.uint8)
    canvas = np.empty((height, width, 3), np.uint8)
    canvas[:] = fill
    drift = round(0.02 * side * math.sin(2 * math.pi * (t - shot.start) / 4.0))
    x0 = max(0, min(width - side, (width - side) // 2 + drift))
    y0 = (height - side) // 2
    canvas[y0 : y0 + side, x0 : x0 + side] = scene
    return canvas


def write_video(
    path: str | Path,
    shots: Sequence[Shot],
    *,
    fps: int = 25,
    width: int = 256,
    height: int = 256,
    gop: int | None = None,
    codec: str = "libx264",
) -> Path:
    """Encode the shots back to back (H.264 by default, in the container the suffix names:
    .mp4, .mkv, .ts). ``gop`` is the keyframe interval in frames (default: one a second)."""
    if not shots:
        raise ConfigError("a video needs at least one shot")
    for a, b in itertools.pairwise(shots):
        if not (a.start < a.end <= b.start < b.end):
            raise ConfigError("shots must be in time order, each with start < end")
    path = Path(path)
    gop = gop or fps
    frames = round(shots[-1].end * fps)
    with av.open(str(path), "w") as out:
        stream: Any = out.add_stream(codec, rate=fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = gop
        if codec == "libx264":
            stream.options = {
                "preset": "veryfast",
                "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0",
            }
        shot_i = 0
        for i in range(frames):
            t = i / fps
            while shot_i + 1 < len(shots) and t >= shots[shot_i + 1].start:
                shot_i += 1
            image = render_frame(shots[shot_i], t, width=width, height=height)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path
