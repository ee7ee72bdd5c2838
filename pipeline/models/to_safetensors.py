"""PyTorch weights converted to safetensors once, so that workers never unpickle or run one.

safetensors holds tensors and string metadata and nothing that runs, so a worker that loads
only safetensors runs no code from a weights file. ``.pt`` files are converted:

- at download: :func:`convert_registry_archive` turns an OpenAI TorchScript archive (its
  SHA-256 already checked against the registry) into ``ModelInfo.path()`` (``ViT-B-32.pt`` ->
  ``ViT-B-32.safetensors``) and writes a record beside it (``ViT-B-32.safetensors.source.json``:
  the archive's SHA-256, the converted file's SHA-256 and size);
- by ``clipguard models convert``: :func:`convert_file`, for a ``.pt`` someone already has (a
  registry archive goes into the cache as if downloaded; anything else beside the file).

At load, :func:`converted_sha256` reads the record: the converted file must come from the
registry's archive, and its SHA-256 (checked by :func:`~pipeline.models.integrity.verified_sha256`,
remembered by size and mtime) must be the recorded one. The record and the file's metadata
(``clipguard.source_sha256``) both name the archive. Whoever can write the cache can write both,
but can then only change weights, never run code; mount the cache read-only in workers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import torch

from pipeline.errors import ChecksumMismatch, ConfigError, WeightsFormatError
from pipeline.models.configs import CLIPConfig
from pipeline.models.formats import _is_safetensors, read_state_dict
from pipeline.models.integrity import verified_sha256
from pipeline.models.registry import ModelInfo, list_models

__all__ = [
    "SOURCE_KEY",
    "Conversion",
    "convert_file",
    "convert_registry_archive",
    "converted_sha256",
    "record_path",
    "registry_conversion_ok",
]

_log = logging.getLogger(__name__)

#: Metadata key of a converted file naming the SHA-256 of the file it was converted from.
SOURCE_KEY: Final = "clipguard.source_sha256"
_CONVERTER: Final = 1  # bump when the conversion changes
_MAX_RECORD_BYTES: Final = 64 * 1024


@dataclass(frozen=True)
class Conversion:
    """One file converted: where from, where to, and as which registry model (if any)."""

    source: Path
    source_sha256: str
    source_format: str  # "openai-torchscript" or "state-dict"
    path: Path  # the safetensors file written
    sha256: str  # of the safetensors file
    model: str | None  # the registry model the source is, if it is one


def record_path(converted: Path) -> Path:
    """Where the record of a registry conversion lies: beside the converted file."""
    return converted.with_name(f"{converted.name}.source.json")


def convert_registry_archive(info: ModelInfo, archive: Path) -> Conversion:
    """Convert registry model ``info``'s downloaded archive into ``info.path()`` with its
    record. The archive is read only if its SHA-256 is ``info``'s (checked on the bytes read)."""
    raw = read_state_dict(archive)
    if raw.archive_sha256 != info.sha256.lower():
        raise ChecksumMismatch(
            f"{archive}: SHA-256 {raw.archive_sha256 or '(not a TorchScript archive)'} is not "
            f"the registry's {info.sha256} for {info.name}"
        )
    return _write_registry(info, archive, raw.state_dict, info.path())


def convert_file(source: Path, out: Path | None = None) -> Conversion:
    """Convert a ``.pt`` file (state dict, or a registry TorchScript archive) to safetensors.

    A registry archive goes to its cache path with a record (so a worker can load the model by
    name) unless ``out`` is given; anything else to ``out``, else beside ``source`` with the
    suffix ``.safetensors``. An unknown TorchScript archive raises
    :class:`~pipeline.errors.UntrustedWeights` before it is read; a pickle is read only with
    ``weights_only=True``."""
    source = Path(source)
    if not source.is_file():
        raise ConfigError(f"no file at {source}")
    if _is_safetensors(source):
        raise ConfigError(f"{source} is safetensors already: there is nothing to convert")
    raw = read_state_dict(source)
    if raw.archive_sha256 is not None:
        info = _registry_archive(raw.archive_sha256)
        if out is None:
            return _write_registry(info, source, raw.state_dict, info.path())
        digest, fmt = raw.archive_sha256, raw.format
    else:
        info, digest, fmt = None, verified_sha256(source, None, remember=False), raw.format
    target = Path(out) if out is not None else source.with_suffix(".safetensors")
    _check_target(source, target)
    meta = _metadata(info, digest, fmt)
    sha = _write(raw.state_dict, target, meta)
    return Conversion(source, digest, fmt, target, sha, info.name if info else None)


