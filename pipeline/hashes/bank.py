"""Hash banks: named sets of known content (PDQ, vPDQ, MD5 entries) and clipguard's file format.

A bank holds entries; each entry is one hash of one signal type with an id unique in the bank,
tags (what the content is: ``terror``, ``csam``, ``spam``...) and a source (where the hash came
from: an exchange, a case number). Banks are immutable values: editing one means building a
new one (:class:`BankBuilder`) and writing it back.

Memory: PDQ and MD5 hashes are kept in columns, a ``(N, 32)`` / ``(N, 16)`` uint8 array plus the
ids in one UTF-8 blob with offsets and the tags and sources as indexes into tables of distinct
values, so a million PDQ entries take tens of megabytes, not a million Python objects
(``bench/bench_hashes_match.py`` measures it). vPDQ entries (whole videos) are few and kept as
:class:`BankEntry` objects.

The file format (one bank a file, ``<name>.bank.tsv``, UTF-8, tab-separated)::

    # clipguard-bank 1
    # description: known terrorist propaganda, from the GIFCT list of 2026-01
    signal_type	hash	entry_id	tags	source
    pdq	f8f8f0cee0f4a84f06370a22038f63f0b36e2ed596621e1d33e6b39c4e9c9b22	gifct-1	terror	gifct
    md5	d41d8cd98f00b204e9800998ecf8427e	case-77	spam,ads	case:77
    vpdq	<hex>,100,0.000;<hex>,97,1.000	video-3	terror	hma:SAMPLE/12

* line 1 is exactly ``# clipguard-bank 1`` (the format version);
* more ``#`` lines may follow; ``# description: ...`` is the bank's description;
* then the column header exactly as above, then one entry a line (empty lines are skipped);
* ``signal_type`` is ``pdq``, ``vpdq`` or ``md5``; ``hash`` is in the text form of
  :mod:`pipeline.hashes.signals`; ``entry_id`` is 1-200 characters of ``A-Z a-z 0-9 _ . : / -``
  and unique in the bank; ``tags`` is a comma-separated list (possibly empty) of 1-64 such
  characters each; ``source`` is free text up to 1000 characters without tabs or newlines.

The bank's name is the file name without ``.bank.tsv``. Every problem is a
:class:`~pipeline.errors.BankError` naming the file and line. Reading is bounded: the file's
size (``max_bytes``), each line's length and the number of entries.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypeVar

import numpy as np
import numpy.typing as npt

from pipeline.errors import BankError, DecodeError, HashError, LimitExceeded
from pipeline.hashes.signals import (
    BANK_NAME_PATTERN,
    PDQ_BYTES,
    SIGNAL_TYPES,
    SignalType,
    VpdqFrame,
    format_vpdq,
    parse_md5,
    parse_pdq,
    parse_vpdq,
)

__all__ = [
    "BANK_SUFFIX",
    "COLUMNS",
    "FORMAT_LINE",
    "MAX_BANK_BYTES",
    "MAX_ENTRIES",
    "MAX_LINE_BYTES",
    "Bank",
    "BankBuilder",
    "BankEntry",
    "HashColumn",
    "bank_name_from_path",
    "check_bank_name",
    "check_entry_id",
    "check_tag",
    "read_bank",
    "write_bank",
]

BANK_SUFFIX = ".bank.tsv"
FORMAT_LINE = "# clipguard-bank 1"
COLUMNS = ("signal_type", "hash", "entry_id", "tags", "source")
MAX_BANK_BYTES = 4 << 30  # 4 GiB: about 30 million PDQ entries
MAX_LINE_BYTES = 16 << 20  # a vPDQ entry of a very long video at one hash a second
MAX_ENTRIES = 50_000_000

_NAME = re.compile(BANK_NAME_PATTERN)
_ENTRY_ID = re.compile(r"[A-Za-z0-9_.:/-]{1,200}")
_TAG = re.compile(r"[A-Za-z0-9_.:/-]{1,64}")
_MAX_SOURCE = 1000
_MAX_TAGS = 64
_MAX_DESCRIPTION = 2000
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class BankEntry:
    """One entry: ``hash`` (packed bytes) for ``pdq`` and ``md5``, ``frames`` for ``vpdq``."""

    signal_type: SignalType
    entry_id: str
    hash: bytes = b""
    frames: tuple[VpdqFrame, ...] = ()
    tags: tuple[str, ...] = ()
    source: str = ""

    def hash_text(self) -> str:
        """The hash in its text form (:mod:`pipeline.hashes.signals`)."""
        return format_vpdq(self.frames) if self.signal_type == "vpdq" else self.hash.hex()


class _Strings:
    """Many short strings in one UTF-8 blob with offsets (8 bytes a string plus its text)."""

    __slots__ = ("_blob", "_offsets")

    def __init__(self, items: list[str]) -> None:
        encoded = [s.encode() for s in items]
        self._blob = b"".join(encoded)
        lengths = np.fromiter((len(e) for e in encoded), dtype=np.int64, count=len(encoded))
        self._offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum(lengths, out=self._offsets[1:])

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, i: int) -> str:
        return self._blob[int(self._offsets[i]) : int(self._offsets[i + 1])].decode()

    @property
    def nbytes(self) -> int:
        return len(self._blob) + int(self._offsets.nbytes)


class HashColumn:
    """The fixed-size entries of one signal type: ``hashes`` ``(N, nbytes)`` uint8 and, per
    row, the entry id, tags and source."""

    __slots__ = ("_ids", "_source_of", "_sources", "_tag_sets", "_tags_of", "hashes", "type")

    def __init__(
        self,
        signal_type: SignalType,
        hashes: npt.NDArray[np.uint8],
        ids: list[str],
        tags: list[tuple[str, ...]],
        sources: list[str],
    ) -> None:
        self.type = signal_type
        self.hashes = hashes
        self.hashes.setflags(write=False)
        self._ids = _Strings(ids)
        self._tag_sets, self._tags_of = _factorise(tags)
        self._sources, self._source_of = _factorise(sources)

    def __len__(self) -> int:
        return int(self.hashes.shape[0])

    def entry_id(self, i: int) -> str:
        return self._ids[i]

    def tags(self, i: int) -> tuple[str, ...]:
        return self._tag_sets[int(self._tags_of[i])]

    def source(self, i: int) -> str:
        return self._sources[int(self._source_of[i])]

    def entry(self, i: int) -> BankEntry:
        return BankEntry(
            self.type,
            self.entry_id(i),
            hash=self.hashes[i].tobytes(),
            tags=self.tags(i),
            source=self.source(i),
        )

    @property
    def nbytes(self) -> int:
        """Bytes held by the arrays and the id blob (not the small tag and source tables)."""
        return (
            int(self.hashes.nbytes)
            + self._ids.nbytes
            + int(self._tags_of.nbytes)
            + int(self._source_of.nbytes)
        )


def _factorise(values: list[_T]) -> tuple[list[_T], npt.NDArray[np.int32]]:
    table: dict[_T, int] = {}
    codes = np.fromiter(
        (table.setdefault(v, len(table)) for v in values), dtype=np.int32, count=len(values)
    )
    return list(table), codes


class Bank:
    """A named, immutable set of hash entries (build one with :class:`BankBuilder`)."""

    def __init__(
        self,
        name: str,
        *,
        description: str,
        pdq: HashColumn,
        md5: HashColumn,
        vpdq: tuple[BankEntry, ...],
    ) -> None:
        self.name = name
        self.description = description
        self.pdq = pdq
        self.md5 = md5
        self.vpdq = vpdq

    def __len__(self) -> int:
        return len(self.pdq) + len(self.md5) + len(self.vpdq)

    def __repr__(self) -> str:
        return (
            f"Bank({self.name!r}, pdq={len(self.pdq)}, md5={len(self.md5)}, vpdq={len(self.vpdq)})"
        )

    def entries(self) -> Iterator[BankEntry]:
        """Every entry: PDQ, then MD5, then vPDQ, each in file order."""
        for col in (self.pdq, self.md5):
            for i in range(len(col)):
                yield col.entry(i)
        yield from self.vpdq

    def counts(self) -> dict[str, int]:
        return {"pdq": len(self.pdq), "vpdq": len(self.vpdq), "md5": len(self.md5)}

    def tag_counts(self) -> dict[str, int]:
        """How many entries carry each tag."""
        counts: dict[str, int] = {}
        for e in self.entries():
            for t in e.tags:
                counts[t] = counts.get(t, 0) + 1
        return dict(sorted(counts.items()))


class BankBuilder:
    """Collects entries, checking each, then builds a :class:`Bank`.

    ``add`` raises :class:`~pipeline.errors.HashError` (or :class:`BankError` for a duplicate
    id); readers wrap it with the file and line.
    """

    def __init__(self, *, max_entries: int = MAX_ENTRIES) -> None:
        self.max_entries = max_entries
        self._ids: set[str] = set()
        self._cols: dict[str, tuple[list[str], list[str], list[tuple[str, ...]], list[str]]] = {
            "pdq": ([], [], [], []),
            "md5": ([], [], [], []),
        }
        self._vpdq: list[BankEntry] = []

    def __len__(self) -> int:
        return len(self._ids)

    def add(
        self,
        signal_type: str,
        hash_text: str,
        entry_id: str,
        tags: Iterable[str] = (),
        source: str = "",
    ) -> None:
        """Add one entry from text; ``hash_text`` is checked against ``signal_type``."""
        if signal_type not in SIGNAL_TYPES:
            raise HashError(
                f"unknown signal type {signal_type!r}; expected one of {list(SIGNAL_TYPES)}"
            )
        check_entry_id(entry_id)
        tag_tuple = tuple(dict.fromkeys(tags))
        if len(tag_tuple) > _MAX_TAGS:
            raise HashError(f"an entry has {len(tag_tuple)} tags, over the limit of {_MAX_TAGS}")
        for t in tag_tuple:
            check_tag(t)
        if len(source) > _MAX_SOURCE or any(c in source for c in "\t\r\n"):
            raise HashError(
                f"a source is at most {_MAX_SOURCE} characters without tabs or newlines"
            )
        if entry_id in self._ids:
            raise BankError(f"duplicate entry id {entry_id!r}")
        if len(self._ids) >= self.max_entries:
            raise BankError(f"over the limit of {self.max_entries} entries a bank")
        if signal_type == "vpdq":
            frames = parse_vpdq(hash_text)
            self._vpdq.append(
                BankEntry("vpdq", entry_id, frames=frames, tags=tag_tuple, source=source)
            )
        else:
            packed = parse_pdq(hash_text) if signal_type == "pdq" else parse_md5(hash_text)
            hashes, ids, tag_list, sources = self._cols[signal_type]
            hashes.append(packed.hex())
            ids.append(entry_id)
            tag_list.append(tag_tuple)
            sources.append(source)
        self._ids.add(entry_id)

    def add_entry(self, entry: BankEntry) -> None:
        self.add(entry.signal_type, entry.hash_text(), entry.entry_id, entry.tags, entry.source)

    def build(self, name: str, description: str = "") -> Bank:
        check_bank_name(name)
        if len(description) > _MAX_DESCRIPTION or any(c in description for c in "\r\n"):
            raise BankError(f"a description is one line of at most {_MAX_DESCRIPTION} characters")
        pdq = self._column("pdq", PDQ_BYTES)
        md5 = self._column("md5", 16)
        return Bank(name, description=description, pdq=pdq, md5=md5, vpdq=tuple(self._vpdq))

    def _column(self, signal_type: SignalType, nbytes: int) -> HashColumn:
        hexes, ids, tags, sources = self._cols[signal_type]
        # (N * nbytes,) -> (N, nbytes): every hex string was checked in add()
        flat = np.frombuffer(bytes.fromhex("".join(hexes)), dtype=np.uint8)
        hashes = flat.reshape(len(hexes), nbytes).copy()
        return HashColumn(signal_type, hashes, list(ids), list(tags), list(sources))


def check_bank_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise BankError(
            f"bank name {name!r} must be 1-100 characters of A-Z a-z 0-9 _ . - "
            "(not starting with _ . -)"
        )
    return name


def check_entry_id(entry_id: str) -> str:
    if not _ENTRY_ID.fullmatch(entry_id):
        raise HashError(
            f"entry id {entry_id[:80]!r} must be 1-200 characters of A-Z a-z 0-9 _ . : / -"
        )
    return entry_id


def check_tag(tag: str) -> str:
    if not _TAG.fullmatch(tag):
        raise HashError(f"tag {tag[:80]!r} must be 1-64 characters of A-Z a-z 0-9 _ . : / -")
    return tag


def bank_name_from_path(path: str | Path) -> str:
    """The bank name a file of ours holds: its name without ``.bank.tsv``."""
    name = Path(path).name
    if not name.endswith(BANK_SUFFIX):
        raise BankError(f"{path}: a bank file's name ends in {BANK_SUFFIX}")
    return check_bank_name(name[: -len(BANK_SUFFIX)])


# --------------------------------------------------------------------------------------------
# Reading and writing our format


def read_bank(
    path: str | Path, *, max_bytes: int = MAX_BANK_BYTES, max_entries: int = MAX_ENTRIES
) -> Bank:
    """Read a bank file of ours (format in the module docstring)."""
    from pipeline.decode.access import open_input_file

    p = Path(path)
    name = bank_name_from_path(p)
    try:
        # a regular file within the limit, opened non-blocking (a FIFO cannot hang a reload)
        f, _size = open_input_file(p, None, limit=max_bytes, label=str(p))
    except LimitExceeded as e:
        raise BankError(f"{p}: over the {max_bytes}-byte limit for a bank") from e
    except DecodeError as e:
        raise BankError(f"cannot read the bank: {e}") from e
    try:
        with f:
            return _parse(f, str(p), name, max_entries)
    except OSError as e:
        raise BankError(f"{p}: cannot read: {e.strerror or e}") from e


def _lines(f: IO[bytes], where: str) -> Iterator[tuple[int, str]]:
    """Numbered lines of UTF-8 text, each at most :data:`MAX_LINE_BYTES`."""
    for number, raw in enumerate(iter(lambda: f.readline(MAX_LINE_BYTES + 1), b""), start=1):
        if len(raw) > MAX_LINE_BYTES:
            raise BankError(f"{where}:{number}: line longer than {MAX_LINE_BYTES} bytes")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise BankError(f"{where}:{number}: not UTF-8 text ({e.reason})") from e
        yield number, text.rstrip("\r\n")


def _parse(f: IO[bytes], where: str, name: str, max_entries: int) -> Bank:
    lines = _lines(f, where)
    first = next(lines, None)
    if first is None or first[1].strip() != FORMAT_LINE:
        raise BankError(f"{where}:1: a bank file starts with the line {FORMAT_LINE!r}")
    description = ""
    builder = BankBuilder(max_entries=max_entries)
    header_seen = False
    for number, line in lines:
        if not header_seen:
            if line.startswith("#"):
                if line.startswith("# description:"):
                    description = line[len("# description:") :].strip()
                continue
            if tuple(line.split("\t")) != COLUMNS:
                raise BankError(
                    f"{where}:{number}: expected the column header {chr(9).join(COLUMNS)!r}"
                )
            header_seen = True
            continue
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != len(COLUMNS):
            raise BankError(
                f"{where}:{number}: expected {len(COLUMNS)} tab-separated fields, "
                f"found {len(fields)}"
            )
        signal_type, hash_text, entry_id, tags, source = fields
        try:
            builder.add(signal_type, hash_text, entry_id, _split_tags(tags), source)
        except HashError as e:
            raise BankError(f"{where}:{number}: {e}") from e
    if not header_seen:
        raise BankError(f"{where}: no column header line")
    try:
        return builder.build(name, description)
    except HashError as e:
        raise BankError(f"{where}: {e}") from e


def _split_tags(text: str) -> list[str]:
    return [t for t in (p.strip() for p in text.split(",")) if t]


def write_bank(bank: Bank, directory: str | Path) -> Path:
    """Write ``bank`` to ``directory/<name>.bank.tsv`` atomically (a temporary file renamed
    into place, so a live reader sees the old file or the new one, never half of one)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    target = d / f"{bank.name}{BANK_SUFFIX}"
    fd, tmp_name = tempfile.mkstemp(dir=d, prefix=f".{bank.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(FORMAT_LINE + "\n")
            if bank.description:
                f.write(f"# description: {bank.description}\n")
            f.write("\t".join(COLUMNS) + "\n")
            for e in bank.entries():
                f.write(
                    f"{e.signal_type}\t{e.hash_text()}\t{e.entry_id}\t{','.join(e.tags)}\t{e.source}\n"
                )
        tmp.replace(target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target
