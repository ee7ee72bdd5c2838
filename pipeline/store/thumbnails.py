"""Thumbnails of stored frames: small JPEGs of the picture the model saw.

A stored thumbnail is the frame (or tile) as fitted to the model's input (letterbox bars
included with the default ``pad`` fit), downscaled to at most :data:`THUMBNAIL_SIZE` pixels
on its long side (a model input smaller than that is kept at its size) and JPEG-encoded with
OpenCV. Frames flagged as harmful are stored too: see the README on who may read a store.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

import cv2
import numpy as np
import numpy.typing as npt

from pipeline.errors import StoreError

__all__ = ["JPEG_QUALITY", "THUMBNAIL_SIZE", "thumbnail", "thumbnails"]

#: Longest side of a thumbnail, pixels.
THUMBNAIL_SIZE: Final = 128
#: JPEG quality (OpenCV's 0-100 scale).
JPEG_QUALITY: Final = 80


def thumbnail(image: npt.NDArray[np.uint8], *, size: int = THUMBNAIL_SIZE) -> bytes:
    """A JPEG of an (H, W, 3) uint8 RGB picture, at most ``size`` px on its long side."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise StoreError(f"a thumbnail needs an (H, W, 3) uint8 picture, not {image.shape}")
    if size < 8:
        raise StoreError(f"thumbnail size {size} is too small (at least 8 px)")
    h, w = image.shape[:2]
    scale = size / max(h, w)
    picture: npt.NDArray[np.uint8] = image
    if scale < 1:
        dims = (max(1, round(w * scale)), max(1, round(h * scale)))
        picture = np.asarray(cv2.resize(image, dims, interpolation=cv2.INTER_AREA), np.uint8)
    ok, data = cv2.imencode(
        ".jpg", cv2.cvtColor(picture, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
    )
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 picture
        raise StoreError("the thumbnail could not be encoded")
    return bytes(data)


def thumbnails(
    images: Iterable[npt.NDArray[np.uint8]], *, size: int = THUMBNAIL_SIZE
) -> list[bytes]:
    """:func:`thumbnail` of each picture."""
    return [thumbnail(image, size=size) for image in images]