def converted_sha256(info: ModelInfo) -> str:
    """The SHA-256 the converted file of registry archive ``info`` must have, from its record;
    :class:`ChecksumMismatch` when there is no record or it names another archive."""
    path = info.path()
    record = record_path(path)
    try:
        if record.stat().st_size > _MAX_RECORD_BYTES:
            raise ValueError("too large")
        data = json.loads(record.read_text(encoding="utf-8"))
        source, sha = str(data["source_sha256"]), str(data["sha256"])
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise ChecksumMismatch(
            f"{path}: no readable record of the archive it was converted from ({record}: {e}); "
            f"convert it again with `clipguard models download {info.name}`"
        ) from e
    if source != info.sha256.lower():
        raise ChecksumMismatch(
            f"{path} was converted from an archive with SHA-256 {source}, not the registry's "
            f"{info.sha256} for {info.name}; convert it again with `clipguard models download "
            f"{info.name} --force`"
        )
    return sha


def registry_conversion_ok(info: ModelInfo) -> bool:
    """Whether ``info.path()`` holds a verified conversion of the registry's archive."""
    if not info.path().is_file():
        return False
    try:
        verified_sha256(info.path(), converted_sha256(info))
    except (ChecksumMismatch, OSError) as e:
        _log.warning("%s: %s; converting it again", info.name, e)
        return False
    return True


def _registry_archive(digest: str) -> ModelInfo:
    for info in list_models():
        if info.is_archive and info.sha256.lower() == digest:
            return info
    raise WeightsFormatError(f"no registry model has the archive SHA-256 {digest}")


def _check_target(source: Path, target: Path) -> None:
    if target.resolve() == source.resolve():
        raise ConfigError(f"{target} is the file being converted: choose another --out")
    if target.exists() and not target.is_file():
        raise ConfigError(f"cannot write {target}: it exists and is not a regular file")


def _metadata(info: ModelInfo | None, source_sha256: str, source_format: str) -> dict[str, str]:
    meta = {
        "format": "pt",
        SOURCE_KEY: source_sha256,
        "clipguard.source_format": source_format,
        "clipguard.converter": str(_CONVERTER),
    }
    if info is not None and isinstance(info.config, CLIPConfig):  # what the shapes cannot say
        meta["clip.vision_heads"] = str(info.config.vision.heads)
        meta["clip.text_heads"] = str(info.config.text.heads)
        meta["clip.activation"] = info.config.activation
    return meta


def _write_registry(
    info: ModelInfo, source: Path, state_dict: dict[str, torch.Tensor], target: Path
) -> Conversion:
    _check_target(source, target)
    digest = info.sha256.lower()
    sha = _write(state_dict, target, _metadata(info, digest, "openai-torchscript"))
    record = {
        "converter": _CONVERTER,
        "model": info.name,
        "source_file": info.filename,
        "source_sha256": digest,
        "sha256": sha,
        "size": target.stat().st_size,
    }
    _atomic_text(record_path(target), json.dumps(record, indent=2) + "\n")
    _log.info("converted %s (%s) to %s (SHA-256 %s)", info.name, source, target, sha)
    return Conversion(source, digest, "openai-torchscript", target, sha, info.name)


def _write(state_dict: dict[str, torch.Tensor], target: Path, meta: dict[str, str]) -> str:
    """Write ``state_dict`` as safetensors to ``target`` atomically; its SHA-256 (remembered
    beside it by size and mtime)."""
    from safetensors.torch import save_file

    # own storage per tensor: safetensors refuses tensors that share memory
    tensors = {k: v.detach().contiguous().clone() for k, v in state_dict.items()}
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
    try:
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    return verified_sha256(target, None)


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
