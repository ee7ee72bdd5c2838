"""``clipguard models {list,download,convert}``: the CLIP models clipguard knows, and their
weights (OpenAI's TorchScript archives converted to safetensors, the only form workers load)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any, TextIO

from consumers.cli.common import add_command, add_group, print_table

__all__ = ["add_parser"]

_log = logging.getLogger(__name__)

_EPILOG = """\
examples:
  clipguard models list
  clipguard models list --json
  clipguard models list --json --converted
  clipguard models download ViT-B/32
  clipguard models download RN50 --force
  clipguard models convert ~/.cache/clip/ViT-B-32.pt
  clipguard models convert finetuned.pt --out finetuned.safetensors
"""


def add_parser(subparsers: Any) -> None:
    """Add ``clipguard models {list,download,convert}``."""
    _, commands = add_group(
        subparsers,
        "models",
        help="list, download and convert CLIP models",
        description="List the CLIP models clipguard knows (OpenAI's releases and the bundled "
        "demo model) and download their weights into the local cache.",
        epilog=_EPILOG,
    )

    list_ = add_command(
        commands,
        "list",
        help="show every known model and whether its weights are cached",
        description="Show every known model: architecture, embedding size, input resolution, "
        "whether its weights are in the cache, and where they are (or would be).",
    )
    list_.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    list_.add_argument(
        "--converted",
        action="store_true",
        help="with --json: an object with the models and the converted-model cache (the table "
        "always shows both)",
    )
    list_.set_defaults(func=_list)

    download = add_command(
        commands,
        "download",
        help="download a model's weights into the cache",
        description="Download the weights of a registry model into the cache and verify their "
        "SHA-256. OpenAI's TorchScript archives are then converted to safetensors (what "
        "workers load; the archive is deleted unless --keep-archive). Nothing is downloaded if "
        "a verified copy is already cached. Set CLIPGUARD_MODEL_MIRROR to download from a "
        "mirror.",
        epilog="example:\n  clipguard models download ViT-B/32",
    )
    download.add_argument("name", metavar="NAME", help="model name, e.g. ViT-B/32 or RN50")
    download.add_argument(
        "--force", action="store_true", help="download again even if a verified copy is cached"
    )
    download.add_argument(
        "--keep-archive",
        action="store_true",
        help="keep an OpenAI .pt archive in the cache after converting it",
    )
    download.set_defaults(func=_download)

    convert = add_command(
        commands,
        "convert",
        help="convert a .pt weights file to safetensors",
        description="Convert a PyTorch .pt weights file you already have to safetensors, the "
        "form workers load. A state dict is read with torch.load(weights_only=True), which "
        "never runs code a pickle names. A TorchScript archive runs code when read, so only "
        "one whose SHA-256 is a registry release (OpenAI's .pt files) is converted; it goes "
        "into the cache as that model unless --out is given. Any other archive is refused.",
        epilog="examples:\n  clipguard models convert ~/.cache/clip/ViT-B-32.pt\n"
        "  clipguard models convert finetuned.pt --out finetuned.safetensors",
    )
    convert.add_argument("path", metavar="PATH", help="the .pt file to convert")
    convert.add_argument(
        "--out",
        metavar="FILE",
        help="where to write the safetensors file (default: the cache for a registry archive, "
        "else PATH with the suffix .safetensors)",
    )
    convert.set_defaults(func=_convert)


def _list(args: argparse.Namespace) -> int:
    from pipeline.models.licenses import LICENSE_ENV, get_license
    from pipeline.models.registry import DEMO_NOTICE, cache_dir, list_models

    rows: list[dict[str, Any]] = []
    for info in list_models():
        available = info.is_available()
        archive = info.archive_path()
        if info.bundled:
            status = "bundled" if available else "bundled (missing)"
        elif not available and archive is not None and archive.is_file():
            status = "archive only"  # `clipguard models download` converts it
        else:
            status = "yes" if available else "no"
        rows.append(
            {
                "name": info.name,
                "family": info.family,
                "license": info.license,
                "architecture": info.architecture,
                "embed_dim": info.embed_dim,
                "image_resolution": info.image_resolution,
                "text_context": info.text_context,
                "source": info.source,
                "cached": status,
                "available": available,
                "bundled": info.bundled,
                "demo": info.demo,
                "path": str(info.path()),
                "archive": str(archive) if archive is not None else None,
                "url": info.url or None,
                "sha256": info.sha256 or None,
                "notice": DEMO_NOTICE if info.demo else None,
            }
        )
    converted = _converted_rows()
    if args.json:
        if args.converted:
            json.dump({"models": rows, "converted": converted}, sys.stdout, indent=2)
        else:
            json.dump(rows, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0

    headers = ("NAME", "FAMILY", "LICENSE", "ARCHITECTURE", "EMBED", "RES", "CACHED", "PATH")
    table = [
        (
            f"{row['name']} (demo)" if row["demo"] else row["name"],
            row["family"],
            row["license"] + ("*" if get_license(row["license"]).restricted else ""),
            row["architecture"],
            str(row["embed_dim"]),
            str(row["image_resolution"]),
            row["cached"],
            row["path"],
        )
        for row in rows
    ]
    print_table(headers, table)
    print()
    print(f"cache directory: {cache_dir()} (set CLIPGUARD_CACHE_DIR to change it)")
    print(f"licences marked * are restricted: accept one by id in {LICENSE_ENV} to use it")
    if any(row["cached"] == "archive only" for row in rows):
        print("archive only: run `clipguard models download NAME` to convert it for workers")
    if any(row["demo"] for row in rows):
        print(f"note: {DEMO_NOTICE}")
    _print_converted(converted)
    return 0


def _converted_rows() -> list[dict[str, Any]]:
    """The converted-model cache: one row per (model, weights, precision, runtime) with the
    accuracy guard's newest figures."""
    from pipeline.models.converted import list_converted

    rows = []
    for entry in list_converted():
        last = entry.checks[-1] if entry.checks else None
        rows.append(
            {
                "name": entry.name,
                "weights_sha256": entry.weights_sha256,
                "precision": entry.precision,
                "backend": entry.backend,
                "runtime_version": entry.runtime_version,
                "conversion_s": round(entry.conversion_s, 2),
                "path": str(entry.path),
                "checks": [c.to_json() for c in entry.checks],
                "mean_cosine": last.mean_cosine if last else None,
                "min_cosine": last.min_cosine if last else None,
                "changed": len(last.changed) if last else None,
                "images_per_s": last.images_per_s if last else None,
                "fp32_images_per_s": last.fp32_images_per_s if last else None,
            }
        )
    return rows


