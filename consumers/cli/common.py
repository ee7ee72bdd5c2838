"""What the ``clipguard`` command groups share: exit statuses, the options several commands take
(the Kafka address, the model, the policies, the sampling rate, the frame fit), help screens,
tables, and logging to stderr while a command runs.

Nothing here imports torch or Kafka: the group modules import this at their top, and
``clipguard --help`` must stay fast.
"""

from __future__ import annotations

import argparse
import logging
import sys
import textwrap
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Final, Literal

from consumers.argtypes import positive_float

if TYPE_CHECKING:
    from pipeline.models.base import ImageTextModel

__all__ = [
    "DEFAULT_BOOTSTRAP",
    "DEFAULT_PORT",
    "DEMO_MODEL",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_PARTIAL",
    "EXIT_USAGE",
    "FIT_CHOICES",
    "PROG",
    "Command",
    "add_bootstrap_servers",
    "add_command",
    "add_fit_option",
    "add_group",
    "add_model_option",
    "add_policies_option",
    "add_sample_fps_option",
    "exit_status",
    "help_of",
    "load_model",
    "logging_to_stderr",
    "para",
    "plural",
    "print_table",
    "quiet_kafka",
    "use_log_format",
]

PROG: Final = "clipguard"

#: The command did what was asked.
EXIT_OK: Final = 0
#: The command could not do it (a :class:`pipeline.errors.ClipguardError`, a failed check).
EXIT_FAILED: Final = 1
#: Usage error (argparse's status).
EXIT_USAGE: Final = 2
#: ``clipguard scan`` ran, but at least one input could not be scanned (see summary.json).
EXIT_PARTIAL: Final = 3
#: Stopped by Ctrl-C.
EXIT_INTERRUPTED: Final = 130

DEMO_MODEL: Final = "clipguard-demo"  # pipeline.models.DEMO_MODEL, named here without torch
DEFAULT_PORT: Final = 9092
DEFAULT_BOOTSTRAP: Final = f"127.0.0.1:{DEFAULT_PORT}"
FIT_CHOICES: Final = ("pad", "crop", "tiles")

#: A leaf command: parsed arguments in, exit status out.
Command = Callable[[argparse.Namespace], int]

_Parent = argparse.ArgumentParser | argparse._ArgumentGroup


# --- parsers ----------------------------------------------------------------------------------


