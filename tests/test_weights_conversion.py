"""OpenAI ``.pt`` archives converted to safetensors at download and by ``clipguard models
convert``; workers load safetensors only; an unknown TorchScript archive or a pickle naming code
is refused, never run.

Real files throughout: a small random-weight ViT CLIP saved as a real TorchScript archive (what
OpenAI publishes) and as a plain state dict, served by a real local HTTP server, registered in
the registry under the archive's SHA-256 as an OpenAI release is.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import json
import threading
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from consumers.cli import main
from pipeline.errors import ChecksumMismatch, UntrustedWeights, WeightsNotFound
from pipeline.models import CLIP, load_clip
from pipeline.models import registry as registry_module
from pipeline.models.configs import CLIPConfig, TextConfig, VisionConfig
from pipeline.models.download import download_model
from pipeline.models.registry import ModelInfo, get_model_info
from pipeline.models.to_safetensors import SOURCE_KEY, record_path
from pipeline.models.tokenizer import tokenize

NAME = "tiny-ViT"
_CONFIG = CLIPConfig(
    embed_dim=32,
    vision=VisionConfig(kind="vit", image_resolution=32, width=64, layers=2, heads=1, patch_size=8),
    text=TextConfig(context_length=77, width=64, heads=1, layers=2),
)


def _model(seed: int) -> CLIP:
    model = CLIP(_CONFIG)
    model.init_weights(torch.Generator().manual_seed(seed))
    return model.eval().requires_grad_(False)


def _archive(model: CLIP, path: Path) -> Path:
    """A real TorchScript archive of ``model``, as OpenAI's releases are."""
    res = model.input_resolution
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace_module(
            model, {"encode_image": torch.zeros(1, 3, res, res)}, check_trace=False
        )
    traced.save(str(path))
    return path


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _embeddings(model: CLIP) -> tuple[torch.Tensor, torch.Tensor]:
    frames = torch.randint(
        0, 256, (3, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(9)
    )
    with torch.inference_mode():
        image = model.encode_image(model.preprocess(frames))
        text = model.encode_text(tokenize(["a red triangle", "spam on a wall", "x"]))
    return image, text


class _Evil:
    """Pickled as a call to ``open(marker, "w")``: unpickling it creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


@dataclasses.dataclass
class Served:
    url: str
    root: Path
    requests: list[str]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    root = tmp_path / "www"
    root.mkdir()
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self) -> None:
            requests.append(self.path)
            super().do_GET()

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(root))
    )
    thread = threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield Served(f"http://127.0.0.1:{httpd.server_address[1]}", root, requests)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv("CLIPGUARD_CACHE_DIR", str(path))
    monkeypatch.delenv("CLIPGUARD_MODEL_MIRROR", raising=False)
    return path


@pytest.fixture(scope="module")
def original() -> CLIP:
    return _model(11)


@pytest.fixture
def release(
    original: CLIP, served: Served, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> ModelInfo:
    """``original`` published as an OpenAI release: a TorchScript archive on the server, its
    SHA-256 in the registry (as the registry lists OpenAI's)."""
    archive = _archive(original, served.root / "tiny-ViT.pt")
    digest = _sha256(archive)
    info = ModelInfo(
        name=NAME,
        config=_CONFIG,
        url=f"{served.url}/tiny-ViT.pt",
        sha256=digest,
        filename="tiny-ViT.pt",
    )
    monkeypatch.setitem(registry_module._MODELS, NAME, info)
    return info


# --- download ------------------------------------------------------------------------------


def test_download_converts_the_archive_and_the_converted_model_embeds_as_the_original(
    release: ModelInfo, original: CLIP, served: Served, cache: Path
) -> None:
    path = download_model(NAME)
    assert path == cache / "tiny-ViT.safetensors" == release.path()
    assert not (cache / "tiny-ViT.pt").exists()  # the archive is deleted once converted
    assert not list(cache.glob("*.part")) and not list(cache.glob(".*.tmp"))
    record = json.loads(record_path(path).read_text())
    assert record["source_sha256"] == release.sha256 and record["sha256"] == _sha256(path)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        assert (fh.metadata() or {})[SOURCE_KEY] == release.sha256

    loaded = load_clip(NAME)
    assert loaded.weights_sha256 == release.sha256  # named by the release, as before
    ref_image, ref_text = _embeddings(original)
    image, text = _embeddings(loaded)
    assert not torch.allclose(ref_image[0], ref_image[1])  # the output depends on the input
    torch.testing.assert_close(image, ref_image, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(text, ref_text, rtol=1e-5, atol=1e-6)

    assert download_model(NAME) == path  # a verified conversion is not fetched again
    assert served.requests == ["/tiny-ViT.pt"]


def test_models_list_is_right_with_only_the_converted_file(
    release: ModelInfo, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["models", "download", NAME, "--keep-archive"]) == 0
    assert capsys.readouterr().out.strip() == str(cache / "tiny-ViT.safetensors")
    archive = cache / "tiny-ViT.pt"
    assert archive.is_file()
    archive.unlink()
    assert main(["models", "list", "--json"]) == 0
    row = next(r for r in json.loads(capsys.readouterr().out) if r["name"] == NAME)
    assert row["cached"] == "yes" and row["available"] is True
    assert row["path"] == str(cache / "tiny-ViT.safetensors")
    assert row["archive"] == str(archive)
    load_clip(NAME)  # and it loads


def test_a_worker_never_loads_the_archive_of_a_registry_name(
    release: ModelInfo, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Only the archive in the cache (an older download): the name does not load it, and the
    list says how to convert it."""
    assert main(["models", "download", NAME, "--keep-archive"]) == 0
    release.path().unlink()
    with pytest.raises(WeightsNotFound, match="only as the TorchScript archive"):
        load_clip(NAME)
    capsys.readouterr()
    assert main(["models", "list", "--json"]) == 0
    row = next(r for r in json.loads(capsys.readouterr().out) if r["name"] == NAME)
    assert row["cached"] == "archive only"


def test_a_changed_converted_file_is_refused(release: ModelInfo, cache: Path) -> None:
    path = download_model(NAME)
    good = path.read_bytes()
    path.write_bytes(good[:-1] + bytes([good[-1] ^ 0x01]))  # one bit of the last tensor
    with pytest.raises(ChecksumMismatch, match="changed since"):
        load_clip(NAME)
    # a record naming another archive is refused too
    path.write_bytes(good)
    record = json.loads(record_path(path).read_text())
    record_path(path).write_text(json.dumps({**record, "source_sha256": "0" * 64}))
    with pytest.raises(ChecksumMismatch, match="converted from an archive"):
        load_clip(NAME)
    record_path(path).unlink()
    with pytest.raises(ChecksumMismatch, match="no readable record"):
        load_clip(NAME)
    # the download notices and converts again
    assert download_model(NAME) == path
    load_clip(NAME)


def test_a_registry_archive_loads_by_path_and_a_changed_one_does_not(
    release: ModelInfo, original: CLIP, served: Served, tmp_path: Path
) -> None:
    archive = served.root / "tiny-ViT.pt"
    loaded = load_clip(archive)  # its SHA-256 is the registry's
    torch.testing.assert_close(_embeddings(loaded)[0], _embeddings(original)[0])
    changed = tmp_path / "changed.pt"
    changed.write_bytes(archive.read_bytes() + b"\0")
    with pytest.raises(UntrustedWeights, match="not a release"):
        load_clip(changed)


# --- unknown archives and pickles ----------------------------------------------------------


def test_an_unknown_torchscript_archive_is_refused_by_the_loader_and_by_convert(
    tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = _archive(_model(12), tmp_path / "unknown.pt")
    with pytest.raises(UntrustedWeights, match="runs the code inside it") as err:
        load_clip(archive)
    assert _sha256(archive) in str(err.value)
    assert main(["models", "convert", str(archive)]) == 1
    message = capsys.readouterr().err
    assert "clipguard: error:" in message and "not a release in clipguard's registry" in message
    assert "Traceback" not in message
    assert not (tmp_path / "unknown.safetensors").exists()


def _planted_archive(path: Path, marker: Path) -> Path:
    """A zip laid out as a TorchScript archive whose pickles call ``open(marker, "w")``."""
    import pickle

    payload = pickle.dumps({"w": _Evil(marker)}, protocol=2)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", payload)
        zf.writestr("archive/constants.pkl", payload)
        zf.writestr("archive/code/__torch__/model.py", "def forward(self): pass\n")
        zf.writestr("archive/version", "3\n")
    return path


def test_a_malicious_pickle_is_never_run(tmp_path: Path, cache: Path) -> None:
    marker = tmp_path / "marker"
    state = tmp_path / "state.pt"
    torch.save({"visual.proj": torch.zeros(2, 2), "x": _Evil(marker)}, state)
    planted = _planted_archive(tmp_path / "planted.pt", marker)

    with pytest.raises(UntrustedWeights, match="names code"):
        load_clip(state)
    assert main(["models", "convert", str(state)]) == 1
    with pytest.raises(UntrustedWeights, match="runs the code inside it"):
        load_clip(planted)
    assert main(["models", "convert", str(planted)]) == 1
    assert not marker.exists()

    # the check can fail: an unpickler that runs what the pickle names creates the marker
    torch.load(state, weights_only=False)["x"].close()
    assert marker.exists()


# --- clipguard models convert ----------------------------------------------------------------


def test_convert_a_state_dict_and_a_registry_archive(
    release: ModelInfo, original: CLIP, served: Served, tmp_path: Path, cache: Path
) -> None:
    state = tmp_path / "finetuned.pt"
    torch.save(original.state_dict(), state)
    assert main(["models", "convert", str(state)]) == 0
    out = tmp_path / "finetuned.safetensors"
    loaded = load_clip(out)
    for key, value in original.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key

    # a registry archive goes into the cache as that model, ready to load by name
    archive = served.root / "tiny-ViT.pt"
    assert main(["models", "convert", str(archive)]) == 0
    assert release.path().is_file() and archive.is_file()
    torch.testing.assert_close(_embeddings(load_clip(NAME))[1], _embeddings(original)[1])
    assert served.requests == []  # nothing downloaded
    # ... or where --out says
    elsewhere = tmp_path / "copy.safetensors"
    assert main(["models", "convert", str(archive), "--out", str(elsewhere)]) == 0
    torch.testing.assert_close(_embeddings(load_clip(elsewhere))[0], _embeddings(original)[0])

    assert main(["models", "convert", str(out)]) == 1  # safetensors already
    assert main(["models", "convert", str(tmp_path / "missing.pt")]) == 1


def test_the_registry_lists_openai_releases_as_archives(cache: Path) -> None:
    info = get_model_info("ViT-B/32")
    assert info.is_archive and info.path() == cache / "ViT-B-32.safetensors"
    assert info.archive_path() == cache / "ViT-B-32.pt"
    assert info.sha256 in registry_module.registry_archive_digests()
    assert not get_model_info("clipguard-demo").is_archive
    assert get_model_info("siglip-base-patch16-224").archive_path() is None
