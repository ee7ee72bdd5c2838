"""Reading PyTorch ``.pt`` files without running what they carry.

A ``.pt`` file is a pickle (or a zip of pickles), and a pickle can name any callable to be run
when it is read. Two kinds are read here, and nothing else:

- plain state dicts (``torch.save(model.state_dict())``, open_clip checkpoints), always with
  ``torch.load(weights_only=True)``: PyTorch's restricted unpickler builds tensors, containers
  and numbers only, and refuses a pickle that names anything else;
- TorchScript archives (OpenAI's released ``.pt`` files), which only ``torch.jit.load`` reads,
  and which run the TorchScript code they carry. One is read **only when its SHA-256 is one the
  registry publishes** (:func:`~pipeline.models.registry.registry_archive_digests`); any other
  raises :class:`~pipeline.errors.UntrustedWeights` before TorchScript sees a byte. The archive
  is read into memory once, hashed, and loaded from those same bytes, so the file cannot be
  swapped between the check and the load.

Anything that looks like a TorchScript archive (a zip with a ``constants.pkl`` or a ``code/``
folder) counts as one; anything else goes to the restricted unpickler, which refuses what it
does not know. Workers are meant to load safetensors only: ``clipguard models download``
converts OpenAI archives at download time and ``clipguard models convert`` converts files
people already have (:mod:`pipeline.models.to_safetensors`).
"""

from __future__ import annotations

import hashlib
import io
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Final

import torch

from pipeline.errors import UntrustedWeights, WeightsFormatError
from pipeline.models.registry import registry_archive_digests

__all__ = ["MAX_ARCHIVE_BYTES", "is_torchscript", "read_archive", "read_pickled"]

#: The largest archive read into memory (OpenAI's largest release, RN50x64, is 1.26 GB).
MAX_ARCHIVE_BYTES: Final = 4 << 30


def is_torchscript(path: Path) -> bool:
    """Whether ``path`` is (or pretends to be) a TorchScript archive: a zip holding a
    ``constants.pkl`` or a ``code/`` folder."""
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return False
    return any(n.endswith("constants.pkl") or "/code/" in n or n.startswith("code/") for n in names)


def read_archive(path: Path, *, trusted: frozenset[str] | None = None) -> tuple[Any, str]:
    """The module in TorchScript archive ``path`` and the archive's SHA-256, if that SHA-256 is
    in ``trusted`` (the registry's archives when None); else :class:`UntrustedWeights`."""
    size = path.stat().st_size
    if size > MAX_ARCHIVE_BYTES:
        raise WeightsFormatError(
            f"{path}: {size} bytes is over the {MAX_ARCHIVE_BYTES} bytes a TorchScript archive "
            "may have"
        )
    data = path.read_bytes()  # hashed and loaded from the same bytes (no swap in between)
    digest = hashlib.sha256(data).hexdigest()
    allowed = registry_archive_digests() if trusted is None else trusted
    if digest not in allowed:
        raise UntrustedWeights(
            f"{path} is a TorchScript archive with SHA-256 {digest}, which is not a release "
            "in clipguard's registry. Reading a TorchScript archive runs the code inside it, so "
            "clipguard reads only the archives whose SHA-256 the registry publishes (`clipguard "
            "models list --json` shows them) and never an unknown one. Save the weights as a "
            "state dict (torch.save(model.state_dict(), path)) or as safetensors, and load that"
        )
    module = torch.jit.load(io.BytesIO(data), map_location="cpu")  # type: ignore[no-untyped-call]
    return module, digest


def read_pickled(path: Path) -> Any:
    """A plain ``torch.save`` file read with ``weights_only=True``: tensors, containers and
    numbers only; a pickle naming anything else is refused, never run."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        named = _GLOBAL.search(text)
        if named is not None:  # the pickle names a callable: never run it
            raise UntrustedWeights(
                f"{path}: refused: the pickle names code ({named.group(1)}) that reading it "
                "would run; clipguard reads pickles only with PyTorch's weights-only reader "
                "(tensors, containers, numbers). Save the weights as a state dict "
                "(torch.save(model.state_dict(), path)) or as safetensors"
            ) from None
        found = _DETAIL.search(text)
        detail = found.group(1).strip()[:300] if found else type(e).__name__
        raise WeightsFormatError(
            f"{path}: not a plain PyTorch state dict that the weights-only reader accepts "
            f"({detail})"
        ) from None


# what PyTorch's weights-only reader says it refused (its message's wording varies by version)
_GLOBAL: Final = re.compile(r"GLOBAL\s+([\w.]+)")
_DETAIL: Final = re.compile(r"WeightsUnpickler error:\s*([^\n]+)")
