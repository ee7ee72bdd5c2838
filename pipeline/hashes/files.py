"""Hashing media files for banks: the PDQ of a picture, the vPDQ of a video, the MD5 of a file.

For adding known content to a bank (``clipguard banks add``) and for tests and benchmarks.
These read files in this process, with bounds on size, pixels, frames and duration; they are
meant for content staff chose to bank. Untrusted traffic is hashed by the sandboxed decode
stage instead, from the frames it already decodes.

A video's vPDQ is the PDQ of one frame every ``every_s`` seconds (vPDQ's ``seconds_per_hash``,
default 1), each frame hashed at its decoded size as vPDQ's reference hasher does (RGB24
through swscale, no downscale).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np

from pipeline.errors import HashError
from pipeline.hashes.md5 import md5_file
from pipeline.hashes.pdq import MAX_PIXELS, PdqHash, pdq_hash
from pipeline.hashes.signals import VpdqFrame

__all__ = [
    "MAX_FILE_BYTES",
    "MAX_VIDEO_FRAMES",
    "hash_image_file",
    "hash_video_file",
    "md5_of_file",
]

MAX_FILE_BYTES = 8 << 30  # 8 GiB
MAX_VIDEO_FRAMES = 100_000  # frames hashed from one video (over a day at one a second)
_MAX_DECODED = 20_000_000  # frames decoded from one video, hashed or not


def md5_of_file(path: str | Path) -> bytes:
    """MD5 of a whole file, bounded by :data:`MAX_FILE_BYTES`."""
    return md5_file(path, max_bytes=MAX_FILE_BYTES)


def hash_image_file(path: str | Path) -> PdqHash:
    """PDQ of a picture file (anything OpenCV reads: PNG, JPEG, WebP...), as RGB."""
    p = Path(path)
    _check_size(p)
    data = np.fromfile(p, dtype=np.uint8)
    # IMREAD_COLOR drops alpha and expands grey: (H, W, 3) BGR
    image: Any = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if image is None:
        raise HashError(f"{p}: not a picture OpenCV can read")
    if image.shape[0] * image.shape[1] > MAX_PIXELS:
        raise HashError(f"{p}: over {MAX_PIXELS} pixels")
    return pdq_hash(np.ascontiguousarray(image[:, :, ::-1]))


def hash_video_file(
    path: str | Path, *, every_s: float = 1.0, max_frames: int = MAX_VIDEO_FRAMES
) -> tuple[VpdqFrame, ...]:
    """vPDQ of a video file: the PDQ of the first frame at or after each multiple of
    ``every_s`` seconds (0 hashes every frame)."""
    if every_s < 0:
        raise HashError(f"every_s must be >= 0, not {every_s}")
    p = Path(path)
    _check_size(p)
    frames: list[VpdqFrame] = []
    next_t = 0.0
    try:
        with av.open(str(p)) as container:
            if not container.streams.video:
                raise HashError(f"{p}: no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            t0: float | None = None
            for decoded, frame in enumerate(container.decode(stream)):
                if decoded >= _MAX_DECODED:
                    raise HashError(f"{p}: over {_MAX_DECODED} frames")
                if frame.time is None:
                    continue
                t0 = frame.time if t0 is None else t0
                t = frame.time - t0
                if t + 1e-6 < next_t:
                    continue
                if len(frames) >= max_frames:
                    raise HashError(f"{p}: over {max_frames} hashed frames")
                if frame.width * frame.height > MAX_PIXELS:
                    raise HashError(f"{p}: frames over {MAX_PIXELS} pixels")
                h = pdq_hash(np.asarray(frame.to_ndarray(format="rgb24"), dtype=np.uint8))
                frames.append(VpdqFrame(h.hash, h.quality, round(t, 3)))
                next_t = (math.floor(t / every_s + 1e-9) + 1) * every_s if every_s > 0 else t
    except av.FFmpegError as e:
        raise HashError(f"{p}: cannot decode: {e}") from e
    if not frames:
        raise HashError(f"{p}: no frames decoded")
    return tuple(frames)


def _check_size(p: Path) -> None:
    try:
        size = p.stat().st_size
    except OSError as e:
        raise HashError(f"cannot read {p}: {e.strerror or e}") from e
    if size > MAX_FILE_BYTES:
        raise HashError(f"{p}: {size} bytes is over the {MAX_FILE_BYTES}-byte limit")
