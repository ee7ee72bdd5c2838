"""vPDQ's reference hasher (Meta's C++ through its Python bindings), for the tests that compare
with it.

It is in the test extra, built from source against FFmpeg's development libraries, which
``make test`` installs when they are missing. Where it could not be installed (no apt-get, not
root) its tests skip and say why, except under CI, where they fail: CI must run them.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest

__all__ = ["need_vpdq"]


def need_vpdq() -> ModuleType:
    """The ``vpdq`` module; skips the test when it is not installed (fails under CI)."""
    if os.environ.get("CI"):
        return importlib.import_module("vpdq")
    return pytest.importorskip(
        "vpdq", reason="vpdq not installed (`make venv` builds it; it needs FFmpeg's headers)"
    )