def add_command(
    subparsers: Any,
    name: str,
    *,
    help: str,
    description: str,
    epilog: str | None = None,
    wrap: bool = True,
) -> argparse.ArgumentParser:
    """A subcommand's parser: ``description`` wrapped for the help screen (unless ``wrap`` is
    false: then it is shown as written); an ``epilog`` (with examples) is shown as written."""
    if wrap:
        description = para(description)
    if epilog is None:
        parser: argparse.ArgumentParser = subparsers.add_parser(
            name, help=help, description=description
        )
    else:
        parser = subparsers.add_parser(
            name,
            help=help,
            description=description,
            epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
    return parser


def add_group(
    subparsers: Any, name: str, *, help: str, description: str, epilog: str
) -> tuple[argparse.ArgumentParser, Any]:
    """A group of subcommands (``clipguard models``): its parser, which prints its help when
    run without a subcommand, and the subparsers its commands are added to."""
    group = add_command(subparsers, name, help=help, description=description, epilog=epilog)
    group.set_defaults(func=help_of(group))
    return group, group.add_subparsers(title="commands", metavar="COMMAND")


def help_of(parser: argparse.ArgumentParser) -> Command:
    """A command that prints ``parser``'s help to stderr and fails: for a group run without
    one of its subcommands."""

    def show_help(args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return EXIT_USAGE

    return show_help


def para(text: str) -> str:
    """``text`` wrapped for a help screen (the parsers keep descriptions as they are given)."""
    return textwrap.fill(text, width=79)


def exit_status(code: object) -> int:
    """The exit status of argparse's ``SystemExit`` (--help, --version, usage errors)."""
    if code is None:
        return EXIT_OK
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return EXIT_FAILED


# --- options several commands take -----------------------------------------------------------


def add_bootstrap_servers(
    parser: _Parent,
    *,
    help: str,
    metavar: str,
    default: str | None = None,
    old_spellings: Sequence[str] = (),
) -> None:
    """``--bootstrap-servers``, the Kafka address of every command that talks to Kafka, parsed
    into ``args.bootstrap_servers``. ``old_spellings`` (``--bootstrap``, ``--kafka``) still
    work and are not shown in the help."""
    parser.add_argument(
        "--bootstrap-servers", default=default, metavar=metavar, help=help, dest="bootstrap_servers"
    )
    for spelling in old_spellings:
        parser.add_argument(
            spelling,
            dest="bootstrap_servers",
            default=argparse.SUPPRESS,  # --bootstrap-servers's default stands
            metavar=metavar,
            help=argparse.SUPPRESS,
        )


def add_model_option(parser: _Parent, *, help: str, default: str | None = None) -> None:
    """``--model NAME|PATH``: a registry name or a weights file."""
    parser.add_argument("--model", default=default, metavar="NAME|PATH", help=help)


def add_policies_option(parser: _Parent, *, help: str, repeatable: bool) -> None:
    """``--policies PATH``: policy files or folders, repeated (``--policies a --policies b``)
    or listed after one option (``--policies a b``)."""
    if repeatable:
        parser.add_argument("--policies", action="append", metavar="PATH", help=help)
    else:
        parser.add_argument("--policies", nargs="+", metavar="PATH", help=help)


def add_banks_option(parser: _Parent, *, help: str) -> None:
    """``--banks PATH``: hash bank files (``*.bank.tsv``) or folders, for hash policies,
    repeated or listed after one option."""
    parser.add_argument("--banks", nargs="+", action="extend", metavar="PATH", help=help)


def add_sample_fps_option(
    parser: _Parent, *, help: str, default: float | None = None, metavar: str = "FPS"
) -> None:
    """``--sample-fps``: frames per second of video to score."""
    parser.add_argument(
        "--sample-fps", type=positive_float, default=default, metavar=metavar, help=help
    )


def add_fit_option(parser: _Parent, *, help: str, default: str | None = None) -> None:
    """``--fit {pad,crop,tiles}``: how frames become the model's square input."""
    parser.add_argument("--fit", choices=FIT_CHOICES, default=default, help=help)


def load_model(name: str) -> tuple[ImageTextModel, bool]:
    """The model (CLIP, SigLIP or SigLIP 2), and whether it is a demo model (whose output must
    say so). Restricted licences are accepted through ``CLIPGUARD_ACCEPT_LICENSES``."""
    from pipeline.models import list_models
    from pipeline.models import load_model as load

    model = load(name)
    demo = any(info.demo and info.name == model.name for info in list_models())
    return model, demo


# --- output -----------------------------------------------------------------------------------


def plural(n: int, one: str, many: str | None = None) -> str:
    """``1 policy``, ``2 policies``."""
    return f"{n} {one if n == 1 else (many or one + 's')}"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Left-aligned columns; the last column is not padded."""
    widths = [max(len(cells[i]) for cells in [headers, *rows]) for i in range(len(headers))]
    for cells in [headers, *rows]:
        line = "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True))
        print(line.rstrip())


# --- logging ----------------------------------------------------------------------------------


class _StderrHandler(logging.Handler):
    """Writes records to whatever ``sys.stderr`` is at the time (tests swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:
            self.handleError(record)


@contextmanager
def logging_to_stderr(level: str) -> Iterator[None]:
    """Log ``level`` and above to stderr while a command runs, then restore the root logger."""
    root = logging.getLogger()
    handler = _StderrHandler()
    from consumers.logs import TextFormatter

    handler.setFormatter(TextFormatter())
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(level)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def use_log_format(kind: Literal["text", "json"]) -> None:
    """Log the running command's lines as text or JSON (``--log-format``)."""
    from consumers.logs import formatter

    for handler in logging.getLogger().handlers:
        if isinstance(handler, _StderrHandler):
            handler.setFormatter(formatter(kind))


def quiet_kafka(level: str) -> None:
    """kafka-python logs every connection at INFO and every retry at ERROR; the commands report
    failures themselves, so its log shows only at DEBUG."""
    if level != "DEBUG":
        logging.getLogger("kafka").setLevel(logging.CRITICAL)
