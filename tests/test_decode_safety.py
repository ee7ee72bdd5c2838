"""Hostile and broken inputs, limits, and the sandboxed decode pool.

Every bad input must end in a typed error (or, for a damaged file that still holds frames, in
the frames that could be decoded), never in a hang or a dead caller, and the pool must go on
serving good inputs afterwards. Crashes and hangs are real: a child process is sent SIGSEGV or
SIGSTOP. The fuzz test mutates real segments with Hypothesis; ``bench/fuzz_decode.py`` runs the
same mutations for longer.
"""

from __future__ import annotations

import http.server
import os
import signal
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import ClassVar

import media
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.decode import (
    DecodeOptions,
    DecodePool,
    DecodeResult,
    Limits,
    RawStreamDecoder,
    Sampling,
    decode_bytes,
    decode_uri,
)
from pipeline.errors import (
    ClipguardError,
    ConfigError,
    DecodeCrash,
    DecodeError,
    DecodeTimeout,
    InvalidMedia,
    LimitExceeded,
    MediaUnavailable,
    UnsupportedMedia,
)

POOL_LIMITS = Limits(timeout=30.0, max_memory=2 * 1024**3)
TINY = DecodeOptions(32)  # the model input side most tests decode to


@pytest.fixture(scope="module")
def pool() -> Iterator[DecodePool]:
    # network: this module also decodes URLs (a segment pool without sockets: test_decode_sandbox)
    with DecodePool(2, limits=POOL_LIMITS, threads=1, network=True) as p:
        yield p


def _good(pool: DecodePool) -> None:
    """The pool still decodes a good input correctly."""
    result = pool.decode_bytes(media.encode(12), "video/mp2t", DecodeOptions(size=64))
    assert [media.read_number(f.image) for f in result.frames] == list(range(12))


def _samples() -> dict[str, tuple[bytes, str]]:
    return {
        "mpegts": (media.encode(24, bframes=2), "video/mp2t"),
        "mp4": (media.encode(24, fmt="mp4", bframes=2), "video/mp4"),
        "fmp4": (
            media.encode(
                24,
                fmt="mp4",
                muxer_options=(("movflags", "frag_keyframe+empty_moov+default_base_moof"),),
            ),
            "video/mp4",
        ),
        "webm": (media.encode(24, fmt="webm", codec="libvpx-vp9"), "video/webm"),
        "mkv-hevc": (media.encode(24, fmt="matroska", codec="libx265"), "video/x-matroska"),
        "h264": (media.encode(24, fmt="h264", bframes=2), "video/h264"),
        "hevc": (media.encode(24, fmt="hevc", codec="libx265"), "video/h265"),
        "png": (media.still("png", media.marked_image(96, 64)), "image/png"),
        "jpeg": (media.still("jpeg", media.marked_image(96, 64)), "image/jpeg"),
        "webp": (media.still("webp", media.marked_image(96, 64)), "image/webp"),
    }


# ----------------------------------------------------------------------------- broken inputs


@pytest.mark.parametrize("name", list(_samples()))
def test_truncated_inputs_at_many_cut_points(pool: DecodePool, name: str) -> None:
    data, content_type = _samples()[name]
    full = decode_bytes(data, content_type, TINY)
    cuts = media.cuts(data, 14)
    futures = [pool.submit_bytes(data[:cut], content_type, TINY) for cut in cuts]
    partial = 0
    for cut, future in zip(cuts, futures, strict=True):
        try:
            result = future.result(timeout=60)
        except InvalidMedia:
            continue
        # what a cut input yields is a prefix of the full input's frames, never more
        assert isinstance(result, DecodeResult), cut
        assert 0 < result.frames_decoded <= full.frames_decoded, cut
        assert all(f.index < full.frames_decoded for f in result.frames)
        partial += 1
    if name in ("mpegts", "h264", "hevc", "fmp4", "webm", "mkv-hevc"):
        assert partial > 0  # streaming formats keep the frames before the cut
    _good(pool)


