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
* :mod:`~pipeline.hashes.store`: the live bank set, reloaded when files change;
* :mod:`~pipeline.hashes.policy`: the ``kind: hash`` policy's settings.
"""

from __future__ import annotations

from pipeline.hashes.bank import Bank, BankBuilder, BankEntry, read_bank, write_bank
from pipeline.hashes.formats import FORMATS, BankFormat, export_bank, import_bank
from pipeline.hashes.index import PdqIndex, RangeResult, brute_force_search
from pipeline.hashes.match import FrameResult, HashMatch, IndexedBank, Matcher
from pipeline.hashes.md5 import md5_file, md5_stream
from pipeline.hashes.pdq import DIHEDRAL_NAMES, DihedralHashes, PdqHash, pdq_dihedral, pdq_hash
from pipeline.hashes.policy import HashPolicy, VideoMatching
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
    "HashPolicy",
    "IndexedBank",
    "Matcher",
    "PdqHash",
    "PdqIndex",
    "RangeResult",
    "SignalType",
    "StreamWindow",
    "VideoMatch",
    "VideoMatcher",
    "VideoMatching",
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
