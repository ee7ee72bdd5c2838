"""Import and export of hash banks in the formats ThreatExchange and HMA use.

=============  ==============================================================================
format         what it is
=============  ==============================================================================
``te-signals`` ThreatExchange's plain signal file: one ``<signal_type> <signal>`` a line. It is
               what python-threatexchange's ``LocalFileSignalExchangeAPI`` (the ``file``
               exchange, usable from HMA) reads and appends to, and what ``threatexchange hash``
               prints. Signal types ``pdq``, ``video_md5`` and ``vpdq`` (a JSON list of
               ``"hex,quality,timestamp"`` frame strings). The signal type may be left out of
               every line when the importer is told it (``signal_type=``), as in the exchange's
               ``signal_type`` setting. No ids or tags: an entry's id is derived from its hash.
``te-csv``     ThreatExchange's "simple" indicator CSV (``simple.<INDICATOR_TYPE>.te``), written
               by the ``threatexchange`` CLI (``CliIndicatorSerialization``: ``indicator,
               first_descriptor_id, added_on, labels``) and by HMA 1.x (``HMASerialization``:
               ``indicator, indicator_id, first_descriptor_id, added_on, labels``); no header,
               labels separated by spaces, the indicator type (``HASH_PDQ``, ``HASH_MD5``,
               ``HASH_VIDEO_MD5``) in the file name or given. Import reads both; export writes
               the HMA 1.x form (entry id as ``indicator_id``). No vPDQ.
``hma-json``   HMA 2.x (OpenMediaMatch) bank content, one JSON object a line: either the body
               of ``POST /c/bank/<bank>/signal`` (``{"pdq": "<hex>", "note": "..."}``) or the
               answer of ``GET /c/bank/<bank>/content/<id>?include_signals=true`` (``{"id":
               12, "signals": {"pdq": "..."}, "metadata": {"content_id": ..., "json":
               {...}}, "note": ...}``). HMA has no bank export file; this is what its API
               gives and takes. Export writes the ``POST .../signal`` body with the entry id as
               the ``note``, ready to send line by line. Tags are read from
               ``metadata.json.tags`` when present and are not exported (the endpoint has no
               place for them).
``vpdq-file``  The vPDQ reference hasher's output (``vpdq-hash-video``; the files under
               ``vpdq/sample-hashes``): ``frame_number,quality,hex,timestamp`` a line, one
               video. Imports as one ``vpdq`` entry named after the file; exports one entry.
=============  ==============================================================================

ThreatExchange's own names map to ours: ``video_md5`` / ``HASH_VIDEO_MD5`` / ``HASH_MD5`` to
``md5``, ``HASH_PDQ`` to ``pdq``. Every reader is bounded (file size, line length, entry count)
and every problem is a :class:`~pipeline.errors.BankError` with the file and line.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, Literal, get_args

from pipeline.errors import BankError, HashError
from pipeline.hashes.bank import (
    MAX_BANK_BYTES,
    MAX_ENTRIES,
    MAX_LINE_BYTES,
    Bank,
    BankBuilder,
    BankEntry,
)
from pipeline.hashes.signals import SignalType, parse_vpdq_frame

__all__ = [
    "FORMATS",
    "BankFormat",
    "export_bank",
    "import_bank",
    "te_csv_file_name",
]

BankFormat = Literal["te-signals", "te-csv", "hma-json", "vpdq-file"]
FORMATS: tuple[BankFormat, ...] = get_args(BankFormat)

# ThreatExchange / HMA signal type names and TE indicator types -> ours, and ours -> TE's
_TE_SIGNAL: dict[str, SignalType] = {"pdq": "pdq", "video_md5": "md5", "vpdq": "vpdq"}
_TO_TE_SIGNAL: dict[SignalType, str] = {"pdq": "pdq", "md5": "video_md5", "vpdq": "vpdq"}
_TE_INDICATOR: dict[str, SignalType] = {
    "HASH_PDQ": "pdq",
    "HASH_MD5": "md5",
    "HASH_VIDEO_MD5": "md5",
}
_TO_TE_INDICATOR: dict[SignalType, str] = {"pdq": "HASH_PDQ", "md5": "HASH_VIDEO_MD5"}
_TE_CSV_NAME = re.compile(r"simple\.([A-Z0-9_]+)\.te")


def import_bank(
    path: str | Path,
    fmt: BankFormat,
    *,
    name: str,
    description: str = "",
    signal_type: str | None = None,
    source: str | None = None,
    max_bytes: int = MAX_BANK_BYTES,
    max_entries: int = MAX_ENTRIES,
) -> Bank:
    """Read ``path`` in ``fmt`` (see the module docstring) into a bank called ``name``.

    ``signal_type`` is the ThreatExchange signal type (``te-signals``) or indicator type
    (``te-csv``) for files that do not say it; ``source`` is recorded on every entry (default:
    the format and file name).
    """
    if fmt not in FORMATS:
        raise BankError(f"unknown bank format {fmt!r}; expected one of {list(FORMATS)}")
    p = Path(path)
    src = source if source is not None else f"{fmt}:{p.name}"
    builder = BankBuilder(max_entries=max_entries)
    try:
        size = p.stat().st_size
        if size > max_bytes:
            raise BankError(f"{p}: {size} bytes is over the {max_bytes}-byte limit for a bank")
        with p.open("rb") as f:
            reader = _READERS[fmt]
            reader(_numbered_lines(f, str(p)), builder, str(p), signal_type, src)
    except OSError as e:
        raise BankError(f"{p}: cannot read: {e.strerror or e}") from e
    try:
        return builder.build(name, description)
    except HashError as e:
        raise BankError(f"{p}: {e}") from e


def export_bank(bank: Bank, path: str | Path, fmt: BankFormat) -> Path:
    """Write ``bank`` to ``path`` in ``fmt`` (atomically: a temporary file renamed into place).

    ``te-csv`` cannot hold vPDQ entries, and ``vpdq-file`` holds exactly one vPDQ entry: a bank
    that does not fit raises :class:`~pipeline.errors.BankError` before anything is written.
    """
    if fmt not in FORMATS:
        raise BankError(f"unknown bank format {fmt!r}; expected one of {list(FORMATS)}")
    entries = list(bank.entries())
    if fmt == "te-csv" and any(e.signal_type == "vpdq" for e in entries):
        raise BankError("the te-csv format has no vPDQ indicator type: export those as te-signals")
    if fmt == "te-csv" and len({e.signal_type for e in entries}) > 1:
        raise BankError(
            "a te-csv file holds one indicator type (its name says which): this bank has "
            "several; export it as te-signals or hma-json"
        )
    if fmt == "vpdq-file" and (len(entries) != 1 or entries[0].signal_type != "vpdq"):
        raise BankError("a vpdq-file holds exactly one vPDQ entry")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            _WRITERS[fmt](f, entries)
        tmp.replace(p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return p


# --------------------------------------------------------------------------------------------
# Readers: each gets numbered text lines and fills the builder, raising BankError with file:line

_Lines = Iterator[tuple[int, str]]


def _numbered_lines(f: IO[bytes], where: str) -> _Lines:
    for number, raw in enumerate(iter(lambda: f.readline(MAX_LINE_BYTES + 1), b""), start=1):
        if len(raw) > MAX_LINE_BYTES:
            raise BankError(f"{where}:{number}: line longer than {MAX_LINE_BYTES} bytes")
        try:
            text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as e:
            raise BankError(f"{where}:{number}: not UTF-8 text ({e.reason})") from e
        yield number, text.rstrip("\r\n")


def _derived_id(signal_type: SignalType, text: str) -> str:
    # formats without ids: a stable id from the hash itself, so re-imports keep entry ids
    return f"{signal_type}-{hashlib.sha256(text.encode()).hexdigest()[:20]}"


def _add(
    builder: BankBuilder,
    where: str,
    number: int,
    signal_type: SignalType,
    text: str,
    entry_id: str | None,
    tags: list[str],
    source: str,
) -> None:
    try:
        builder.add(signal_type, text, entry_id or _derived_id(signal_type, text), tags, source)
    except HashError as e:
        raise BankError(f"{where}:{number}: {e}") from e


def _te_vpdq_to_ours(text: str, where: str, number: int) -> str:
    # TE's vPDQ signal string: a JSON list of "hex,quality,timestamp" strings
    try:
        items = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise BankError(f"{where}:{number}: a vpdq signal is a JSON list of frames: {e}") from e
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise BankError(f"{where}:{number}: a vpdq signal is a JSON list of frame strings")
    return ";".join(items)


def _read_te_signals(
    lines: _Lines, builder: BankBuilder, where: str, default_type: str | None, source: str
) -> None:
    if default_type is not None and default_type not in _TE_SIGNAL:
        raise BankError(f"unknown ThreatExchange signal type {default_type!r}")
    seen: set[tuple[str, str]] = set()
    for number, line in lines:
        text = line.strip()
        if not text:
            continue
        if default_type is None:
            te_type, _, signal = text.partition(" ")
            signal = signal.strip()
        else:
            te_type, signal = default_type, text
        ours = _TE_SIGNAL.get(te_type)
        if ours is None:
            raise BankError(
                f"{where}:{number}: unknown signal type {te_type[:40]!r}; expected one of "
                f"{sorted(_TE_SIGNAL)}"
            )
        if ours == "vpdq":
            signal = _te_vpdq_to_ours(signal, where, number)
        key = (ours, signal.lower())
        if key in seen:  # the exchange keeps one of each (type, signal)
            continue
        seen.add(key)
        _add(builder, where, number, ours, signal, None, [], source)


def _read_te_csv(
    lines: _Lines, builder: BankBuilder, where: str, indicator_type: str | None, source: str
) -> None:
    kind = indicator_type
    if kind is None:
        m = _TE_CSV_NAME.fullmatch(Path(where).name)
        if m is None:
            raise BankError(
                f"{where}: cannot tell the indicator type: name the file "
                "simple.<INDICATOR_TYPE>.te or give the type"
            )
        kind = m.group(1)
    ours = _TE_INDICATOR.get(kind)
    if ours is None:
        raise BankError(
            f"{where}: unsupported indicator type {kind!r}; expected one of {sorted(_TE_INDICATOR)}"
        )
    for number, line in lines:
        if not line.strip():
            continue
        try:
            row = next(csv.reader(io.StringIO(line)))
        except csv.Error as e:
            raise BankError(f"{where}:{number}: bad CSV: {e}") from e
        if len(row) == 5:  # HMA 1.x: indicator, indicator_id, descriptor_id, added_on, labels
            indicator, entry_id, descriptor, added_on, labels = row
        elif len(row) == 4:  # threatexchange CLI: indicator, descriptor_id, added_on, labels
            indicator, descriptor, added_on, labels = row
            entry_id = descriptor
        else:
            raise BankError(f"{where}:{number}: expected 4 or 5 CSV fields, found {len(row)}")
        if not re.fullmatch(r"-?[0-9]{1,20}", descriptor.strip()):
            raise BankError(f"{where}:{number}: descriptor id {descriptor[:40]!r} is not a number")
        tags = labels.split()
        row_source = f"{source} descriptor:{descriptor.strip()}"
        if added_on.strip():
            row_source += f" added:{added_on.strip()[:64]}"
        _add(builder, where, number, ours, indicator, entry_id.strip(), tags, row_source)


def _read_hma_json(
    lines: _Lines, builder: BankBuilder, where: str, _type: str | None, source: str
) -> None:
    for number, line in lines:
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError) as e:
            raise BankError(f"{where}:{number}: not a JSON object: {e}") from e
        if not isinstance(obj, dict):
            raise BankError(f"{where}:{number}: expected a JSON object")
        signals, base_id, tags = _hma_fields(obj, where, number)
        for te_type, value in signals.items():
            ours = _TE_SIGNAL.get(te_type)
            if ours is None:
                raise BankError(f"{where}:{number}: unknown HMA signal type {te_type[:40]!r}")
            if not isinstance(value, str):
                raise BankError(f"{where}:{number}: the {te_type} signal is not a string")
            text = _te_vpdq_to_ours(value, where, number) if ours == "vpdq" else value
            entry_id = None
            if base_id is not None:
                entry_id = base_id if len(signals) == 1 else f"{base_id}.{ours}"
            _add(builder, where, number, ours, text, entry_id, tags, source)


def _hma_fields(
    obj: dict[str, Any], where: str, number: int
) -> tuple[dict[str, Any], str | None, list[str]]:
    """(signals, entry id or None, tags) of one HMA record in either shape."""
    if "signals" in obj:  # GET /c/bank/<bank>/content/<id>
        signals = obj["signals"]
        if not isinstance(signals, dict) or not signals:
            raise BankError(f"{where}:{number}: 'signals' is an object of signal type -> hash")
        meta = obj.get("metadata") or {}
        if not isinstance(meta, dict):
            raise BankError(f"{where}:{number}: 'metadata' is an object")
        content_id = meta.get("content_id")
        base_id = str(content_id) if isinstance(content_id, str) and content_id else None
        if base_id is None and isinstance(obj.get("id"), int):
            base_id = f"hma-{obj['id']}"
        extra = meta.get("json") or {}
        raw_tags = extra.get("tags", []) if isinstance(extra, dict) else []
        if not isinstance(raw_tags, list) or not all(isinstance(t, str) for t in raw_tags):
            raise BankError(f"{where}:{number}: metadata.json.tags is a list of strings")
        return signals, base_id, raw_tags
    # POST /c/bank/<bank>/signal: signal types -> hashes, and an optional note
    body = dict(obj)
    note = body.pop("note", None)
    if not body:
        raise BankError(f"{where}:{number}: no signals in the record")
    if note is not None and not isinstance(note, str):
        raise BankError(f"{where}:{number}: 'note' is a string")
    return body, note or None, []


def _read_vpdq_file(
    lines: _Lines, builder: BankBuilder, where: str, _type: str | None, source: str
) -> None:
    frames: list[str] = []
    for number, line in lines:
        if not line.strip():
            continue
        parts = line.strip().split(",")
        if len(parts) != 4 or not parts[0].isdigit():
            raise BankError(
                f"{where}:{number}: expected 'frame_number,quality,hex,timestamp', "
                f"found {line[:80]!r}"
            )
        compact = f"{parts[2]},{parts[1]},{parts[3]}"
        try:
            parse_vpdq_frame(compact)
        except HashError as e:
            raise BankError(f"{where}:{number}: {e}") from e
        frames.append(compact)
    if not frames:
        raise BankError(f"{where}: no frames")
    stem = Path(where).name.split(".")[0]
    entry_id = re.sub(r"[^A-Za-z0-9_.:/-]", "_", stem)[:200] or "video"
    _add(builder, where, 1, "vpdq", ";".join(frames), entry_id, [], source)


_READERS: dict[str, Callable[[_Lines, BankBuilder, str, str | None, str], None]] = {
    "te-signals": _read_te_signals,
    "te-csv": _read_te_csv,
    "hma-json": _read_hma_json,
    "vpdq-file": _read_vpdq_file,
}


# --------------------------------------------------------------------------------------------
# Writers


def _te_signal_text(e: BankEntry) -> str:
    if e.signal_type == "vpdq":
        return json.dumps([str(f) for f in e.frames])
    return e.hash.hex()


def _write_te_signals(f: IO[str], entries: list[BankEntry]) -> None:
    for e in entries:
        f.write(f"{_TO_TE_SIGNAL[e.signal_type]} {_te_signal_text(e)}\n")


def _write_te_csv(f: IO[str], entries: list[BankEntry]) -> None:
    writer = csv.writer(f, lineterminator="\n")
    for e in entries:
        descriptor = e.entry_id if e.entry_id.isdigit() else "0"
        writer.writerow([e.hash.hex(), e.entry_id, descriptor, "", " ".join(e.tags)])


def _write_hma_json(f: IO[str], entries: list[BankEntry]) -> None:
    for e in entries:
        # entry ids (at most 200 characters) fit HMA's 255-character notes
        body = {_TO_TE_SIGNAL[e.signal_type]: _te_signal_text(e), "note": e.entry_id}
        f.write(json.dumps(body) + "\n")


def _write_vpdq_file(f: IO[str], entries: list[BankEntry]) -> None:
    for i, frame in enumerate(entries[0].frames):
        f.write(f"{i},{frame.quality},{frame.pdq.hex()},{frame.timestamp:.3f}\n")


_WRITERS: dict[str, Callable[[IO[str], list[BankEntry]], None]] = {
    "te-signals": _write_te_signals,
    "te-csv": _write_te_csv,
    "hma-json": _write_hma_json,
    "vpdq-file": _write_vpdq_file,
}


def te_csv_file_name(signal_type: SignalType) -> str:
    """The file name ThreatExchange's CLI gives a te-csv file of ``signal_type``."""
    if signal_type not in _TO_TE_INDICATOR:
        raise BankError(f"te-csv has no indicator type for {signal_type}")
    return f"simple.{_TO_TE_INDICATOR[signal_type]}.te"
