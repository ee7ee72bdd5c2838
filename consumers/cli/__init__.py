"""The ``clipguard`` command line: one module per command group.

Each group module (:mod:`~consumers.cli.models`, :mod:`~consumers.cli.policy`,
:mod:`~consumers.cli.banks`, :mod:`~consumers.cli.broker`, :mod:`~consumers.cli.produce`,
:mod:`~consumers.cli.scan`, :mod:`~consumers.cli.worker`, :mod:`~consumers.cli.consume`,
:mod:`~consumers.cli.store`, :mod:`~consumers.cli.studio`) has ``add_parser(subparsers)``, which
adds its parsers and sets ``func`` on the leaf ones: :func:`main` parses, sets up logging and
calls ``args.func(args)``, which returns the exit status. What several groups declare (the Kafka
address, the model, policies and sampling options, help screens, tables, exit statuses) is in
:mod:`~consumers.cli.common`. To add a group, write such a module and add it to
:func:`build_parser`. Heavy imports (torch, Kafka) happen inside the command functions, so
``clipguard --help`` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import Final

from consumers.cli import (
    banks,
    broker,
    consume,
    models,
    policy,
    produce,
    scan,
    store,
    studio,
    worker,
)
from consumers.cli.common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    PROG,
    Command,
    exit_status,
    help_of,
    logging_to_stderr,
    para,
)
from pipeline import __version__
from pipeline.errors import ClipguardError

__all__ = ["build_parser", "main"]

_log = logging.getLogger(__name__)

_LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

_EPILOG = """\
examples:
  clipguard models list                 which CLIP models exist and which are cached
  clipguard models download ViT-B/32    fetch OpenAI's ViT-B/32 weights into the cache
  clipguard --log-level DEBUG models list
  clipguard policy lint policies/       validate policy files (line and column on errors)
  clipguard banks list --dir banks/     hash banks of known content (PDQ, vPDQ, MD5)
  clipguard policy test                 score the demo policies' regression examples
  clipguard broker                      an embedded Kafka-compatible broker on 127.0.0.1:9092
  clipguard produce clip.mp4 --stream-id cam1   send a video file as segments

environment:
  CLIPGUARD_CACHE_DIR      where model weights are cached
                           (default: $XDG_CACHE_HOME/clipguard/models)
  CLIPGUARD_POLICY_CACHE   where compiled policies are cached
                           (default: policies/ beside the model cache)
  CLIPGUARD_MODEL_MIRROR   base URL of a mirror to download weights from;
                           files are fetched as {mirror}/{sha256}/{filename}
"""


def build_parser() -> argparse.ArgumentParser:
    """The whole ``clipguard`` argument parser, every subcommand included."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=para(
            "clipguard: streaming video moderation with CLIP. Frames come in from Kafka, are "
            "scored against text policies with a CLIP model, and flag events go out."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=_LOG_LEVELS,
        metavar="LEVEL",
        help="log messages at this level and above to stderr: "
        f"{', '.join(_LOG_LEVELS)} (default: %(default)s)",
    )
    parser.set_defaults(func=help_of(parser))
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for group in (models, policy, banks, broker, produce, scan, store, worker, consume, studio):
        group.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``clipguard`` command line with ``argv`` (default: ``sys.argv[1:]``) and return
    its exit status: 0 on success, 1 when a command fails, 2 for a usage error."""
    parser = build_parser()
    try:
        args = parser.parse_args(None if argv is None else list(argv))
    except SystemExit as e:  # --help, --version and usage errors: argparse wants to exit
        return exit_status(e.code)
    command: Command = args.func
    with logging_to_stderr(args.log_level):
        try:
            return command(args)
        except ClipguardError as e:
            _log.debug("command failed", exc_info=True)
            print(f"{PROG}: error: {e}", file=sys.stderr)
            return EXIT_FAILED
        except KeyboardInterrupt:
            print(f"{PROG}: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        except BrokenPipeError:  # the reader went away (`clipguard models list | head`)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # no second error when Python flushes stdout
            return EXIT_OK
