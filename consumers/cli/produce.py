"""``clipguard produce``: send a video file to the segments topic, as a live ingest edge
would."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from consumers.argtypes import positive_float, positive_int
from consumers.cli.common import (
    DEFAULT_BOOTSTRAP,
    add_bootstrap_servers,
    add_command,
    plural,
    quiet_kafka,
)

if TYPE_CHECKING:
    from consumers.produce import RawChunk, Segment

__all__ = ["add_parser"]

_EPILOG = """\
examples:
  clipguard produce clip.mp4 --stream-id cam1
  clipguard produce clip.mp4 --stream-id cam1 --realtime --segment-seconds 4
  clipguard produce clip.ts --stream-id cam2 --bootstrap-servers kafka:9092

Each record: key = stream id, value = one MPEG-TS segment starting at a keyframe, headers
content-type (video/mp2t), stream-id, seq (0, 1, 2, ...) and start-ts (seconds).
"""


def add_parser(subparsers: Any) -> None:
    """Add ``clipguard produce``."""
    produce = add_command(
        subparsers,
        "produce",
        help="send a video file to clipguard.segments as MPEG-TS segments",
        description="Cut a video file into MPEG-TS segments at keyframes (packets are copied, "
        "not re-encoded; only the video stream is kept) and send them to a topic as a live "
        "ingest edge would, each acknowledged by the broker.",
        epilog=_EPILOG,
    )
    add = produce.add_argument
    add("file", metavar="FILE", help="a video file (mp4, mkv, ts, webm, ...)")
    add("--stream-id", required=True, metavar="ID", help="the record key")
    add_bootstrap_servers(
        produce,
        default=DEFAULT_BOOTSTRAP,
        metavar="HOST:PORT",
        help="Kafka bootstrap servers (default: %(default)s)",
        old_spellings=("--bootstrap",),
    )
    add("--topic", default="clipguard.segments", help="topic to send to (default: %(default)s)")
    add(
        "--segment-seconds",
        type=positive_float,
        default=2.0,
        metavar="S",
        help="cut at the first keyframe this long after a segment's start (default: %(default)s)",
    )
    add(
        "--realtime",
        action="store_true",
        help="pace the segments at their duration, as a live camera would",
    )
    add(
        "--raw",
        action="store_true",
        help="send the raw H.264/HEVC byte stream in chunks cut at any byte (content type "
        "video/h264 or video/h265) instead of MPEG-TS segments",
    )
    add(
        "--chunk-bytes",
        type=positive_int,
        default=64 * 1024,
        metavar="N",
        help="chunk size for --raw, bytes (default: %(default)s)",
    )
    add(
        "--no-end",
        action="store_true",
        help="do not mark the last record with stream-end: 1 (the stream goes on later; its "
        "open incidents stay open)",
    )
    produce.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from consumers.produce import produce_file

    quiet_kafka(args.log_level)

    def sent(segment: Segment | RawChunk, partition: int, offset: int) -> None:
        print(f"{_describe(segment)}  -> {args.topic}[{partition}]@{offset}", flush=True)

    count = produce_file(
        args.bootstrap_servers,
        args.file,
        stream_id=args.stream_id,
        topic=args.topic,
        segment_seconds=args.segment_seconds,
        realtime=args.realtime,
        raw=args.raw,
        chunk_bytes=args.chunk_bytes,
        end_stream=not args.no_end,
        on_sent=sent,
    )
    print(f"produced {plural(count, 'segment')} of {args.file} to {args.topic}")
    return 0


def _describe(segment: Segment | RawChunk) -> str:
    """A sent record's line, before where it went."""
    from consumers.produce import RawChunk

    if isinstance(segment, RawChunk):
        what = f"chunk {segment.seq:4d}  up to {segment.at:8.3f} s"
    else:
        what = (
            f"seq {segment.seq:4d}  start {segment.start_ts:8.3f} s  "
            f"{segment.duration:6.3f} s  {segment.frames:4d} frames"
        )
    return f"{what}  {len(segment.data) / 1e3:8.1f} kB"
