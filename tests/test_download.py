"""Downloading weights and the ``clipguard models`` command line, against a real local HTTP
server (no mocked urllib)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from consumers.cli import main
from pipeline.errors import ChecksumMismatch, ClipguardError, ConfigError, DownloadError
from pipeline.models.download import download_file, download_model
from pipeline.models.registry import DEMO_MODEL, get_model_info, list_models

REPO_ROOT = Path(__file__).resolve().parents[1]

ALL_NAMES = [
    "RN50",
    "RN101",
    "RN50x4",
    "RN50x16",
    "RN50x64",
    "ViT-B/32",
    "ViT-B/16",
    "ViT-L/14",
    "ViT-L/14@336px",
    "clipguard-demo",
    # SigLIP, SigLIP 2 and open_clip checkpoints on Hugging Face (pipeline/models/zoo.py)
    "siglip2-base-patch16-224",
    "siglip2-base-patch16-256",
    "siglip2-base-patch16-384",
    "siglip2-base-patch32-256",
    "siglip2-large-patch16-256",
    "siglip2-so400m-patch14-384",
    "siglip-base-patch16-224",
    "siglip-base-patch16-256",
    "siglip-base-patch16-384",
    "siglip-large-patch16-256",
    "siglip-so400m-patch14-384",
    "ViT-B-32-laion2b",
    "ViT-B-16-datacomp",
    "ViT-L-14-datacomp",
    "ViT-H-14-laion2b",
    "ViT-bigG-14-laion2b",
    "ViT-B-16-dfn2b",
    "ViT-H-14-dfn5b",
    "ViT-B-16-metaclip-400m",
]


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Server:
    url: str
    root: Path
    requests: list[str] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)

    def put(self, relpath: str, data: bytes) -> str:
        """Serve ``data`` at ``/relpath``; return its URL."""
        path = self.root / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return f"{self.url}/{relpath}"

    def count(self, relpath: str) -> int:
        return sum(1 for p in self.requests if p == f"/{relpath}")


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves a directory, plus two misbehaving endpoints:

    * ``/short/<n>``: announces 1000 bytes, sends ``n``, then closes the connection;
    * ``/slow``: sends nothing until the test ends (or 10 s pass).
    """

    server_state: Server

    def do_GET(self) -> None:
        self.server_state.requests.append(self.path)
        if self.path.startswith("/short/"):
            sent = int(self.path.rsplit("/", 1)[1])
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"x" * sent)
            self.wfile.flush()
            self.close_connection = True
            return
        if self.path == "/slow":
            self.server_state.release.wait(10)
            return
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:  # quiet test output
        pass


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    root = tmp_path / "www"
    root.mkdir()
    state = Server(url="", root=root)
    handler = type("Handler", (_Handler,), {"server_state": state})
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(root))
    )
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv("CLIPGUARD_CACHE_DIR", str(path))
    monkeypatch.delenv("CLIPGUARD_MODEL_MIRROR", raising=False)
    return path


def leftovers(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.part")) if directory.exists() else []


# --- download_file ------------------------------------------------------------------------


def test_download_file_success(server: Server, tmp_path: Path) -> None:
    data = os.urandom(300_000)
    url = server.put("weights.bin", data)
    dest = tmp_path / "out" / "weights.bin"
    seen: list[tuple[int, int | None]] = []

    got = download_file(
        url,
        dest,
        sha256=sha256_hex(data),
        chunk_size=64 * 1024,
        progress=lambda done, total: seen.append((done, total)),
    )

    assert got == dest
    assert dest.read_bytes() == data
    assert leftovers(dest.parent) == []
    assert list(dest.parent.iterdir()) == [dest]
    assert seen[0] == (0, len(data))
    assert seen[-1] == (len(data), len(data))
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_download_file_accepts_uppercase_sha(server: Server, tmp_path: Path) -> None:
    data = b"hello weights"
    url = server.put("w.bin", data)
    dest = download_file(url, tmp_path / "w.bin", sha256=sha256_hex(data).upper())
    assert dest.read_bytes() == data


def test_wrong_checksum_deletes_the_file(server: Server, tmp_path: Path) -> None:
    data = b"not the weights you are looking for"
    url = server.put("w.bin", data)
    expected = "0" * 64
    dest = tmp_path / "out" / "w.bin"

    with pytest.raises(ChecksumMismatch) as info:
        download_file(url, dest, sha256=expected)

    message = str(info.value)
    assert url in message
    assert expected in message
    assert sha256_hex(data) in message
    assert "deleted" in message
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == []


def test_http_404_is_a_download_error(server: Server, tmp_path: Path) -> None:
    dest = tmp_path / "w.bin"
    with pytest.raises(DownloadError, match="404"):
        download_file(f"{server.url}/missing.bin", dest, sha256="0" * 64)
    assert not dest.exists()
    assert leftovers(tmp_path) == []


def test_short_read_is_a_download_error(server: Server, tmp_path: Path) -> None:
    dest = tmp_path / "out" / "w.bin"
    with pytest.raises(DownloadError, match="100 of 1000 bytes") as info:
        download_file(f"{server.url}/short/100", dest, sha256="0" * 64, chunk_size=64)
    assert not isinstance(info.value, ChecksumMismatch)
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == []


def test_timeout_is_a_download_error(server: Server, tmp_path: Path) -> None:
    dest = tmp_path / "out" / "w.bin"
    with pytest.raises(DownloadError, match="timed out"):
        download_file(f"{server.url}/slow", dest, sha256="0" * 64, timeout=0.3)
    assert list(dest.parent.iterdir()) == []


def test_connection_refused_is_a_download_error(tmp_path: Path) -> None:
    # bind a port and close it again, so nothing listens there
    httpd = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    port = httpd.server_address[1]
    httpd.server_close()
    with pytest.raises(DownloadError, match="failed"):
        download_file(f"http://127.0.0.1:{port}/w.bin", tmp_path / "w.bin", sha256="0" * 64)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "url", ["ftp://127.0.0.1/w.bin", "file:///etc/passwd", "data:,hello", "http:///nohost"]
)
def test_refuses_other_schemes(url: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="only http"):
        download_file(url, tmp_path / "w.bin", sha256="0" * 64)
    assert list(tmp_path.iterdir()) == []