@pytest.mark.parametrize(
    "content_type",
    [
        "video/mp2t",
        "video/mp4",
        "video/webm",
        "video/x-matroska",
        "video/h264",
        "video/h265",
        "image/jpeg",
        "image/png",
        "image/webp",
    ],
)
def test_random_bytes(pool: DecodePool, content_type: str) -> None:
    rng = np.random.default_rng(abs(hash(content_type)) % 2**32)
    futures = [
        pool.submit_bytes(rng.integers(0, 256, n, dtype=np.uint8).tobytes(), content_type, TINY)
        for n in (1, 100, 5000, 300_000)
    ]
    for future in futures:
        with pytest.raises(InvalidMedia):
            future.result(timeout=60)
    _good(pool)


@pytest.mark.parametrize(
    "content_type",
    ["video/mp2t", "video/mp4", "video/webm", "video/h264", "video/h265", "image/png"],
)
def test_zero_length_input(pool: DecodePool, tmp_path: Path, content_type: str) -> None:
    with pytest.raises(InvalidMedia, match="empty"):
        decode_bytes(b"", content_type, TINY)
    with pytest.raises(InvalidMedia, match="empty"):
        pool.decode_bytes(b"", content_type, TINY)
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    with pytest.raises(InvalidMedia, match="empty"):
        decode_uri(empty, TINY, content_type=content_type)


@pytest.mark.parametrize(
    ("fmt", "content_type"),
    [("mp4", "video/mp4"), ("mpegts", "video/mp2t"), ("webm", "video/webm")],
)
def test_audio_only_files(pool: DecodePool, fmt: str, content_type: str) -> None:
    with pytest.raises(UnsupportedMedia, match="no video stream"):
        pool.decode_bytes(media.audio_only(fmt), content_type, TINY)


@pytest.mark.parametrize(
    ("name", "declared"),
    [
        ("mp4", "video/mp2t"),
        ("mpegts", "video/mp4"),
        ("webm", "video/mp4"),
        ("mp4", "video/webm"),
        ("png", "image/jpeg"),
        ("jpeg", "image/png"),
        ("png", "video/mp2t"),
        ("jpeg", "image/webp"),
        ("h264", "video/mp4"),
    ],
)
def test_wrong_content_type(pool: DecodePool, name: str, declared: str) -> None:
    data, _ = _samples()[name]
    with pytest.raises(InvalidMedia):
        pool.decode_bytes(data, declared, TINY)


def test_raw_stream_of_the_other_codec_yields_nothing_usable() -> None:
    data, _ = _samples()["h264"]
    with pytest.raises(InvalidMedia):
        decode_bytes(data, "video/h265", TINY)


# ----------------------------------------------------------------------------- enormous headers


def _png_claiming(width: int, height: int) -> bytes:
    png = media.still("png", media.marked_image(16, 16))
    ihdr = png[12:29]  # type, width, height, depth, colour, compression, filter, interlace
    patched = b"IHDR" + struct.pack(">II", width, height) + ihdr[12:]
    return png[:12] + patched + struct.pack(">I", zlib.crc32(patched)) + png[33:]


def _jpeg_claiming(width: int, height: int) -> bytes:
    jpeg = bytearray(media.still("jpeg", media.marked_image(16, 16)))
    at = jpeg.index(b"\xff\xc0")
    jpeg[at + 5 : at + 9] = struct.pack(">HH", height, width)
    return bytes(jpeg)


