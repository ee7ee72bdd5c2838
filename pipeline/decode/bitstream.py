"""H.264 and HEVC headers read from Annex-B bytes: NAL units, SPS, PPS and slice headers.

A raw byte stream is checked before FFmpeg's decoder sees it: the picture size in each sequence
parameter set against ``Limits.max_pixels`` (so no decoder allocates an enormous picture), and,
in keyframes mode, which pictures after a keyframe in decode order are shown before it (open
GOPs), to number the keyframes in presentation order. Only those few fields are read, from the
first bytes of each NAL unit.

Hand-written: PyAV tells the picture size only once the decoder has run, and no maintained
Python library reads these fields from raw bytes (FFmpeg's ``trace_headers`` bitstream filter
only logs them). The field order follows ITU-T H.264
7.3.2.1.1 (SPS), 7.3.2.2 (PPS) and 7.3.3 (slice header), and H.265 7.3.2.2 (SPS). Every read
is bounded: a header that ends early or holds an over-long Exp-Golomb code raises
:class:`InvalidMedia`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from pipeline.decode.media import RawCodec
from pipeline.errors import InvalidMedia

__all__ = [
    "H264_PPS",
    "H264_SPS",
    "HEVC_IRAP",
    "HEVC_LEADING",
    "HEVC_SPS",
    "BitReader",
    "H264Sps",
    "h264_pps_ids",
    "h264_slice_order",
    "h264_sps",
    "hevc_sps_size",
    "nal_rbsp",
    "nal_units",
]

HEVC_IRAP: Final = range(16, 24)  # BLA, IDR, CRA (and reserved IRAP types)
HEVC_LEADING: Final = range(6, 10)  # RADL_N, RADL_R, RASL_N, RASL_R
H264_SPS: Final = 7
H264_PPS: Final = 8
HEVC_SPS: Final = 33
# H.264 profiles whose SPS carries chroma format, bit depths and scaling matrices
_H264_HIGH_PROFILES: Final = frozenset(
    {100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135}
)


class BitReader:
    """Exp-Golomb reader over an RBSP (emulation prevention bytes already removed)."""

    def __init__(self, data: bytes) -> None:
        self._value = int.from_bytes(data, "big")
        self._left = len(data) * 8

    def u(self, n: int) -> int:
        """The next ``n`` bits, as an unsigned integer."""
        if n > self._left:
            raise InvalidMedia("parameter set ends early")
        self._left -= n
        return (self._value >> self._left) & ((1 << n) - 1)

    def ue(self) -> int:
        """The next unsigned Exp-Golomb code."""
        zeros = 0
        while self.u(1) == 0:
            zeros += 1
            if zeros > 31:
                raise InvalidMedia("bad Exp-Golomb code in a parameter set")
        return (1 << zeros) - 1 + self.u(zeros)

    def se(self) -> int:
        """The next signed Exp-Golomb code."""
        k = self.ue()
        return (k + 1) // 2 if k % 2 else -(k // 2)


def _rbsp(payload: bytes) -> bytes:
    return payload.replace(b"\x00\x00\x03", b"\x00\x00")


def nal_units(data: bytes, codec: RawCodec) -> Iterator[tuple[int, int]]:
    """(NAL unit type, offset of its header) for the NAL units of an Annex-B access unit, up to
    and including the first slice (parameter sets and SEI come before it)."""
    at = data.find(b"\x00\x00\x01")
    while 0 <= at < len(data) - 3:
        header = data[at + 3]
        nal_type = (header >> 1) & 0x3F if codec == "hevc" else header & 0x1F
        yield nal_type, at + 3
        if (codec == "hevc" and nal_type < 32) or (codec == "h264" and 1 <= nal_type <= 5):
            return
        at = data.find(b"\x00\x00\x01", at + 3)


@dataclass(frozen=True, slots=True)
class H264Sps:
    """What clipguard needs of an H.264 SPS."""

    width: int
    height: int
    log2_max_frame_num: int
    poc_type: int
    log2_max_poc_lsb: int  # 0 unless poc_type is 0
    frame_mbs_only: bool
    separate_colour_plane: bool


def h264_sps(rbsp: bytes) -> tuple[int, H264Sps]:
    """(sps id, what clipguard needs of it) from an H.264 SPS."""
    r = BitReader(rbsp)
    profile = r.u(8)
    r.u(16)  # constraint flags, level
    sps_id = r.ue()
    chroma, separate = 1, False
    if profile in _H264_HIGH_PROFILES:
        chroma = r.ue()
        if chroma == 3:
            separate = bool(r.u(1))
        r.ue()
        r.ue()  # bit depths
        r.u(1)
        if r.u(1):  # scaling matrices
            for i in range(12 if chroma == 3 else 8):
                if r.u(1):
                    last = nxt = 8
                    for _ in range(16 if i < 6 else 64):
                        if nxt:
                            nxt = (last + r.se()) % 256
                        last = nxt or last
    log2_max_frame_num = r.ue() + 4
    poc_type = r.ue()
    log2_max_poc_lsb = 0
    if poc_type == 0:
        log2_max_poc_lsb = r.ue() + 4
    elif poc_type == 1:
        r.u(1)
        r.se()
        r.se()
        for _ in range(min(r.ue(), 256)):
            r.se()
    r.ue()  # max_num_ref_frames
    r.u(1)
    width_mbs = r.ue() + 1
    height_units = r.ue() + 1
    frame_mbs_only = r.u(1)
    width, height = 16 * width_mbs, 16 * height_units * (2 - frame_mbs_only)
    if not frame_mbs_only:
        r.u(1)
    r.u(1)  # direct_8x8_inference
    if r.u(1):  # frame cropping, in chroma sample units
        unit_x = 2 if chroma in (1, 2) else 1
        unit_y = (2 if chroma == 1 else 1) * (2 - frame_mbs_only)
        left, right, top, bottom = r.ue(), r.ue(), r.ue(), r.ue()
        width = max(1, width - unit_x * (left + right))
        height = max(1, height - unit_y * (top + bottom))
    sps = H264Sps(
        width=width,
        height=height,
        log2_max_frame_num=min(log2_max_frame_num, 16),
        poc_type=poc_type,
        log2_max_poc_lsb=min(log2_max_poc_lsb, 16),
        frame_mbs_only=bool(frame_mbs_only),
        separate_colour_plane=separate,
    )
    return sps_id, sps


def h264_pps_ids(rbsp: bytes) -> tuple[int, int]:
    """(pps id, sps id) from an H.264 PPS."""
    r = BitReader(rbsp)
    return r.ue(), r.ue()


def h264_slice_order(
    rbsp: bytes, idr: bool, pps: dict[int, int], sps: dict[int, H264Sps]
) -> tuple[bool, int, int] | None:
    """(intra, pic_order_cnt_lsb, its modulus) from a slice header; None without POC type 0."""
    r = BitReader(rbsp)
    r.ue()  # first_mb_in_slice
    slice_type = r.ue() % 5
    params = sps.get(pps.get(r.ue(), -1))
    if params is None or params.poc_type != 0:
        return None
    if params.separate_colour_plane:
        r.u(2)
    r.u(params.log2_max_frame_num)
    if not params.frame_mbs_only and r.u(1):  # field_pic_flag
        r.u(1)
    if idr:
        r.ue()
    return slice_type in (2, 4), r.u(params.log2_max_poc_lsb), 1 << params.log2_max_poc_lsb


def hevc_sps_size(rbsp: bytes) -> tuple[int, int]:
    """(width, height) in luma samples from an HEVC SPS (before the conformance window)."""
    r = BitReader(rbsp)
    r.u(4)  # vps id
    sub_layers = r.u(3)
    r.u(1)
    r.u(96)  # general profile, tier, level
    present = [(r.u(1), r.u(1)) for _ in range(sub_layers)]
    if sub_layers:
        r.u(2 * (8 - sub_layers))
    for profile_present, level_present in present:
        r.u(88 * profile_present + 8 * level_present)
    r.ue()  # sps id
    if r.ue() == 3:  # chroma_format_idc
        r.u(1)
    return r.ue(), r.ue()


def nal_rbsp(unit: bytes, header_at: int, header_size: int, limit: int = 1 << 16) -> bytes:
    """The RBSP of the NAL unit at ``header_at``, at most ``limit`` bytes of it."""
    end = unit.find(b"\x00\x00\x01", header_at, header_at + limit)
    stop = end if end >= 0 else min(len(unit), header_at + limit)
    return _rbsp(unit[header_at + header_size : stop])
