"""The ``clipguard`` command line.

Each group of subcommands is added to the parser by its own ``_add_<group>_parser(subparsers)``
function, which sets ``func`` on its leaf parsers: ``main`` parses, sets up logging and calls
``args.func(args)``, which returns the exit status. To add a group, write such a function and
call it from :func:`build_parser`. Heavy imports (torch, through :mod:`pipeline.models`) happen
inside the command functions, so ``clipguard --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import textwrap
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TextIO

from pipeline import __version__
from pipeline.errors import ClipguardError

__all__ = ["build_parser", "main"]

_log = logging.getLogger(__name__)

_PROG = "clipguard"
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

_Command = Callable[[argparse.Namespace], int]

_MAIN_EPILOG = """\
examples:
  clipguard models list                 which CLIP models exist and which are cached
  clipguard models download ViT-B/32    fetch OpenAI's ViT-B/32 weights into the cache
  clipguard --log-level DEBUG models list

environment:
  CLIPGUARD_CACHE_DIR      where model weights are cached
                           (default: $XDG_CACHE_HOME/clipguard/models)
  CLIPGUARD_MODEL_MIRROR   base URL of a mirror to download weights from;
                           files are fetched as {mirror}/{sha256}/{filename}
"""

_MODELS_EPILOG = """\
examples:
  clipguard models list
  clipguard models list --json
  clipguard models download ViT-B/32
  clipguard models download RN50 --force