def _webp_claiming(width: int, height: int) -> bytes:
    body = b"VP8X" + struct.pack("<I", 10) + b"\x00" * 4
    body += (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    return b"RIFF" + struct.pack("<I", len(body) + 4) + b"WEBP" + body


def test_headers_promising_an_enormous_resolution(pool: DecodePool) -> None:
    raw = media.h264_promising(1000, 1000)  # an SPS saying 16000 x 16000
    cases = [
        (raw, "video/h264"),
        (media.remux(raw), "video/mp2t"),
        (media.remux(raw, fmt="matroska"), "video/x-matroska"),
        (_png_claiming(100_000, 100_000), "image/png"),
        (_jpeg_claiming(65_000, 65_000), "image/jpeg"),
        (_webp_claiming(16_383, 16_383), "image/webp"),
    ]
    for data, content_type in cases:
        with pytest.raises(LimitExceeded, match=r"16000x16000|pixels"):
            decode_bytes(data, content_type, TINY)  # refused before anything is allocated
        with pytest.raises(LimitExceeded):
            pool.decode_bytes(data, content_type, TINY)
    stream = RawStreamDecoder("h264", TINY)
    with pytest.raises(LimitExceeded, match="SPS says 16000x16000"):
        for at in range(0, len(raw), 7):
            stream.feed(raw[at : at + 7])
    _good(pool)


def test_a_stream_switching_to_an_enormous_resolution(pool: DecodePool) -> None:
    raw = media.encode(10, fmt="h264") + media.h264_promising(1000, 1000)
    for data, content_type in ((media.remux(raw), "video/mp2t"), (raw, "video/h264")):
        with pytest.raises(LimitExceeded, match="16000x16000"):
            decode_bytes(data, content_type, TINY)
        with pytest.raises(LimitExceeded, match="16000x16000"):
            pool.decode_bytes(data, content_type, TINY)


def test_max_pixels_is_checked_from_the_header() -> None:
    small = Limits(max_pixels=320 * 240 - 1)
    for data, content_type in (
        (media.encode(5), "video/mp2t"),
        (media.encode(5, fmt="mp4"), "video/mp4"),
        (media.encode(5, fmt="h264"), "video/h264"),
        (media.still("png", media.marked_image(320, 240)), "image/png"),
    ):
        with pytest.raises(LimitExceeded, match="320x240"):
            decode_bytes(data, content_type, TINY.with_(limits=small))


# ----------------------------------------------------------------------------- playlists, schemes


class _Recorder(http.server.BaseHTTPRequestHandler):
    requests: ClassVar[list[str]] = []
    files: ClassVar[dict[str, bytes]] = {}
    stall_after_headers = 3.0

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.requests.append(self.path)
        if self.path == "/stall.ts":
            self.send_response(200)
            self.send_header("Content-Length", "1000000")
            self.end_headers()
            self.wfile.write(b"\x47" + b"\x00" * 187)
            self.wfile.flush()
            time.sleep(self.stall_after_headers)
            return
        if self.path == "/to-file.ts":
            self.send_response(302)
            self.send_header("Location", "file:///etc/passwd")
            self.end_headers()
            return
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    _Recorder.files = {"/secret.ts": media.encode(5), "/list.m3u8": b""}
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    _Recorder.files["/list.m3u8"] = media.hls_playlist(base + "/secret.ts")
    yield base
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def test_hls_playlists_are_never_followed(pool: DecodePool, server: str, tmp_path: Path) -> None:
    segment = tmp_path / "secret.ts"
    segment.write_bytes(media.encode(5))
    local = media.hls_playlist(str(segment))
    remote = media.hls_playlist(server + "/secret.ts")
    _Recorder.requests.clear()
    # refused by type: nothing is read
    for path_name in ("local.m3u8", "LOCAL.M3U8"):
        playlist = tmp_path / path_name
        playlist.write_bytes(local)
        with pytest.raises(UnsupportedMedia, match="playlist"):
            pool.decode_uri(playlist, TINY)
    for content_type in ("application/vnd.apple.mpegurl", "application/x-mpegURL", "audio/mpegurl"):
        with pytest.raises(UnsupportedMedia, match="playlist"):
            pool.decode_bytes(local, content_type, TINY)
    with pytest.raises(UnsupportedMedia, match="playlist"):
        pool.decode_uri(server + "/list.m3u8", TINY)
    # disguised as a segment: the pinned demuxer sees text, never a playlist
    for declared in ("video/mp2t", "video/mp4", "video/webm"):
        for body in (local, remote):
            with pytest.raises(InvalidMedia):
                pool.decode_bytes(body, declared, TINY)
    disguised = tmp_path / "segment.ts"
    disguised.write_bytes(remote)
    with pytest.raises(InvalidMedia):
        pool.decode_uri(disguised, TINY)
    with pytest.raises(InvalidMedia):
        pool.decode_uri(server + "/list.m3u8", TINY, content_type="video/mp2t")
    assert "/secret.ts" not in _Recorder.requests  # the segment behind the playlist: never read
    concat = tmp_path / "concat.mp4"
    concat.write_bytes(f"ffconcat version 1.0\nfile '{segment}'\n".encode())
    with pytest.raises(InvalidMedia):
        pool.decode_uri(concat, TINY)


@pytest.mark.parametrize(
    "uri",
    [
        "ftp://127.0.0.1/clip.ts",
        "concat:/etc/passwd|/etc/hosts",
        "data:video/mp2t;base64,AAAA",
        "pipe:0",
        "rtmp://127.0.0.1/live",
        "udp://127.0.0.1:1234",
        "file://otherhost/etc/passwd",
        "crypto:file:///etc/passwd",
    ],
)
def test_other_schemes_are_refused(uri: str) -> None:
    with pytest.raises(UnsupportedMedia):
        decode_uri(uri, TINY, content_type="video/mp2t")


def test_ffmpeg_never_parses_a_local_path(tmp_path: Path) -> None:
    # FFmpeg would read part of /etc/passwd for this "URL"; to clipguard it is a file name
    with pytest.raises(MediaUnavailable, match="no such file"):
        decode_uri(
            "subfile,,start,0,end,100,,:/etc/passwd",
            TINY,
            content_type="video/mp2t",
        )
    odd = tmp_path / "concat:a|b.ts"
    odd.write_bytes(media.encode(5))
    assert len(decode_uri(str(odd), TINY).frames) == 5


def test_special_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedMedia, match="not a regular file"):
        decode_uri("/dev/zero", TINY, content_type="video/mp2t")
    fifo = tmp_path / "pipe.ts"
    os.mkfifo(fifo)
    writer = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)  # so that opening it to read cannot block
    try:
        with pytest.raises(UnsupportedMedia, match="not a regular file"):
            decode_uri(fifo, TINY)
    finally:
        os.close(writer)
    with pytest.raises(MediaUnavailable):
        decode_uri(tmp_path, TINY, content_type="video/mp2t")