def test_refuses_a_malformed_checksum(server: Server, tmp_path: Path) -> None:
    url = server.put("w.bin", b"data")
    with pytest.raises(ConfigError, match="SHA-256"):
        download_file(url, tmp_path / "w.bin", sha256="abc")
    assert server.requests == []


def test_present_and_verified_file_is_not_downloaded_again(server: Server, tmp_path: Path) -> None:
    data = b"cached weights" * 1000
    url = server.put("w.bin", data)
    dest = tmp_path / "w.bin"

    download_file(url, dest, sha256=sha256_hex(data))
    assert server.count("w.bin") == 1
    mtime = dest.stat().st_mtime_ns

    download_file(url, dest, sha256=sha256_hex(data))
    assert server.count("w.bin") == 1
    assert dest.stat().st_mtime_ns == mtime


def test_present_but_corrupt_file_is_replaced(server: Server, tmp_path: Path) -> None:
    data = b"good weights"
    url = server.put("w.bin", data)
    dest = tmp_path / "w.bin"
    dest.write_bytes(b"truncated")

    download_file(url, dest, sha256=sha256_hex(data))

    assert server.count("w.bin") == 1
    assert dest.read_bytes() == data


def test_failed_download_keeps_the_existing_file(server: Server, tmp_path: Path) -> None:
    dest = tmp_path / "w.bin"
    dest.write_bytes(b"old")
    with pytest.raises(DownloadError):
        download_file(f"{server.url}/short/10", dest, sha256="0" * 64)
    assert dest.read_bytes() == b"old"
    assert leftovers(tmp_path) == []


def test_errors_belong_to_the_tree() -> None:
    assert issubclass(DownloadError, ClipguardError) and issubclass(DownloadError, OSError)
    assert issubclass(ChecksumMismatch, ClipguardError)


# --- download_model -----------------------------------------------------------------------


