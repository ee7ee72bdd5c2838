"""open_clip (and timm) as parity references, importable on a CPU build of torch.

open_clip imports torchvision at import time, for its image transforms and one batch-norm
class; its model classes (the towers and their forward passes, which the parity tests compare
against) never call it. torchvision's wheels on PyPI are CUDA builds whose compiled extension
does not load beside the CPU build of torch used here ("operator torchvision::nms does not
exist"), and a broken torchvision in the environment also breaks ``transformers``. So
torchvision is not installed, and while open_clip is imported, a stand-in answers for it: every
attribute is a class that raises when instantiated. The stand-in is removed again once
open_clip is imported, so nothing else in the test run sees it. Where a working torchvision is
installed, it is used instead.
"""

from __future__ import annotations

import enum
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
from typing import Any

import pytest

__all__ = ["import_open_clip"]


class _Unavailable:
    def __init__(self, *args: object, **kwargs: object) -> None:
        raise RuntimeError("torchvision is not installed: this part of open_clip is unavailable")


class _StandInModule(types.ModuleType):
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        if name == "InterpolationMode":  # used as enum members in default arguments
            return enum.Enum(name, "NEAREST BILINEAR BICUBIC BOX HAMMING LANCZOS NEAREST_EXACT")
        return type(name, (_Unavailable,), {})


class _StandInFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname == "torchvision" or fullname.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = _StandInModule(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        pass


def import_open_clip() -> Any:
    """``open_clip``, or a pytest skip saying why it cannot be imported."""
    if "open_clip" in sys.modules:
        return sys.modules["open_clip"]
    if importlib.util.find_spec("open_clip") is None or importlib.util.find_spec("timm") is None:
        pytest.skip("open_clip_torch and timm are not installed (make venv installs them)")
    if importlib.util.find_spec("torchvision") is not None:
        try:
            import open_clip  # uses the real torchvision

            return open_clip
        except Exception as e:  # a CUDA torchvision beside a CPU torch fails to import
            pytest.skip(f"open_clip cannot be imported with the installed torchvision: {e}")
    finder = _StandInFinder()
    sys.meta_path.insert(0, finder)
    try:
        import open_clip
    finally:
        sys.meta_path.remove(finder)
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
    return open_clip
