"""Signal types and their textual forms: PDQ, vPDQ and MD5 hashes as ThreatExchange writes them.

A *signal* is one hash of one piece of content. clipguard knows three signal types, named as
ThreatExchange and Hasher-Matcher-Actioner (HMA) name them where they can:

============  ==========================================  =====================================
ours          text form                                   ThreatExchange / HMA name
============  ==========================================  =====================================
``pdq``       64 lower-case hex digits (256 bits)         ``pdq`` (indicator type ``HASH_PDQ``)
``vpdq``      frames ``hex,quality,timestamp`` joined     ``vpdq`` (a JSON list of those frame
              by ``;``                                    strings)
``md5``       32 lower-case hex digits (a whole file)     ``video_md5`` (``HASH_VIDEO_MD5``,
                                                          ``HASH_MD5``)
============  ==========================================  =====================================

PDQ bits are in ThreatExchange's order: the first hex digit holds bits 255..252, so
``bytes.fromhex(text)`` is the packed form used everywhere in :mod:`pipeline.hashes`, and the
Hamming distance of two hashes is the popcount of their XOR.

Parsing is strict: wrong length, non-hex digits, upper-case input (accepted, then lowered),
out-of-range quality or negative timestamps raise :class:`~pipeline.errors.HashError`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal, get_args

from pipeline.errors import HashError

__all__ = [
    "BANK_NAME_PATTERN",
    "COMPARED_MATCH_PERCENT",
    "DEFAULT_MAX_DISTANCE",
    "DEFAULT_MIN_QUALITY",
    "MAX_DISTANCE",
    "MAX_VPDQ_FRAMES",
    "PDQ_BITS",
    "PDQ_BYTES",
    "QUERY_MATCH_PERCENT",
    "SIGNAL_TYPES",
    "SignalType",
    "VpdqFrame",
    "format_vpdq",
    "hamming",
    "parse_md5",
    "parse_pdq",
    "parse_signal",
    "parse_vpdq",
    "parse_vpdq_frame",
]

SignalType = Literal["pdq", "vpdq", "md5"]
SIGNAL_TYPES: tuple[SignalType, ...] = get_args(SignalType)

PDQ_BITS = 256
PDQ_BYTES = PDQ_BITS // 8
MAX_VPDQ_FRAMES = 200_000  # about 55 hours at one hash a second: a bound, not a target

# Matching settings, here (no NumPy) so that the policy schema can name them without loading
# the index
DEFAULT_MAX_DISTANCE = 31  # ThreatExchange's PDQ match threshold
DEFAULT_MIN_QUALITY = 50  # ThreatExchange's quality filter
MAX_DISTANCE = 127  # the largest search radius (multi-index hashing serves up to 47)
QUERY_MATCH_PERCENT = 80.0  # ThreatExchange VPDQ_QUERY_MATCH_THRESHOLD_PERCENT
COMPARED_MATCH_PERCENT = 0.0  # ThreatExchange VPDQ_INDEX_MATCH_THRESHOLD_PERCENT
#: A bank's name: 1-100 characters of A-Z a-z 0-9 _ . - (not starting with _ . -)
BANK_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"

_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX32 = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True, slots=True)
class VpdqFrame:
    """One hashed frame of a video: its PDQ hash (32 bytes), PDQ quality and time (seconds)."""

    pdq: bytes
    quality: int
    timestamp: float

    def __str__(self) -> str:
        # ThreatExchange's compact frame form (VpdqCompactFeature): hex,quality,seconds (3 dp)
        return f"{self.pdq.hex()},{self.quality},{self.timestamp:.3f}"


def parse_pdq(text: str) -> bytes:
    """A PDQ hash from 64 hex digits to its 32 packed bytes."""
    t = text.strip().lower()
    if not _HEX64.fullmatch(t):
        raise HashError(f"a PDQ hash is 64 hex digits, not {_preview(text)}")
    return bytes.fromhex(t)


def parse_md5(text: str) -> bytes:
    """An MD5 digest from 32 hex digits to its 16 bytes."""
    t = text.strip().lower()
    if not _HEX32.fullmatch(t):
        raise HashError(f"an MD5 hash is 32 hex digits, not {_preview(text)}")
    return bytes.fromhex(t)


def parse_vpdq_frame(text: str) -> VpdqFrame:
    """One frame in ThreatExchange's compact form ``hex,quality,timestamp``."""
    parts = text.strip().split(",")
    if len(parts) != 3:
        raise HashError(f"a vPDQ frame is 'hex,quality,timestamp', not {_preview(text)}")
    pdq = parse_pdq(parts[0])
    try:
        quality = int(parts[1])
        timestamp = float(parts[2])
    except ValueError as e:
        raise HashError(f"bad vPDQ frame quality or timestamp in {_preview(text)}") from e
    if not 0 <= quality <= 100:
        raise HashError(f"vPDQ frame quality {quality} is outside 0..100")
    if not (math.isfinite(timestamp) and timestamp >= 0.0):
        raise HashError(f"vPDQ frame timestamp {parts[2]!r} is not a finite number >= 0")
    return VpdqFrame(pdq, quality, timestamp)


def parse_vpdq(text: str) -> tuple[VpdqFrame, ...]:
    """A video's frames from our form: compact frames joined by ``;`` (at least one)."""
    items = [p for p in text.strip().split(";") if p.strip()]
    if not items:
        raise HashError("a vPDQ hash needs at least one frame")
    if len(items) > MAX_VPDQ_FRAMES:
        raise HashError(f"a vPDQ hash has {len(items)} frames, over the {MAX_VPDQ_FRAMES} limit")
    return tuple(parse_vpdq_frame(p) for p in items)


def format_vpdq(frames: tuple[VpdqFrame, ...] | list[VpdqFrame]) -> str:
    """The inverse of :func:`parse_vpdq`."""
    return ";".join(str(f) for f in frames)


def parse_signal(signal_type: str, text: str) -> bytes | tuple[VpdqFrame, ...]:
    """Parse ``text`` as a signal of ``signal_type`` (one of :data:`SIGNAL_TYPES`)."""
    if signal_type == "pdq":
        return parse_pdq(text)
    if signal_type == "md5":
        return parse_md5(text)
    if signal_type == "vpdq":
        return parse_vpdq(text)
    raise HashError(f"unknown signal type {signal_type!r}; expected one of {list(SIGNAL_TYPES)}")


def hamming(a: bytes, b: bytes) -> int:
    """Hamming distance of two packed hashes of the same length."""
    if len(a) != len(b):
        raise HashError(f"cannot compare hashes of {len(a)} and {len(b)} bytes")
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).bit_count()


def _preview(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")