def test_http_stall_and_redirect_to_a_file(server: str) -> None:
    start = time.monotonic()
    with pytest.raises(DecodeTimeout):
        decode_uri(server + "/stall.ts", TINY.with_(limits=Limits(network_timeout=0.5)))
    assert time.monotonic() - start < _Recorder.stall_after_headers
    with pytest.raises(DecodeError) as caught:  # the file protocol is not on the whitelist
        decode_uri(server + "/to-file.ts", TINY)
    assert isinstance(caught.value, InvalidMedia | MediaUnavailable | UnsupportedMedia)


# ----------------------------------------------------------------------------- limits


def test_frame_and_duration_limits() -> None:
    ts, mp4 = media.encode(30), media.encode(30, fmt="mp4")
    with pytest.raises(LimitExceeded, match="header says 30 frames"):  # MP4 has a frame count
        decode_bytes(mp4, "video/mp4", TINY.with_(limits=Limits(max_frames=10)))
    with pytest.raises(LimitExceeded, match="more than 10 frames"):  # MPEG-TS: counted
        decode_bytes(ts, "video/mp2t", TINY.with_(limits=Limits(max_frames=10)))
    with pytest.raises(LimitExceeded, match=r"header says 1\.2 s"):
        decode_bytes(mp4, "video/mp4", TINY.with_(limits=Limits(max_duration=0.5)))
    with pytest.raises(LimitExceeded, match="duration limit"):
        decode_bytes(ts, "video/mp2t", TINY.with_(limits=Limits(max_duration=0.5)))
    with pytest.raises(LimitExceeded, match="bytes"):
        decode_bytes(ts, "video/mp2t", TINY.with_(limits=Limits(max_input_bytes=len(ts) - 1)))


def test_in_process_wall_clock_limit() -> None:
    data = media.encode(200, width=640, height=480)  # about 60 ms to decode here
    start = time.monotonic()
    with pytest.raises(DecodeTimeout):
        decode_bytes(data, "video/mp2t", TINY.with_(limits=Limits(timeout=0.005), threads=1))
    assert time.monotonic() - start < 5


# ----------------------------------------------------------------------------- the pool


