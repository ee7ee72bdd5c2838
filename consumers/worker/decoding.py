"""The worker's decode step: segments to the sandboxed decode pool, frames back with their
place on the stream's timeline.

Container segments (MPEG-TS, MP4, WebM...) and still images decode independently, each in any
free decode process. A raw H.264/HEVC stream keeps its decoder between chunks: its first chunk
opens it in one decode process, every chunk is fed there in order, and its last closes it (a
failed chunk closes it too, so the next one starts afresh from a keyframe). Raw chunks carry
no timestamps: frame times count from the ``start-ts`` of the chunk that opened the stream.

Each segment is decoded with the frame hashes the policies in force need at its submission
(``hash_mode``: none, PDQ or its dihedral variants, for hash policies), taken in the decode
process from the decoded picture (:mod:`pipeline.decode.hashing`); a raw stream keeps the mode
it was opened with.

Results come back on the pool's thread: :class:`SegmentDecoder` only fills the segment's frames
and frame references there, and hands it on with ``decoded(segment)``; a failure is posted to
the main thread as a :class:`~consumers.worker.events.DecodeFailed` event.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

from consumers.worker.events import DecodeFailed, Event
from consumers.worker.segments import Segment
from pipeline.decode import RAW_TYPES, DecodeOptions, DecodePool, DecodeResult, Frame
from pipeline.decode.options import HashMode
from pipeline.errors import LimitExceeded
from pipeline.policies.judge import FrameRef

__all__ = ["SegmentDecoder"]


class SegmentDecoder:
    """Decodes segments in ``pool`` with ``options``; see the module docstring."""

    def __init__(
        self,
        pool: DecodePool,
        options: DecodeOptions,
        *,
        decoded: Callable[[Segment], object],
        post: Callable[[Event], object],
        hash_mode: Callable[[], HashMode] = lambda: "none",
        max_raw_streams: int = 64,
    ) -> None:
        self.pool = pool
        self.max_raw_streams = max_raw_streams  # raw decoders open at once in this worker
        self.options = options
        self._hash_mode = hash_mode
        self._options: dict[HashMode, DecodeOptions] = {options.hashes: options}
        self._decoded = decoded
        self._post = post
        self._raw: dict[str, float] = {}  # open raw streams -> stream time of their frame 0

    def is_raw_open(self, stream_id: str) -> bool:
        return stream_id in self._raw

    def decode(self, seg: Segment) -> None:
        """Start decoding ``seg`` (again, after a crash); the result arrives on the pool's
        thread."""
        info = seg.info
        assert info is not None
        seg.attempts += 1
        seg.decode_started = time.monotonic()
        options = self._options_now()
        if not info.raw:
            future = self.pool.submit_bytes(seg.value, info.content_type, options)
            start = info.start_ts or 0.0
            future.add_done_callback(lambda f: self._container_done(seg, f, start))
            return
        stream_id = seg.stream_id
        if stream_id not in self._raw and len(self._raw) >= self.max_raw_streams:
            self._post(
                DecodeFailed(
                    seg,
                    LimitExceeded(
                        f"{self.max_raw_streams} raw streams are open in this worker "
                        "(decode.max_raw_streams): a new one waits until one ends or goes idle"
                    ),
                )
            )
            return
        if stream_id not in self._raw:
            codec = RAW_TYPES[info.content_type]
            opened = self.pool.open_stream(stream_id, codec, options, fps=info.fps)
            opened.add_done_callback(lambda f: f.exception())  # a failure shows in feed()
            self._raw[stream_id] = info.start_ts if info.start_ts is not None else 0.0
        base = self._raw[stream_id]
        futures: list[Future[Any]] = [self.pool.feed(stream_id, seg.value)]
        if info.end:
            futures.append(self.pool.close_stream(stream_id))
            del self._raw[stream_id]
        _when_all(futures, lambda fs: self._raw_done(seg, fs, base))

    def _options_now(self) -> DecodeOptions:
        """The options with the hashes the policies in force need."""
        mode = self._hash_mode()
        options = self._options.get(mode)
        if options is None:
            options = self._options[mode] = self.options.with_(hashes=mode)
        return options

    def close_raw(self, stream_id: str) -> None:
        """Close a raw stream's decoder (the next chunk starts afresh); nothing if not open."""
        if self._raw.pop(stream_id, None) is not None:
            self.pool.close_stream(stream_id)

    # The callbacks below run on the decode pool's thread.

    def _container_done(self, seg: Segment, future: Future[DecodeResult], start: float) -> None:
        error = future.exception()
        if error is not None:
            self._post(DecodeFailed(seg, error))
            return
        self._ready(seg, list(future.result().frames), start)

    def _raw_done(self, seg: Segment, futures: Sequence[Future[Any]], base: float) -> None:
        frames: list[Frame] = []
        for future in futures:
            error = future.exception()
            if error is not None:
                self._post(DecodeFailed(seg, error))
                return
            frames += future.result()
        self._ready(seg, frames, base)

    def _ready(self, seg: Segment, frames: list[Frame], base: float) -> None:
        seg.frames = frames
        seg.refs = [
            FrameRef(seq=seg.seq, frame_index=f.index, ts=round(base + f.t, 6), tile=f.tile)
            for f in frames
        ]
        self._decoded(seg)


def _when_all(
    futures: Sequence[Future[Any]], then: Callable[[Sequence[Future[Any]]], None]
) -> None:
    """Call ``then(futures)`` once every future is done (on the thread finishing the last)."""
    left = [len(futures)]
    lock = threading.Lock()

    def one_done(_: Future[Any]) -> None:
        with lock:
            left[0] -= 1
            last = left[0] == 0
        if last:
            then(futures)

    for future in futures:
        future.add_done_callback(one_done)
