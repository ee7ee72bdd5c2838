"""Registry weights are checked against their SHA-256 at every load, before anything parses
them; the result is remembered by size and mtime. Real files in a real cache folder."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest

from pipeline.errors import ChecksumMismatch
from pipeline.models import load_clip
from pipeline.models.integrity import verified_sha256
from pipeline.models.registry import get_model_info
from pipeline.models.to_safetensors import record_path


def test_a_changed_registry_file_is_refused_before_it_is_parsed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLIPGUARD_CACHE_DIR", str(tmp_path))
    info = get_model_info("ViT-B/32")
    planted = info.path()  # the converted safetensors file, what a worker loads
    planted.parent.mkdir(parents=True, exist_ok=True)
    planted.write_bytes(b"\x80\x02 a pickle that would run code if it were loaded")
    with pytest.raises(ChecksumMismatch, match="no readable record"):
        load_clip("ViT-B/32")
    # a record naming the release, with the SHA-256 of what was converted: not this file
    record = {"source_sha256": info.sha256, "sha256": hashlib.sha256(b"other").hexdigest()}
    record_path(planted).write_text(json.dumps(record))
    with pytest.raises(ChecksumMismatch, match="changed since it was downloaded"):
        load_clip("ViT-B/32")


def test_the_hash_is_remembered_while_size_and_mtime_stay(tmp_path: Path) -> None:
    """Not hashed again while size and mtime are those remembered: a file rewritten with the
    same size and its old mtime keeps the remembered digest (why the cache should be read-only
    in workers); any other change is hashed again."""
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"a" * 1000)
    digest = hashlib.sha256(b"a" * 1000).hexdigest()
    assert verified_sha256(weights, digest) == digest
    stamp = weights.stat().st_mtime_ns
    weights.write_bytes(b"c" * 1000)
    os.utime(weights, ns=(stamp, stamp))
    assert verified_sha256(weights, digest) == digest  # from the memo, not the file
    assert verified_sha256(weights, None, remember=False) != digest  # what hashing finds


def test_the_hash_is_remembered_by_size_and_mtime(tmp_path: Path) -> None:
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"a" * 1000)
    digest = hashlib.sha256(b"a" * 1000).hexdigest()
    assert verified_sha256(weights, digest) == digest
    memo = tmp_path / ".w.safetensors.sha256.json"
    assert memo.is_file() and digest in memo.read_text()
    # changed after it was checked: the new mtime makes it hashed again, and refused
    weights.write_bytes(b"b" * 1000)
    os.utime(weights, ns=(1, 1))
    with pytest.raises(ChecksumMismatch):
        verified_sha256(weights, digest)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_cache_is_hashed_each_time(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    weights = folder / "w.bin"
    weights.write_bytes(b"x" * 10)
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        digest = verified_sha256(weights, hashlib.sha256(b"x" * 10).hexdigest())
        assert digest and not (folder / ".w.bin.sha256.json").exists()
    finally:
        folder.chmod(stat.S_IRWXU)