def test_pool_results_match_in_process_decoding(pool: DecodePool) -> None:
    data = media.encode(20, fmt="mp4", bframes=2)
    local = decode_bytes(data, "video/mp4", DecodeOptions(size=64, fit="tiles", threads=1))
    remote = pool.decode_bytes(data, "video/mp4", DecodeOptions(size=64, fit="tiles"))
    assert len(remote.frames) == len(local.frames) == 40  # 4:3: two tiles a frame
    for a, b in zip(local.frames, remote.frames, strict=True):
        assert np.array_equal(a.image, b.image)
        assert (a.pts, a.t, a.index, a.keyframe, a.reason, a.tile) == (
            b.pts,
            b.t,
            b.index,
            b.keyframe,
            b.reason,
            b.tile,
        )
        assert b.image.flags.writeable and b.image.flags.c_contiguous
    assert (remote.width, remote.height, remote.codec, remote.duration) == (
        local.width,
        local.height,
        local.codec,
        local.duration,
    )


def test_pool_serves_many_inputs_in_flight_from_many_threads(pool: DecodePool) -> None:
    inputs = [(media.encode(12 + i), "video/mp2t", 12 + i) for i in range(4)]

    def run(i: int) -> int:
        data, content_type, _ = inputs[i % 4]
        futures = [pool.submit_bytes(data, content_type, TINY) for _ in range(3)]
        return sum(len(f.result().frames) for f in futures)

    with ThreadPoolExecutor(4) as threads:
        totals = list(threads.map(run, range(8)))
    assert totals == [3 * inputs[i % 4][2] for i in range(8)]


def test_pool_raw_streams_are_pinned_and_ordered(pool: DecodePool) -> None:
    raws = {
        "a": media.encode(30, fmt="h264", bframes=2),
        "b": media.encode(30, fmt="hevc", codec="libx265"),
    }
    pool.open_stream("a", "h264", TINY)
    pool.open_stream("b", "hevc", TINY)
    assert pool.stream_pid("a") != pool.stream_pid("b")  # spread over the children
    with pytest.raises(ConfigError):
        pool.open_stream("a", "h264", TINY)
    futures: dict[str, list[Future]] = {"a": [], "b": []}
    for at in range(0, 8000, 300):  # interleaved, all in flight at once
        for sid, raw in raws.items():
            futures[sid].append(pool.feed(sid, raw[at : at + 300]))
    for sid in raws:
        futures[sid].append(pool.close_stream(sid))
        frames = [frame for f in futures[sid] for frame in f.result(timeout=60)]
        assert [media.read_number(f.image) for f in frames] == list(range(30))
        assert [f.index for f in frames] == list(range(30))
    with pytest.raises(ConfigError):
        pool.feed("a", b"\x00")


def test_pool_survives_a_crash_mid_decode() -> None:
    with DecodePool(1, limits=POOL_LIMITS) as pool:
        (pid,) = pool.pids()
        os.kill(pid, signal.SIGSTOP)  # the child cannot finish before it is hit
        future = pool.submit_bytes(media.encode(12), "video/mp2t", TINY)
        time.sleep(0.2)
        os.kill(pid, signal.SIGSEGV)
        os.kill(pid, signal.SIGCONT)
        with pytest.raises(DecodeCrash, match="SIGSEGV"):
            future.result(timeout=30)
        assert pool.pids() != [pid]
        _good(pool)


def test_pool_kills_a_hung_decode() -> None:
    with DecodePool(1, limits=POOL_LIMITS) as pool:
        (pid,) = pool.pids()
        os.kill(pid, signal.SIGSTOP)  # a real hang: the process does nothing at all
        start = time.monotonic()
        with pytest.raises(DecodeTimeout, match="killed"):
            pool.decode_bytes(
                media.encode(12), "video/mp2t", TINY.with_(limits=Limits(timeout=0.5))
            )
        assert time.monotonic() - start < 5
        assert pool.pids() != [pid]
        _good(pool)


def test_pool_contains_a_memory_blow_up() -> None:
    # the SPS promises 16000 x 16000 and max_pixels lets it through: the decoder tries to
    # allocate far more than the 700 MiB the decode process may have
    lax = Limits(max_pixels=300_000_000, max_memory=700 * 1024**2, timeout=30.0)
    with DecodePool(1, limits=lax) as pool:
        (pid,) = pool.pids()
        with pytest.raises(LimitExceeded, match="out of memory"):
            pool.decode_bytes(media.h264_promising(1000, 1000), "video/h264", TINY)
        _good(pool)
        assert pool.pids() != [pid]  # replaced, to give the memory back


