"""Known-content matching: perceptual (PDQ, vPDQ) and file (MD5) hashes, hash banks, matching.

One module an idea, in the order data flows:

* :mod:`~pipeline.hashes.signals`: signal types and their text forms (ThreatExchange's);
* :mod:`~pipeline.hashes.pdq`: PDQ hash and quality of an RGB frame, and its 8 dihedral variants;
* :mod:`~pipeline.hashes.md5`: MD5 of whole files in bounded memory;
* :mod:`~pipeline.hashes.files`: hashing picture and video files for banks;
* :mod:`~pipeline.hashes.bank`: banks and clipguard's bank file format;
* :mod:`~pipeline.hashes.formats`: import and export in ThreatExchange and HMA formats;
* :mod:`~pipeline.hashes.index`: exact Hamming range search (multi-index hashing);
* :mod:`~pipeline.hashes.match`: frames and files against banks;
* :mod:`~pipeline.hashes.video`: vPDQ comparison of whole videos and stream windows;
* :mod:`~pipeline.hashes.store`: the live bank set, reloaded when files change.

The ``kind: hash`` policy that names banks is part of the policy format
(:class:`pipeline.policies.schema.HashPolicy`); :mod:`pipeline.policies.hashing` judges frames
and files with it, and the decode stage hashes sampled frames (:mod:`pipeline.decode.hashing`).

Importing the package is cheap: each name loads its module on first use (the matching index
pulls in numba, and so does PDQ), so the command line's help stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.hashes.bank import Bank, BankBuilder, BankEntry, read_bank, write_bank
    from pipeline.hashes.formats import FORMATS, BankFormat, export_bank, import_bank
    from pipeline.hashes.index import PdqIndex, RangeResult, brute_force_search
    from pipeline.hashes.match import FrameResult, HashMatch, IndexedBank, Matcher
    from pipeline.hashes.md5 import md5_file, md5_stream
    from pipeline.hashes.pdq import DIHEDRAL_NAMES, DihedralHashes, PdqHash, pdq_dihedral, pdq_hash
    from pipeline.hashes.signals import SIGNAL_TYPES, SignalType, VpdqFrame, hamming
    from pipeline.hashes.store import BankSnapshot, BankStore
    from pipeline.hashes.video import (
        StreamWindow,
        VideoMatch,
        VideoMatcher,
        VpdqComparison,
        vpdq_compare,
    )

__all__ = [
    "DIHEDRAL_NAMES",
    "FORMATS",
    "SIGNAL_TYPES",
    "Bank",
    "BankBuilder",
    "BankEntry",
    "BankFormat",
    "BankSnapshot",
    "BankStore",
    "DihedralHashes",
    "FrameResult",
    "HashMatch",
    "IndexedBank",
    "Matcher",
    "PdqHash",
    "PdqIndex",
    "RangeResult",
    "SignalType",
    "StreamWindow",
    "VideoMatch",
    "VideoMatcher",
    "VpdqComparison",
    "VpdqFrame",
    "brute_force_search",
    "export_bank",
    "hamming",
    "import_bank",
    "md5_file",
    "md5_stream",
    "pdq_dihedral",
    "pdq_hash",
    "read_bank",
    "vpdq_compare",
    "write_bank",
]

_MODULES = {
    "DIHEDRAL_NAMES": "pipeline.hashes.pdq",
    "FORMATS": "pipeline.hashes.formats",
    "SIGNAL_TYPES": "pipeline.hashes.signals",
    "Bank": "pipeline.hashes.bank",
    "BankBuilder": "pipeline.hashes.bank",
    "BankEntry": "pipeline.hashes.bank",
    "BankFormat": "pipeline.hashes.formats",
    "BankSnapshot": "pipeline.hashes.store",
    "BankStore": "pipeline.hashes.store",
    "DihedralHashes": "pipeline.hashes.pdq",
    "FrameResult": "pipeline.hashes.match",
    "HashMatch": "pipeline.hashes.match",
    "IndexedBank": "pipeline.hashes.match",
    "Matcher": "pipeline.hashes.match",
    "PdqHash": "pipeline.hashes.pdq",
    "PdqIndex": "pipeline.hashes.index",
    "RangeResult": "pipeline.hashes.index",
    "SignalType": "pipeline.hashes.signals",
    "StreamWindow": "pipeline.hashes.video",
    "VideoMatch": "pipeline.hashes.video",
    "VideoMatcher": "pipeline.hashes.video",
    "VpdqComparison": "pipeline.hashes.video",
    "VpdqFrame": "pipeline.hashes.signals",
    "brute_force_search": "pipeline.hashes.index",
    "export_bank": "pipeline.hashes.formats",
    "hamming": "pipeline.hashes.signals",
    "import_bank": "pipeline.hashes.formats",
    "md5_file": "pipeline.hashes.md5",
    "md5_stream": "pipeline.hashes.md5",
    "pdq_dihedral": "pipeline.hashes.pdq",
    "pdq_hash": "pipeline.hashes.pdq",
    "read_bank": "pipeline.hashes.bank",
    "vpdq_compare": "pipeline.hashes.video",
    "write_bank": "pipeline.hashes.bank",
}


def __getattr__(name: str) -> Any:
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