"""


def build_parser() -> argparse.ArgumentParser:
    """The whole ``clipguard`` argument parser, every subcommand included."""
    parser = argparse.ArgumentParser(
        prog=_PROG,
        description=_para(
            "clipguard: streaming video moderation with CLIP. Frames come in from Kafka, are "
            "scored against text policies with a CLIP model, and flag events go out."
        ),
        epilog=_MAIN_EPILOG,
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
    parser.set_defaults(func=_help_of(parser))
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    _add_models_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``clipguard`` command line with ``argv`` (default: ``sys.argv[1:]``) and return
    its exit status: 0 on success, 1 when a command fails, 2 for a usage error."""
    parser = build_parser()
    try:
        args = parser.parse_args(None if argv is None else list(argv))
    except SystemExit as e:  # --help, --version and usage errors: argparse wants to exit
        return _exit_status(e.code)
    command: _Command = args.func
    with _logging_to_stderr(args.log_level):
        try:
            return command(args)
        except ClipguardError as e:
            _log.debug("command failed", exc_info=True)
            print(f"{_PROG}: error: {e}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print(f"{_PROG}: interrupted", file=sys.stderr)
            return 130


# --- clipguard models -------------------------------------------------------------------------


def _add_models_parser(subparsers: Any) -> None:
    """Add ``clipguard models {list,download}``."""
    models = subparsers.add_parser(
        "models",
        help="list and download CLIP models",
        description=_para(
            "List the CLIP models clipguard knows (OpenAI's releases and the bundled demo "
            "model) and download their weights into the local cache."
        ),
        epilog=_MODELS_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    models.set_defaults(func=_help_of(models))
    commands = models.add_subparsers(title="commands", metavar="COMMAND")

    list_ = commands.add_parser(
        "list",
        help="show every known model and whether its weights are cached",
        description=_para(
            "Show every known model: architecture, embedding size, input resolution, whether "
            "its weights are in the cache, and where they are (or would be)."
        ),
    )
    list_.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    list_.set_defaults(func=_models_list)

    download = commands.add_parser(
        "download",
        help="download a model's weights into the cache",
        description=_para(
            "Download the weights of a registry model into the cache and verify their SHA-256. "
            "Nothing is downloaded if a verified copy is already cached. Set "
            "CLIPGUARD_MODEL_MIRROR to download from a mirror."
        ),
        epilog="example:\n  clipguard models download ViT-B/32",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    download.add_argument("name", metavar="NAME", help="model name, e.g. ViT-B/32 or RN50")
    download.add_argument(
        "--force", action="store_true", help="download again even if a verified copy is cached"
    )
    download.set_defaults(func=_models_download)


def _models_list(args: argparse.Namespace) -> int:
    from pipeline.models.registry import DEMO_NOTICE, cache_dir, list_models

    rows: list[dict[str, Any]] = []
    for info in list_models():
        available = info.is_available()
        if info.bundled:
            status = "bundled" if available else "bundled (missing)"
        else:
            status = "yes" if available else "no"
        rows.append(
            {
                "name": info.name,
                "architecture": info.architecture,
                "embed_dim": info.embed_dim,
                "image_resolution": info.image_resolution,
                "cached": status,
                "available": available,
                "bundled": info.bundled,
                "demo": info.demo,
                "path": str(info.path()),
                "url": info.url or None,
                "sha256": info.sha256 or None,
                "notice": DEMO_NOTICE if info.demo else None,
            }
        )
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0

    headers = ("NAME", "ARCHITECTURE", "EMBED", "RES", "CACHED", "PATH")
    table = [
        (
            f"{row['name']} (demo)" if row["demo"] else row["name"],
            row["architecture"],
            str(row["embed_dim"]),
            str(row["image_resolution"]),
            row["cached"],
            row["path"],
        )
        for row in rows
    ]
    widths = [max(len(cells[i]) for cells in [headers, *table]) for i in range(len(headers) - 1)]
    for cells in [headers, *table]:
        line = "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=False))
        print(f"{line}  {cells[-1]}")
    print()
    print(f"cache directory: {cache_dir()} (set CLIPGUARD_CACHE_DIR to change it)")
    if any(row["demo"] for row in rows):
        print(f"note: {DEMO_NOTICE}")
    return 0


def _models_download(args: argparse.Namespace) -> int:
    from pipeline.models.download import download_model
    from pipeline.models.registry import get_model_info

    info = get_model_info(args.name)  # unknown names fail here, listing the known ones
    if not args.force and not info.bundled and info.is_available():
        _log.info("%s is cached at %s; checking its SHA-256", info.name, info.path())
    progress = _ProgressLine(info.name, sys.stderr)
    try:
        path = download_model(info.name, force=args.force, progress=progress)
    finally:
        progress.finish()
    print(path)
    return 0


class _ProgressLine:
    """Reports download progress on one line of ``stream`` (a new line per 10% when it is not
    a terminal, so logs stay short)."""

    def __init__(self, name: str, stream: TextIO) -> None:
        self._name = name
        self._stream = stream
        self._tty = stream.isatty()
        self._last: str | None = None
        self._started = False

    def __call__(self, done: int, total: int | None) -> None:
        if total:
            pct = 100.0 * done / total
            step = f"{pct:.1f}" if self._tty else str(int(pct // 10) * 10)
            text = f"downloading {self._name}: {pct:5.1f}% ({_mb(done)} of {_mb(total)})"
        else:
            step = f"{done / 1e6:.1f}" if self._tty else str(done // 50_000_000)
            text = f"downloading {self._name}: {_mb(done)}"
        if step == self._last:
            return
        self._last = step
        self._started = True
        if self._tty:
            self._stream.write(f"\r{text}\x1b[K")
        else:
            self._stream.write(text + "\n")
        self._stream.flush()

    def finish(self) -> None:
        if self._started and self._tty:
            self._stream.write("\n")
            self._stream.flush()


# --- helpers ----------------------------------------------------------------------------------


def _help_of(parser: argparse.ArgumentParser) -> _Command:
    """A command that prints ``parser``'s help to stderr and fails: for a group run without
    one of its subcommands."""

    def show_help(args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 2

    return show_help


def _exit_status(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _para(text: str) -> str:
    """``text`` wrapped for a help screen (the parsers keep descriptions as they are given)."""
    return textwrap.fill(text, width=79)


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


class _StderrHandler(logging.Handler):
    """Writes records to whatever ``sys.stderr`` is at the time (tests swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:
            self.handleError(record)


@contextmanager
def _logging_to_stderr(level: str) -> Iterator[None]:
    """Log ``level`` and above to stderr while a command runs, then restore the root logger."""
    root = logging.getLogger()
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(level)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
