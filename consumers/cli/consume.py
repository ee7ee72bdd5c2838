"""``clipguard consume``: print the records of a topic (flags, scores, dead letters)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from consumers.argtypes import positive_float, positive_int
from consumers.cli.common import DEFAULT_BOOTSTRAP, add_bootstrap_servers, add_command, quiet_kafka
from consumers.kafka_auth import client_security
from pipeline.errors import ClipguardError

__all__ = ["add_parser"]

_EPILOG = """\
examples:
  clipguard consume clipguard.flags                  every flag event so far, one JSON a line
  clipguard consume clipguard.scores --limit 5
  clipguard consume clipguard.dlq --headers          dead letters with their error headers
  clipguard consume clipguard.flags --follow         keep printing new events (Ctrl-C stops)

JSON values are printed as they are; other values (video segments) as their size.
"""


def add_parser(subparsers: Any) -> None:
    """Add ``clipguard consume``."""
    consume = add_command(
        subparsers,
        "consume",
        help="print the records of a topic (flags, scores, dead letters) from the beginning",
        description="Read a topic from its beginning, every partition, without joining a "
        "consumer group (nothing is committed), and print one record a line.",
        epilog=_EPILOG,
    )
    consume.add_argument("topic", metavar="TOPIC")
    add_bootstrap_servers(
        consume,
        default=DEFAULT_BOOTSTRAP,
        metavar="HOST:PORT",
        help="Kafka bootstrap servers (default: %(default)s)",
        old_spellings=("--bootstrap",),
    )
    consume.add_argument("--limit", type=positive_int, metavar="N", help="stop after N records")
    consume.add_argument(
        "--headers", action="store_true", help="print each record's headers and position too"
    )
    consume.add_argument(
        "--follow", action="store_true", help="keep waiting for new records (until Ctrl-C)"
    )
    consume.add_argument(
        "--idle",
        type=positive_float,
        default=2.0,
        metavar="S",
        help="without --follow, stop after S seconds with no new record (default: %(default)s)",
    )
    consume.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import time

    from kafka import KafkaConsumer, TopicPartition
    from kafka.errors import KafkaError

    quiet_kafka(args.log_level)
    try:
        consumer = KafkaConsumer(
            bootstrap_servers=args.bootstrap_servers,
            enable_auto_commit=False,
            request_timeout_ms=10_000,
            bootstrap_timeout_ms=10_000,
            **client_security(),
        )
    except KafkaError as e:
        raise ClipguardError(f"cannot connect to Kafka at {args.bootstrap_servers}: {e}") from e
    try:
        parts = consumer.partitions_for_topic(args.topic)
        if not parts:
            raise ClipguardError(f"no topic {args.topic!r} on {args.bootstrap_servers}")
        tps = [TopicPartition(args.topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        printed = 0
        last = time.monotonic()
        while args.follow or time.monotonic() - last < args.idle:
            for tp, records in consumer.poll(timeout_ms=200).items():
                for r in records:
                    print(_record_line(tp, r, args.headers), flush=True)
                    printed += 1
                    last = time.monotonic()
                    if args.limit and printed >= args.limit:
                        return 0
        return 0
    finally:
        consumer.close(autocommit=False)


def _record_line(tp: Any, record: Any, headers: bool) -> str:
    value: Any
    try:
        value = json.loads(record.value) if record.value is not None else None
    except (UnicodeDecodeError, ValueError):
        value = f"<{len(record.value)} bytes>"
    if not headers:
        return json.dumps(value) if not isinstance(value, str) else value
    return json.dumps(
        {
            "at": f"{tp.topic}[{tp.partition}]@{record.offset}",
            "key": record.key.decode(errors="replace") if record.key is not None else None,
            "headers": {k: (v or b"").decode(errors="replace") for k, v in record.headers or []},
            "value": value,
        }
    )
