"""Batch scanning of stored video: inputs, the scanner, its output folder and HTML report.

- :mod:`pipeline.scan.inputs`: command-line arguments to inputs (files, folders, URLs, lists);
- :mod:`pipeline.scan.scanner`: decode, encode and judge every input, overlapped;
- :mod:`pipeline.scan.outputs`: the output folder (records, summary, thumbnails) and resuming;
- :mod:`pipeline.scan.report`: the self-contained HTML report of a scan.
"""

from pipeline.scan.inputs import LIST_SUFFIXES, ScanInput, discover, file_sha256
from pipeline.scan.scanner import PERMANENT_ERRORS, FileScan, Scanner, ScanOptions, content_key

__all__ = [
    "LIST_SUFFIXES",
    "PERMANENT_ERRORS",
    "FileScan",
    "ScanInput",
    "ScanOptions",
    "Scanner",
    "content_key",
    "discover",
    "file_sha256",
]
