"""Content types: which FFmpeg demuxer or decoder an input is pinned to, never probed.

Each supported content type names one demuxer (containers), one decoder with its parser (raw
Annex-B byte streams) or one image decoder (still images). Playlists (HLS, DASH, ffconcat, SDP)
and every other type are refused with :class:`UnsupportedMedia`: a playlist makes FFmpeg open
further URLs or files by itself.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final, Literal

from pipeline.errors import UnsupportedMedia

__all__ = [
    "CONTAINER_TYPES",
    "IMAGE_TYPES",
    "RAW_TYPES",
    "MediaKind",
    "RawCodec",
    "content_type_for",
    "media_kind",
    "normalize_content_type",
]

RawCodec = Literal["h264", "hevc"]
#: How an input is decoded: through a demuxer, as a raw byte stream, or as one still image.
MediaKind = Literal["container", "raw", "image"]

#: Content type -> FFmpeg demuxer.
CONTAINER_TYPES: Final[dict[str, str]] = {
    "video/mp2t": "mpegts",
    "video/mp4": "mp4",
    "video/quicktime": "mp4",
    "video/webm": "matroska",
    "video/x-matroska": "matroska",
    "video/matroska": "matroska",
}
#: Content type -> FFmpeg decoder (with its parser) for raw Annex-B byte streams.
RAW_TYPES: Final[dict[str, RawCodec]] = {
    "video/h264": "h264",
    "video/h265": "hevc",
    "video/hevc": "hevc",
}
#: Content type -> FFmpeg decoder for still images.
IMAGE_TYPES: Final[dict[str, str]] = {
    "image/jpeg": "mjpeg",
    "image/png": "png",
    "image/webp": "webp",
}
_PLAYLIST_TYPES: Final = frozenset(
    {
        "application/vnd.apple.mpegurl",
        "application/x-mpegurl",
        "audio/mpegurl",
        "audio/x-mpegurl",
        "application/dash+xml",
        "application/ffconcat",
        "application/sdp",
    }
)
_EXTENSIONS: Final[dict[str, str]] = {
    ".ts": "video/mp2t",
    ".m2ts": "video/mp2t",
    ".mts": "video/mp2t",
    ".mp4": "video/mp4",
    ".m4v": "video/mp4",
    ".mov": "video/quicktime",
    ".webm": "video/webm",
    ".mkv": "video/x-matroska",
    ".h264": "video/h264",
    ".264": "video/h264",
    ".avc": "video/h264",
    ".h265": "video/h265",
    ".265": "video/h265",
    ".hevc": "video/h265",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".webp": "image/webp",
}
_PLAYLIST_EXTENSIONS: Final = frozenset({".m3u8", ".m3u", ".mpd", ".ffconcat", ".sdp", ".concat"})


def normalize_content_type(content_type: str) -> str:
    """Lower-case ``type/subtype`` with parameters (``; codecs=...``) removed."""
    return content_type.split(";", 1)[0].strip().lower()


def content_type_for(path: str | os.PathLike[str]) -> str:
    """The content type a file name implies, from its extension.

    Raises :class:`UnsupportedMedia` for playlists and unknown extensions."""
    suffix = Path(os.fspath(path)).suffix.lower()
    if suffix in _PLAYLIST_EXTENSIONS:
        raise UnsupportedMedia(f"{os.fspath(path)!r}: playlists ({suffix}) are not decoded")
    try:
        return _EXTENSIONS[suffix]
    except KeyError:
        raise UnsupportedMedia(
            f"{os.fspath(path)!r}: no content type for extension {suffix or '(none)'!r}; "
            "pass content_type explicitly"
        ) from None


def media_kind(content_type: str) -> tuple[MediaKind, str]:
    """How a content type is decoded, and the FFmpeg demuxer or decoder it is pinned to.

    Raises :class:`UnsupportedMedia` for playlists and every type not in the tables."""
    ct = normalize_content_type(content_type)
    if ct in CONTAINER_TYPES:
        return "container", CONTAINER_TYPES[ct]
    if ct in RAW_TYPES:
        return "raw", RAW_TYPES[ct]
    if ct in IMAGE_TYPES:
        return "image", IMAGE_TYPES[ct]
    if ct in _PLAYLIST_TYPES or ct.endswith("mpegurl"):
        raise UnsupportedMedia(f"content type {ct!r} is a playlist: playlists are not decoded")
    raise UnsupportedMedia(f"content type {content_type!r} is not a supported media type")
