"""``clipguard banks``: import, export, add to, list and describe hash banks, and backtest them
on the frame store (which stored frames a bank would have matched).

Banks live as files of ours (``<name>.bank.tsv``, format in :mod:`pipeline.hashes.bank`) in a
folder (``--dir``, default ``banks/``), the folder a worker's bank store watches: every
command that changes a bank writes the whole file atomically, so a running worker reloads it
at its next refresh and never reads half a file.

:func:`add_parser` adds the subcommands to the ``clipguard`` parser; each sets ``func`` to a
``_banks_*`` function that takes the parsed arguments and returns the exit status.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from consumers.cli.common import add_command, add_group, plural, print_table
from consumers.cli.store import when
from pipeline.errors import BankError, ConfigError

if TYPE_CHECKING:
    from pipeline.hashes.bank import Bank

__all__ = ["FORMATS", "add_parser"]

_DEFAULT_DIR = "banks"
_BANK_SUFFIX = ".bank.tsv"  # pipeline.hashes.bank.BANK_SUFFIX
# pipeline.hashes.formats.FORMATS, spelled out so that building the parser imports nothing
# heavy (a test holds the two equal)
FORMATS = ("te-signals", "te-csv", "hma-json", "vpdq-file")


_EPILOG = """\
examples:
  clipguard banks import gifct.te --format te-csv --bank gifct --source gifct
  clipguard banks add known --video clip.mp4 --id case-77 --tags spam
  clipguard banks add known --file upload.mp4 --id case-78
  clipguard banks list
  clipguard banks stats gifct
  clipguard banks export known --format hma-json --out known.jsonl
  clipguard banks backtest known --store frames/ --out matches.jsonl