def _print_converted(rows: list[dict[str, Any]]) -> None:
    from pipeline.models.converted import converted_dir

    print()
    if not rows:
        print(f"converted models: none yet in {converted_dir()} (made on a worker's first start)")
        return
    print(f"converted models in {converted_dir()} (the accuracy guard's newest figures):")

    def num(value: float | None, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    print_table(
        (
            "NAME",
            "WEIGHTS",
            "PRECISION",
            "BACKEND",
            "MEAN COS",
            "MIN COS",
            "CHANGED",
            "IMG/S",
            "FP32 IMG/S",
        ),
        [
            (
                r["name"],
                r["weights_sha256"][:12],
                r["precision"],
                r["backend"],
                num(r["mean_cosine"], ".5f"),
                num(r["min_cosine"], ".5f"),
                "-" if r["changed"] is None else str(r["changed"]),
                num(r["images_per_s"], ".1f"),
                num(r["fp32_images_per_s"], ".1f"),
            )
            for r in rows
        ],
    )


def _download(args: argparse.Namespace) -> int:
    from pipeline.models.download import download_model
    from pipeline.models.registry import get_model_info

    info = get_model_info(args.name)  # unknown names fail here, listing the known ones
    if not args.force and not info.bundled and info.is_available():
        _log.info("%s is cached at %s; checking its SHA-256", info.name, info.path())
    progress = _ProgressLine(info.name, sys.stderr)
    try:
        path = download_model(
            info.name, force=args.force, progress=progress, keep_archive=args.keep_archive
        )
    finally:
        progress.finish()
    print(path)
    return 0


def _convert(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pipeline.models.to_safetensors import convert_file

    out = Path(args.out).expanduser() if args.out else None
    done = convert_file(Path(args.path).expanduser(), out)
    what = f"registry model {done.model}" if done.model else done.source_format
    _log.info("converted %s (%s, SHA-256 %s)", done.source, what, done.source_sha256)
    print(done.path)
    return 0


class _ProgressLine:
    """Reports download progress on one line of ``stream`` (a new line per 10% when it is not
    a terminal, so logs stay short)."""

    def __init__(self, name: str, stream: TextIO) -> None:
        self._name = name
        self._stream = stream
        self._tty = stream.isatty()
        self._last: str | None = None
        self._started = False

    def __call__(self, done: int, total: int | None) -> None:
        if total:
            pct = 100.0 * done / total
            step = f"{pct:.1f}" if self._tty else str(int(pct // 10) * 10)
            text = f"downloading {self._name}: {pct:5.1f}% ({_mb(done)} of {_mb(total)})"
        else:
            step = f"{done / 1e6:.1f}" if self._tty else str(done // 50_000_000)
            text = f"downloading {self._name}: {_mb(done)}"
        if step == self._last:
            return
        self._last = step
        self._started = True
        if self._tty:
            self._stream.write(f"\r{text}\x1b[K")
        else:
            self._stream.write(text + "\n")
        self._stream.flush()

    def finish(self) -> None:
        if self._started and self._tty:
            self._stream.write("\n")
            self._stream.flush()


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"