def test_download_model_through_mirror_checks_the_registry_sha(
    server: Server, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    info = get_model_info("ViT-B/32")
    server.put(f"{info.sha256}/{info.filename}", b"a fake ViT-B/32")
    monkeypatch.setenv("CLIPGUARD_MODEL_MIRROR", server.url + "/")

    with pytest.raises(ChecksumMismatch) as err:
        download_model("ViT-B/32")

    assert info.sha256 in str(err.value)
    assert f"{server.url}/{info.sha256}/{info.filename}" in str(err.value)
    assert server.requests == [f"/{info.sha256}/{info.filename}"]
    assert not info.path().exists()
    assert leftovers(cache) == []


def test_download_model_from_a_mirror_missing_the_file(
    server: Server, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLIPGUARD_MODEL_MIRROR", server.url)
    with pytest.raises(DownloadError, match="404"):
        download_model("RN50")
    assert not get_model_info("RN50").path().exists()


def test_mirror_layout_serves_download_file(server: Server, cache: Path) -> None:
    """The success path: a mirror laid out as {sha}/{filename}, fetched into the cache."""
    data = os.urandom(50_000)
    sha = sha256_hex(data)
    url = server.put(f"{sha}/tiny.pt", data)
    dest = download_file(url, cache / "tiny.pt", sha256=sha)
    assert dest.read_bytes() == data
    assert leftovers(cache) == []


def test_download_model_refuses_bundled_models(cache: Path) -> None:
    with pytest.raises(ConfigError, match="bundled"):
        download_model(DEMO_MODEL)


def test_download_model_unknown_name(cache: Path) -> None:
    with pytest.raises(ConfigError, match="ViT-B/32"):
        download_model("ViT-H/99")


def test_download_model_refuses_a_non_http_mirror(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLIPGUARD_MODEL_MIRROR", "file:///tmp/mirror")
    with pytest.raises(ConfigError, match="only http"):
        download_model("RN50", force=True)


# --- clipguard models list ----------------------------------------------------------------


def _row(out: str, name: str) -> str:
    for line in out.splitlines():
        if line.split() and line.split()[0] == name:
            return line
    raise AssertionError(f"no row for {name} in:\n{out}")


def test_models_list_table(cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    for name in ALL_NAMES:
        assert _row(out, name)
    assert " no " in _row(out, "RN50")
    assert "ResNet" in _row(out, "RN50")
    assert "1024" in _row(out, "RN50")
    assert "336" in _row(out, "ViT-L/14@336px")
    demo = _row(out, "clipguard-demo")
    assert "bundled" in demo
    assert "demo" in demo.split("bundled")[0].replace("clipguard-demo", "")
    assert str(cache) in out
    assert "synthetic shapes" in out
    assert "clipguard models download ViT-B/32" in out


def test_models_list_shows_cached_files(cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    info = get_model_info("ViT-B/16")
    info.path().parent.mkdir(parents=True)
    info.path().write_bytes(b"pretend weights")

    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert " yes " in _row(out, "ViT-B/16")
    assert str(info.path()) in _row(out, "ViT-B/16")
    assert " no " in _row(out, "ViT-B/32")


def test_models_list_json(cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    get_model_info("RN101").path().parent.mkdir(parents=True)
    get_model_info("RN101").path().write_bytes(b"x")

    assert main(["models", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)

    assert [row["name"] for row in rows] == [m.name for m in list_models()]
    assert sorted(row["name"] for row in rows) == sorted(ALL_NAMES)
    by_name = {row["name"]: row for row in rows}
    assert by_name["RN101"]["cached"] == "yes"
    assert by_name["RN50"]["cached"] == "no"
    assert by_name["ViT-B/32"]["embed_dim"] == 512
    assert by_name["ViT-L/14@336px"]["image_resolution"] == 336
    # what workers load: the archive converted to safetensors at download
    assert by_name["ViT-B/32"]["path"] == str(cache / "ViT-B-32.safetensors")
    assert by_name["ViT-B/32"]["archive"] == str(cache / "ViT-B-32.pt")
    demo = by_name["clipguard-demo"]
    assert demo["demo"] is True and demo["bundled"] is True
    assert demo["cached"].startswith("bundled")
    assert "synthetic" in demo["notice"]


# --- clipguard models download ------------------------------------------------------------


def test_cli_download_of_bundled_model_fails(
    cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["models", "download", "clipguard-demo"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("clipguard: error: ")
    assert "bundled" in err
    assert "Traceback" not in err


def test_cli_download_of_unknown_model_lists_names(
    cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["models", "download", "ViT-Q/7"]) == 1
    err = capsys.readouterr().err
    assert "clipguard: error:" in err
    assert "ViT-Q/7" in err
    for name in ALL_NAMES:
        assert name in err


def test_cli_download_checksum_mismatch(
    server: Server, cache: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    info = get_model_info("RN50")
    server.put(f"{info.sha256}/{info.filename}", b"fake RN50 weights " * 5000)
    monkeypatch.setenv("CLIPGUARD_MODEL_MIRROR", server.url)

    assert main(["models", "download", "RN50"]) == 1

    captured = capsys.readouterr()
    assert captured.out == ""
    assert "clipguard: error: checksum mismatch" in captured.err
    assert info.sha256 in captured.err
    assert "downloading RN50" in captured.err  # the progress line
    assert "100" in captured.err
    assert "Traceback" not in captured.err
    assert not info.path().exists()
    assert leftovers(cache) == []


def test_cli_download_network_error(
    server: Server, cache: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CLIPGUARD_MODEL_MIRROR", server.url)
    assert main(["models", "download", "ViT-L/14"]) == 1
    err = capsys.readouterr().err
    assert "clipguard: error:" in err and "404" in err


# --- the parser ---------------------------------------------------------------------------


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == "clipguard 0.1.0"


def test_help_mentions_examples(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "models" in out
    assert "clipguard models download ViT-B/32" in out
    assert "--log-level" in out


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "download"]) == 2
    assert "NAME" in capsys.readouterr().err
    assert main(["--log-level", "LOUD", "models", "list"]) == 2
    capsys.readouterr()
    assert main(["models"]) == 2
    assert "download" in capsys.readouterr().err
    assert main([]) == 2


def test_log_level_debug_reaches_stderr(
    server: Server, cache: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CLIPGUARD_MODEL_MIRROR", server.url)
    assert main(["--log-level", "debug", "models", "download", "RN50"]) == 1
    err = capsys.readouterr().err
    assert "INFO pipeline.models.download: fetching RN50" in err
    assert main(["--log-level", "ERROR", "models", "download", "RN50"]) == 1
    assert "fetching" not in capsys.readouterr().err


def test_python_dash_m_consumers(tmp_path: Path) -> None:
    env = dict(os.environ, CLIPGUARD_CACHE_DIR=str(tmp_path / "cache"))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.pop("CLIPGUARD_MODEL_MIRROR", None)
    result = subprocess.run(
        [sys.executable, "-m", "consumers", "models", "list"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for name in ALL_NAMES:
        assert name in result.stdout
    assert str(tmp_path / "cache") in result.stdout