def test_pool_stream_state_lost_with_its_process() -> None:
    with DecodePool(2, limits=POOL_LIMITS) as pool:
        raw = media.encode(30, fmt="h264")
        pool.open_stream("doomed", "h264", TINY)
        pool.open_stream("other", "h264", TINY)
        assert pool.feed("doomed", raw[:3000]).result(timeout=30) is not None
        pid = pool.stream_pid("doomed")
        assert pid is not None and pid != pool.stream_pid("other")
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)
        with pytest.raises(DecodeCrash, match="reopen"):
            pool.feed("doomed", raw[3000:]).result(timeout=30)
        with pytest.raises(DecodeCrash):
            pool.close_stream("doomed").result(timeout=30)
        pool.open_stream("doomed", "h264", TINY)  # reopened: from the start (a keyframe)
        frames = pool.feed("doomed", raw).result(timeout=30) + pool.close_stream("doomed").result()
        assert len(frames) == 30
        other = pool.feed("other", raw).result(timeout=30) + pool.close_stream("other").result()
        assert len(other) == 30  # the stream on the other process never noticed


def test_pool_recycles_children_and_closes() -> None:
    pool = DecodePool(1, limits=POOL_LIMITS, max_tasks_per_child=2)
    first = pool.pids()
    for _ in range(3):
        _good(pool)
    assert pool.pids() != first
    children = pool.pids()
    pool.close()
    pool.close()  # idempotent
    for pid in children:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    with pytest.raises(ConfigError, match="closed"):
        pool.submit_bytes(media.encode(5), "video/mp2t", TINY)


def test_pool_checks_arguments_in_the_caller(pool: DecodePool) -> None:
    with pytest.raises(ConfigError):
        pool.submit_bytes(b"x", "video/mp2t", DecodeOptions(size=0))
    with pytest.raises(UnsupportedMedia):
        pool.submit_bytes(b"x", "text/html", TINY).result()
    with pytest.raises(LimitExceeded):
        pool.submit_bytes(
            b"x" * 100, "video/mp2t", TINY.with_(limits=Limits(max_input_bytes=10))
        ).result()
    with pytest.raises(ConfigError):
        DecodePool(0)


def test_decode_errors_form_one_tree() -> None:
    for cls in (
        DecodeCrash,
        DecodeTimeout,
        InvalidMedia,
        LimitExceeded,
        UnsupportedMedia,
        MediaUnavailable,
    ):
        assert issubclass(cls, DecodeError)
        assert issubclass(cls, ClipguardError)
        assert issubclass(cls, ValueError)


# ----------------------------------------------------------------------------- fuzzing


def _mutate(data: bytes, ops: list[tuple[int, int, int]]) -> bytes:
    out = bytearray(data)
    for kind, where, value in ops:
        if not out:
            break
        at = where % len(out)
        if kind == 0:  # flip bits in one byte
            out[at] ^= value or 1
        elif kind == 1:  # overwrite a run with one value
            out[at : at + 1 + value % 64] = bytes([value]) * len(out[at : at + 1 + value % 64])
        elif kind == 2:  # truncate
            del out[max(1, at) :]
        elif kind == 3:  # duplicate a run
            out[at:at] = out[at : at + 1 + value % 512]
        else:  # delete a run
            del out[at : at + 1 + value % 256]
    return bytes(out)


FUZZ_BASES = ["mpegts", "mp4", "webm", "h264", "hevc", "png", "jpeg"]


@settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    base=st.sampled_from(FUZZ_BASES),
    ops=st.lists(
        st.tuples(st.integers(0, 4), st.integers(0, 2**31), st.integers(0, 255)),
        min_size=1,
        max_size=8,
    ),
)
def test_fuzz_mutated_segments(
    pool: DecodePool, base: str, ops: list[tuple[int, int, int]]
) -> None:
    data, content_type = _samples()[base]
    mutated = _mutate(data, ops)
    try:
        result = pool.decode_bytes(
            mutated, content_type, TINY.with_(sampling=Sampling(max_frames=50))
        )
    except DecodeError as e:
        assert str(e)  # a typed error with a message; DecodeCrash would be a finding
        assert not isinstance(e, DecodeTimeout), e
        return
    assert result.frames_decoded >= 1
    for frame in result.frames:
        assert frame.image.shape == (32, 32, 3)
