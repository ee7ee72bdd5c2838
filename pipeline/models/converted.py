"""The converted-model cache: image towers converted for a CPU runtime, once per host.

One folder per (model name, weights SHA-256, precision, runtime version) under
:func:`converted_dir` (``$CLIPGUARD_CONVERTED_DIR``, else ``converted/`` beside the weights
cache), holding the runtime's files and ``figures.json``: what was converted, how long it took,
and the accuracy guard's figures for every validation set it was checked on. A folder is built
in a temporary folder and renamed into place, under a file lock, so several workers starting
together on one host convert once and never see half a model; a crashed conversion leaves only
a temporary folder, which the next one removes. :func:`list_converted` lists the folders with
their figures (for ``clipguard models list``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from pipeline.errors import ModelError
from pipeline.models.guard import GuardReport
from pipeline.models.registry import cache_dir

__all__ = [
    "ConvertedModel",
    "converted_dir",
    "ensure_converted",
    "entry_name",
    "find_converted",
    "list_converted",
    "locked",
    "record_check",
]

_log = logging.getLogger(__name__)
_FORMAT = 1  # bump when the folder layout changes: old folders are then ignored
_FIGURES = "figures.json"
_MAX_FIGURES_BYTES = 1 << 20
_MAX_CHECKS = 16  # guard verdicts kept per folder (one per validation set seen)
LOCK_TIMEOUT_S = 3600.0  # a conversion of a large tower on a small CPU takes minutes


def converted_dir() -> Path:
    """``$CLIPGUARD_CONVERTED_DIR``, else ``converted/`` beside the weights cache."""
    override = os.environ.get("CLIPGUARD_CONVERTED_DIR")
    return Path(override).expanduser() if override else cache_dir().parent / "converted"


def _slug(text: str) -> str:
    """Safe in a file name; the end of a long text is kept (a path's file name)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text)[-48:].strip("-.") or "model"


def entry_name(name: str, weights_sha256: str, precision: str, runtime_version: str) -> str:
    """The folder name of one conversion: every part of the key, readable."""
    if not re.fullmatch(r"[0-9a-f]{64}", weights_sha256):
        raise ModelError(f"weights SHA-256 must be 64 hex digits, not {weights_sha256!r}")
    return "-".join([_slug(name), weights_sha256[:16], precision, _slug(runtime_version)])


@dataclass(frozen=True)
class ConvertedModel:
    """One folder of the converted-model cache and what ``figures.json`` says about it."""

    path: Path
    name: str  # model name (registry name, or the weights path it was loaded from)
    weights_sha256: str
    precision: str
    backend: str
    runtime_version: str
    conversion_s: float  # how long the conversion took
    created: float  # Unix time
    checks: tuple[GuardReport, ...]  # the guard's figures, one per validation set

    def check(self, digest: str) -> GuardReport | None:
        """The guard's figures for the validation set with ``digest``, if measured."""
        return next((c for c in self.checks if c.digest == digest), None)


def _read(path: Path) -> ConvertedModel | None:
    fig = path / _FIGURES
    try:
        if fig.stat().st_size > _MAX_FIGURES_BYTES:
            raise ValueError(f"larger than {_MAX_FIGURES_BYTES} bytes")
        data = json.loads(fig.read_text())
        if data.get("format") != _FORMAT:
            return None
        return ConvertedModel(
            path=path,
            name=str(data["name"]),
            weights_sha256=str(data["weights_sha256"]),
            precision=str(data["precision"]),
            backend=str(data["backend"]),
            runtime_version=str(data["runtime_version"]),
            conversion_s=float(data["conversion_s"]),
            created=float(data["created"]),
            checks=tuple(GuardReport.from_json(c) for c in data.get("checks", [])),
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:  # unreadable: converted again
        _log.warning("ignoring unreadable converted model %s: %s", path, e)
        return None


def _write_figures(path: Path, data: dict[str, Any]) -> None:
    tmp = path / f"{_FIGURES}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path / _FIGURES)


@contextmanager
def locked(entry: Path, *, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold the host-wide lock of one cache folder (a ``.lock`` file beside it)."""
    lock = FileLock(str(entry.with_name(entry.name + ".lock")), timeout=timeout)
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except Timeout as e:
        raise ModelError(
            f"waited {timeout:.0f} s for another process converting {entry.name}; "
            f"remove {lock.lock_file} if no clipguard process is running"
        ) from e
    except OSError as e:
        raise ModelError(
            f"cannot write the converted-model cache {entry.parent}: {e}; point "
            "CLIPGUARD_CONVERTED_DIR at a writable folder"
        ) from e
    try:
        yield
    finally:
        lock.release()


def find_converted(
    root: Path, name: str, *, weights_sha256: str, precision: str, runtime_version: str
) -> ConvertedModel | None:
    """The complete cache folder for this key, if there is one (no lock needed: a folder
    appears whole, by a rename)."""
    return _read(root / entry_name(name, weights_sha256, precision, runtime_version))


def ensure_converted(
    root: Path,
    name: str,
    *,
    weights_sha256: str,
    precision: str,
    backend: str,
    runtime_version: str,
    convert: Callable[[Path], None],
) -> tuple[ConvertedModel, bool]:
    """The cache folder for this key, converted by ``convert(folder)`` if it is not there yet.

    Returns the folder and whether this call converted it. The caller must hold
    :func:`locked` on the folder (so that a guard verdict can be recorded under the same lock).
    """
    entry = root / entry_name(name, weights_sha256, precision, runtime_version)
    if (done := _read(entry)) is not None:
        return done, False
    for stale in root.glob(f".{entry.name}.*.tmp"):  # left by a crashed conversion
        shutil.rmtree(stale, ignore_errors=True)
    if entry.exists():  # unreadable figures: convert again
        shutil.rmtree(entry)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", suffix=".tmp", dir=root))
    try:
        start = time.perf_counter()
        convert(tmp)
        _write_figures(
            tmp,
            {
                "format": _FORMAT,
                "name": name,
                "weights_sha256": weights_sha256,
                "precision": precision,
                "backend": backend,
                "runtime_version": runtime_version,
                "conversion_s": round(time.perf_counter() - start, 3),
                "created": time.time(),
                "checks": [],
            },
        )
        tmp.rename(entry)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    converted = _read(entry)
    if converted is None:
        raise ModelError(f"converted model {entry} cannot be read back")
    return converted, True


def record_check(entry: ConvertedModel, report: GuardReport) -> ConvertedModel:
    """Store the guard's figures for one validation set beside the converted model (the
    caller holds :func:`locked`); the newest :data:`_MAX_CHECKS` sets are kept."""
    data = json.loads((entry.path / _FIGURES).read_text())
    checks = [c for c in data.get("checks", []) if c.get("digest") != report.digest]
    data["checks"] = [*checks, report.to_json()][-_MAX_CHECKS:]
    _write_figures(entry.path, data)
    updated = _read(entry.path)
    if updated is None:
        raise ModelError(f"converted model {entry.path} cannot be read back")
    return updated


def list_converted(root: Path | None = None) -> list[ConvertedModel]:
    """Every converted model in the cache, by name then precision."""
    root = root or converted_dir()
    if not root.is_dir():
        return []
    found = [
        m
        for p in root.iterdir()
        if p.is_dir() and not p.name.startswith(".") and (m := _read(p)) is not None
    ]
    return sorted(found, key=lambda m: (m.name, m.precision, m.runtime_version))