Banks are matched by kind: hash policies; workers and scans take --banks DIR.
"""


def add_parser(subparsers: Any) -> None:
    """Add ``clipguard banks {import,export,add,list,stats,backtest}`` to ``subparsers``."""
    _, commands = add_group(
        subparsers,
        "banks",
        help="manage hash banks (PDQ, vPDQ, MD5) for known-content matching",
        description="Import, export, add to, list and describe hash banks: named sets of "
        "hashes of known content that hash policies match frames and files against.",
        epilog=_EPILOG,
    )

    imp = add_command(
        commands,
        "import",
        help="import a ThreatExchange or HMA file into a bank",
        description="Read FILE in FORMAT and write it as bank NAME (replacing it, or adding "
        "to it with --merge). Formats: te-signals (ThreatExchange signal file: "
        "'<signal_type> <signal>' a line), te-csv (ThreatExchange / HMA 1.x "
        "simple.<INDICATOR_TYPE>.te CSV), hma-json (HMA 2.x bank content, JSON a line), "
        "vpdq-file (the vPDQ reference hasher's output).",
    )
    imp.add_argument("file", type=Path, metavar="FILE")
    imp.add_argument("--format", required=True, choices=FORMATS, dest="fmt")
    imp.add_argument("--bank", required=True, metavar="NAME")
    imp.add_argument(
        "--signal-type",
        default=None,
        metavar="TYPE",
        help="the type of every line when the file does not say it "
        "(te-signals: pdq, video_md5, vpdq; te-csv: HASH_PDQ, HASH_MD5, ...)",
    )
    imp.add_argument("--source", default=None, help="recorded on every entry")
    imp.add_argument("--description", default=None)
    imp.add_argument("--merge", action="store_true", help="add to the bank instead of replacing it")
    _add_dir(imp)
    imp.set_defaults(func=_banks_import)

    exp = add_command(
        commands,
        "export",
        help="write a bank in a ThreatExchange or HMA format",
        description="Write bank NAME to FILE in FORMAT (the formats of import).",
    )
    exp.add_argument("bank", metavar="NAME")
    exp.add_argument("--format", required=True, choices=FORMATS, dest="fmt")
    exp.add_argument("--out", required=True, type=Path, metavar="FILE")
    _add_dir(exp)
    exp.set_defaults(func=_banks_export)

    add = add_command(
        commands,
        "add",
        help="add one entry to a bank (created if missing)",
        description="Add one entry: a hash given as text, or the hash of a file (--image: "
        "PDQ of a picture; --video: vPDQ of a video, one frame a second; --file: MD5).",
    )
    add.add_argument("bank", metavar="NAME")
    what = add.add_mutually_exclusive_group(required=True)
    what.add_argument("--pdq", metavar="HEX")
    what.add_argument("--md5", metavar="HEX")
    what.add_argument("--image", type=Path, metavar="FILE")
    what.add_argument("--video", type=Path, metavar="FILE")
    what.add_argument("--file", type=Path, metavar="FILE")
    add.add_argument("--id", required=True, dest="entry_id", metavar="ENTRY_ID")
    add.add_argument("--tags", default="", help="comma-separated")
    add.add_argument("--source", default="")
    _add_dir(add)
    add.set_defaults(func=_banks_add)

    list_ = add_command(
        commands,
        "list",
        help="list the banks in the folder",
        description="One line a bank file in the folder: name, entries by type, description.",
    )
    _add_dir(list_)
    list_.set_defaults(func=_banks_list)

    stats = add_command(
        commands,
        "stats",
        help="entries by type and tag, memory and load time",
        description="Entries by signal type and tag, the memory of the bank and its index, "
        "and how long it takes to read and index.",
    )
    stats.add_argument("bank", metavar="NAME")
    _add_dir(stats)
    stats.set_defaults(func=_banks_stats)
    _add_backtest(commands)


def _add_backtest(commands: Any) -> None:
    backtest = add_command(
        commands,
        "backtest",
        help="which stored frames a bank would have matched",
        description="Match the frames of the frame store that were stored with their PDQ hash "
        "against banks NAME (their PDQ entries and the frames of their videos), as a worker "
        "matches live frames: each matching frame with its stream, time and the entry. Frames "
        "stored without a hash are counted, not matched.",
    )
    backtest.add_argument("banks", nargs="+", metavar="NAME")
    _add_dir(backtest)
    backtest.add_argument(
        "--store", required=True, metavar="DIR", help="the store: a folder or a pyarrow URI"
    )
    backtest.add_argument("--model", metavar="NAME", help="only frames of this model")
    backtest.add_argument("--since", type=when, metavar="TIME", help="frames scored from then")
    backtest.add_argument("--until", type=when, metavar="TIME", help="frames scored before then")
    backtest.add_argument(
        "--stream", action="append", default=[], metavar="ID", help="only this stream (repeat)"
    )
    backtest.add_argument(
        "--max-distance", type=int, default=31, metavar="BITS", help="default: %(default)s"
    )
    backtest.add_argument(
        "--min-quality", type=int, default=50, metavar="Q", help="default: %(default)s"
    )
    backtest.add_argument("--out", type=Path, metavar="FILE", help="every match, JSON a line")
    backtest.add_argument("--top", type=int, default=20, help="matches printed (default: 20)")
    backtest.set_defaults(func=_banks_backtest)


def _add_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dir",
        type=Path,
        default=Path(_DEFAULT_DIR),
        metavar="DIR",
        help="the banks folder (default: %(default)s)",
    )


def _path_of(directory: Path, name: str) -> Path:
    return directory / f"{name}{_BANK_SUFFIX}"


def _load(directory: Path, name: str) -> Bank:
    from pipeline.hashes.bank import read_bank

    path = _path_of(directory, name)
    if not path.is_file():
        raise BankError(f"no bank {name!r} in {directory} (no {path.name})")
    return read_bank(path)


def _banks_import(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    from pipeline.hashes.bank import BankBuilder, write_bank
    from pipeline.hashes.formats import import_bank

    imported = import_bank(
        args.file, args.fmt, name=args.bank, signal_type=args.signal_type, source=args.source
    )
    existing = (
        _load(args.dir, args.bank)
        if args.merge and _path_of(args.dir, args.bank).is_file()
        else None
    )
    builder = BankBuilder()
    if existing is not None:
        for e in existing.entries():
            builder.add_entry(e)
    added = 0
    for e in imported.entries():
        builder.add_entry(e)
        added += 1
    description = args.description
    if description is None:
        description = existing.description if existing is not None else ""
    bank = builder.build(args.bank, description)
    path = write_bank(bank, args.dir)
    print(f"{added} entries imported into {path} ({_counts(bank)})", file=out)
    return 0


def _banks_export(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    from pipeline.hashes.formats import export_bank

    bank = _load(args.dir, args.bank)
    path = export_bank(bank, args.out, args.fmt)
    print(f"{len(bank)} entries of {bank.name} written to {path} ({args.fmt})", file=out)
    return 0


def _banks_add(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    from pipeline.hashes import files
    from pipeline.hashes.bank import BankBuilder, read_bank, write_bank
    from pipeline.hashes.signals import format_vpdq

    if args.pdq is not None:
        signal_type, text = "pdq", args.pdq
    elif args.md5 is not None:
        signal_type, text = "md5", args.md5
    elif args.image is not None:
        h = files.hash_image_file(args.image)
        signal_type, text = "pdq", h.hex
        if h.quality < 50:
            print(
                f"warning: {args.image} has PDQ quality {h.quality} (< 50): frames this "
                "flat are not matched by default",
                file=sys.stderr,
            )
    elif args.video is not None:
        signal_type, text = "vpdq", format_vpdq(files.hash_video_file(args.video))
    else:
        signal_type, text = "md5", files.md5_of_file(args.file).hex()
    path = _path_of(args.dir, args.bank)
    existing = read_bank(path) if path.is_file() else None
    builder = BankBuilder()
    if existing is not None:
        for e in existing.entries():
            builder.add_entry(e)
    tags = [t.strip() for t in args.tags.split(",") if t.strip()]
    builder.add(signal_type, text, args.entry_id, tags, args.source)
    bank = builder.build(args.bank, existing.description if existing else "")
    written = write_bank(bank, args.dir)
    print(f"added {signal_type} entry {args.entry_id} to {written} ({_counts(bank)})", file=out)
    return 0


def _banks_list(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    from pipeline.hashes.bank import read_bank
    from pipeline.hashes.store import bank_files

    if not args.dir.is_dir():
        raise ConfigError(f"no banks folder {args.dir}")
    failed = 0
    for f in bank_files([args.dir]):
        try:
            bank = read_bank(f)
        except BankError as e:
            print(f"{f.name}\terror: {e}", file=out)
            failed += 1
            continue
        print(f"{bank.name}\t{_counts(bank)}\t{bank.description}", file=out)
    return 1 if failed else 0


def _banks_stats(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    from pipeline.hashes.match import IndexedBank

    path = _path_of(args.dir, args.bank)
    t0 = time.perf_counter()
    bank = _load(args.dir, args.bank)
    t1 = time.perf_counter()
    indexed = IndexedBank(bank)
    t2 = time.perf_counter()
    print(f"bank         {bank.name}", file=out)
    print(f"file         {path} ({path.stat().st_size} bytes)", file=out)
    if bank.description:
        print(f"description  {bank.description}", file=out)
    print(f"entries      {len(bank)} ({_counts(bank)})", file=out)
    frames = sum(len(e.frames) for e in bank.vpdq)
    if frames:
        print(f"vpdq frames  {frames}", file=out)
    print(
        f"memory       {(bank.pdq.nbytes + bank.md5.nbytes) / 2**20:.1f} MiB columns, "
        f"{indexed.pdq.nbytes / 2**20:.1f} MiB PDQ index ({indexed.pdq.kind})",
        file=out,
    )
    print(f"load         {t1 - t0:.3f} s read, {t2 - t1:.3f} s index", file=out)
    for tag, n in bank.tag_counts().items():
        print(f"tag          {tag}\t{n}", file=out)
    return 0


def _counts(bank: Bank) -> str:
    return ", ".join(f"{n} {t}" for t, n in bank.counts().items())


def _banks_backtest(args: argparse.Namespace) -> int:
    from pipeline.hashes.match import Matcher
    from pipeline.hashes.signals import MAX_DISTANCE
    from pipeline.store import FrameFilter, open_store
    from pipeline.store.bankmatch import match_stored_frames

    if not 0 <= args.max_distance <= MAX_DISTANCE:
        raise ConfigError(f"--max-distance must be in 0..{MAX_DISTANCE}")
    if not 0 <= args.min_quality <= 100:
        raise ConfigError("--min-quality must be in 0..100")
    matcher = Matcher({name: _load(args.dir, name) for name in dict.fromkeys(args.banks)})
    flt = FrameFilter(
        model=args.model, since=args.since, until=args.until, streams=tuple(args.stream)
    )
    found = match_stored_frames(
        open_store(args.store),
        matcher,
        flt=flt,
        max_distance=args.max_distance,
        min_quality=args.min_quality,
    )
    matches = plural(len(found.matches), "match", "matches")
    print(
        f"{plural(found.frames, 'stored frame')} read, {found.hashed} with a PDQ hash "
        f"({found.low_quality} under quality {args.min_quality}); "
        f"{plural(found.matched_frames, 'frame')} matched ({matches})",
    )
    if args.out is not None:
        with args.out.open("w", encoding="utf-8") as f:
            for m in found.matches:
                f.write(json.dumps(m.to_json(), separators=(",", ":")) + "\n")
        print(f"matches written to {args.out}")
    rows = [
        [m.stream_id, f"{m.ts:.2f}", m.match.bank, m.match.entry_id, m.match.signal_type,
         str(m.match.distance), str(m.match.quality), m.frame_id]
        for m in found.matches[: max(0, args.top)]
    ]  # fmt: skip
    if rows:
        print_table(
            ["stream", "ts", "bank", "entry", "signal", "distance", "quality", "frame"], rows
        )
    return 0
