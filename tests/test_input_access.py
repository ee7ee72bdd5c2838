"""What an untrusted input reference may reach (pipeline.decode.access): real files, symlinks
and FIFOs under real folders, real HTTP servers on loopback addresses, real redirects.

A scan job names its input in a Kafka record; these tests hold the decode stage to the allowed
roots and hosts, and to public addresses unless a network is allowed by name.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import media
import pytest

from pipeline.decode import DecodeOptions, DecodePool, InputAccess, decode_uri
from pipeline.decode.access import address_allowed
from pipeline.errors import (
    ConfigError,
    InputRefused,
    LimitExceeded,
    MediaUnavailable,
    UnsupportedMedia,
)

OPTIONS = DecodeOptions(size=32)
LOOPBACK = ("127.0.0.1/32",)


@pytest.fixture(scope="module")
def clip() -> bytes:
    return media.encode(6, fmt="mp4")


@pytest.fixture
def tree(tmp_path: Path, clip: bytes) -> dict[str, Path]:
    """An allowed root with a clip, a secret folder beside it, and a way out of the root."""
    root = tmp_path / "library"
    secret = tmp_path / "secret"
    root.mkdir()
    secret.mkdir()
    (root / "clip.mp4").write_bytes(clip)
    (secret / "weights.mp4").write_bytes(clip)
    (root / "link.mp4").symlink_to(secret / "weights.mp4")
    (root / "linked-dir").symlink_to(secret)
    return {"root": root, "secret": secret}


# ------------------------------------------------------------------------------------ files


def test_files_are_read_only_under_the_allowed_roots(tree: dict[str, Path]) -> None:
    root, secret = tree["root"], tree["secret"]
    access = InputAccess(roots=(str(root),))
    assert decode_uri(root / "clip.mp4", OPTIONS, access=access).frames
    assert decode_uri((root / "clip.mp4").as_uri(), OPTIONS, access=access).frames
    escapes = [
        secret / "weights.mp4",  # outside
        root / ".." / "secret" / "weights.mp4",  # climbs out
        root / "link.mp4",  # a symlink out of the root
        root / "linked-dir" / "weights.mp4",  # a folder symlink out of the root
        Path("/etc/passwd"),
    ]
    for path in escapes:
        with pytest.raises(InputRefused, match="not under an allowed root"):
            decode_uri(path, OPTIONS, access=access)
        # the same files, for a person's own scan, are read as before
        if path.name == "weights.mp4" or path.name == "link.mp4":
            assert decode_uri(path, OPTIONS).frames
    # a root that is a prefix of another folder's name does not allow that folder
    sibling = root.parent / "library-2"
    sibling.mkdir()
    (sibling / "clip.mp4").write_bytes((root / "clip.mp4").read_bytes())
    with pytest.raises(InputRefused):
        decode_uri(sibling / "clip.mp4", OPTIONS, access=access)
    # nothing allowed: every file refused
    with pytest.raises(InputRefused):
        decode_uri(root / "clip.mp4", OPTIONS, access=InputAccess())


def test_a_fifo_or_device_under_a_root_is_refused_without_blocking(tree: dict[str, Path]) -> None:
    root = tree["root"]
    fifo = root / "pipe.mp4"
    os.mkfifo(fifo)
    for access in (InputAccess(roots=(str(root),)), None):
        outcome: list[BaseException] = []

        def attempt(
            access: InputAccess | None = access, out: list[BaseException] = outcome
        ) -> None:
            try:
                decode_uri(fifo, OPTIONS, access=access)
            except BaseException as e:
                out.append(e)

        thread = threading.Thread(target=attempt, daemon=True)
        started = time.monotonic()
        thread.start()
        thread.join(timeout=5)
        if thread.is_alive():  # unblock the open so the thread ends, then fail
            with open(fifo, "wb"):
                pass
            pytest.fail("opening a FIFO blocked")
        assert time.monotonic() - started < 5
        assert len(outcome) == 1 and isinstance(outcome[0], UnsupportedMedia), outcome
        assert "not a regular file" in str(outcome[0])
    access = InputAccess(roots=("/dev",))
    with pytest.raises(UnsupportedMedia, match="not a regular file"):
        decode_uri("/dev/zero", OPTIONS, content_type="video/mp4", access=access)


def test_the_pool_enforces_the_access_in_its_processes(tree: dict[str, Path]) -> None:
    access = InputAccess(roots=(str(tree["root"]),))
    with DecodePool(1) as pool:
        assert pool.decode_uri(tree["root"] / "clip.mp4", OPTIONS, access=access).frames
        with pytest.raises(InputRefused):
            pool.decode_uri(tree["secret"] / "weights.mp4", OPTIONS, access=access)


# ------------------------------------------------------------------------------------- URLs


class _Server:
    """A real HTTP server on one loopback address; records the paths it was asked for."""

    def __init__(self, host: str, folder: Path, redirects: dict[str, str]) -> None:
        self.requests: list[str] = []
        outer = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests.append(self.path)
                if self.path in redirects:
                    self.send_response(302)
                    self.send_header("Location", redirects[self.path])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                super().do_GET()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(
            (host, 0), functools.partial(Handler, directory=str(folder))
        )
        self.httpd.daemon_threads = True
        self.url = f"http://{host}:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@contextlib.contextmanager
def _servers(tree: dict[str, Path]) -> Iterator[tuple[_Server, _Server, dict[str, str]]]:
    """A public-facing server on 127.0.0.1 (the clip, and redirects) and an internal one on
    127.0.0.2 (the secret folder)."""
    redirects: dict[str, str] = {}
    public = _Server("127.0.0.1", tree["root"], redirects)
    internal = _Server("127.0.0.2", tree["secret"], {})
    try:
        yield public, internal, redirects
    finally:
        public.close()
        internal.close()


def test_url_hosts_and_their_addresses_are_checked(tree: dict[str, Path]) -> None:
    with _servers(tree) as (public, internal, _):
        url = f"{public.url}/clip.mp4"
        allowed = InputAccess(url_hosts=("127.0.0.1",), networks=LOOPBACK)
        assert decode_uri(url, OPTIONS, access=allowed).frames
        assert public.requests == ["/clip.mp4"]
        refusals = [
            # a host not on the list
            (InputAccess(url_hosts=("media.example.com",), networks=LOOPBACK), "not an allowed"),
            # an allowed host whose address is loopback, not allowed by name
            (InputAccess(url_hosts=("127.0.0.1",)), "resolves to 127.0.0.1"),
            # a name that resolves to loopback is refused after resolving it
            (InputAccess(url_hosts=("localhost",)), "resolves to"),
        ]
        for access, words in refusals:
            target = (
                url
                if "localhost" not in access.url_hosts
                else url.replace("127.0.0.1", "localhost")
            )
            with pytest.raises(InputRefused, match=words):
                decode_uri(target, OPTIONS, access=access)
        assert public.requests == ["/clip.mp4"]  # none of them reached the server
        with pytest.raises(InputRefused):  # no URL host at all: every URL refused
            decode_uri(url, OPTIONS, access=InputAccess(roots=(str(tree["root"]),)))
        assert internal.requests == []


def test_every_redirect_is_checked_before_it_is_followed(tree: dict[str, Path]) -> None:
    with _servers(tree) as (public, internal, redirects):
        secret = f"{internal.url}/weights.mp4"
        redirects["/to-internal.mp4"] = secret
        redirects["/to-public.mp4"] = f"{public.url}/clip.mp4"
        redirects["/loop.mp4"] = "/loop.mp4"
        # the redirect inside the allowed host is followed
        access = InputAccess(url_hosts=("127.0.0.1",), networks=LOOPBACK)
        assert decode_uri(f"{public.url}/to-public.mp4", OPTIONS, access=access).frames
        # to a host not allowed: refused, never asked
        with pytest.raises(InputRefused, match=r"127\.0\.0\.2.* not an allowed URL host"):
            decode_uri(f"{public.url}/to-internal.mp4", OPTIONS, access=access)
        # to an allowed host whose address is not: refused after resolving, never asked
        both = InputAccess(url_hosts=("127.0.0.1", "127.0.0.2"), networks=LOOPBACK)
        with pytest.raises(InputRefused, match=r"resolves to 127\.0\.0\.2"):
            decode_uri(f"{public.url}/to-internal.mp4", OPTIONS, access=both)
        assert internal.requests == []
        # allowed by name, the internal address is reached (the check, not a failure, refused)
        wide = InputAccess(url_hosts=("127.0.0.1", "127.0.0.2"), networks=("127.0.0.0/8",))
        assert decode_uri(f"{public.url}/to-internal.mp4", OPTIONS, access=wide).frames
        assert internal.requests == ["/weights.mp4"]
        # a redirect loop ends at the limit
        few = InputAccess(url_hosts=("127.0.0.1",), networks=LOOPBACK, max_redirects=3)
        public.requests.clear()
        with pytest.raises(InputRefused, match="more than 3 redirects"):
            decode_uri(f"{public.url}/loop.mp4", OPTIONS, access=few)
        assert public.requests == ["/loop.mp4"] * 4


def test_fetched_urls_keep_the_input_limits(tree: dict[str, Path]) -> None:
    from pipeline.decode import Limits

    with _servers(tree) as (public, _internal, _):
        access = InputAccess(url_hosts=("127.0.0.1",), networks=LOOPBACK)
        small = DecodeOptions(size=32, limits=Limits(max_input_bytes=1000))
        with pytest.raises(LimitExceeded, match="over the limit of 1000"):
            decode_uri(f"{public.url}/clip.mp4", small, access=access)
        with pytest.raises(MediaUnavailable, match="HTTP 404"):
            decode_uri(f"{public.url}/missing.mp4", OPTIONS, access=access)


def test_addresses_that_are_not_public_are_refused_unless_allowed() -> None:
    refused = [
        "127.0.0.1",
        "::1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",  # the metadata address
        "100.100.100.200",
        "100.64.0.1",
        "fd00:ec2::254",
        "fe80::1",
        "0.0.0.0",
        "224.0.0.1",
        "239.255.255.250",
        "::ffff:127.0.0.1",  # loopback as an IPv4-mapped IPv6 address
        "::ffff:10.0.0.1",
    ]
    for address in refused:
        assert not address_allowed(address), address
    for address in ("8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"):
        assert address_allowed(address), address
    assert address_allowed("10.1.2.3", ("10.0.0.0/8",))
    assert address_allowed("::ffff:10.0.0.1", ("10.0.0.0/8",))
    # allowing the link-local block does not allow the metadata address unless named
    assert not address_allowed("169.254.169.254", ("169.254.0.0/16",))
    assert address_allowed("169.254.169.254", ("169.254.169.254/32",))


def test_access_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="allowed network"):
        InputAccess(networks=("10.0.0.0/33",))
    with pytest.raises(ConfigError, match="not a host name"):
        InputAccess(url_hosts=("http://host",))
    access = InputAccess(url_hosts=("*.media.example.com", "Cdn.Example.com."))
    assert access.host_allowed("a.media.example.com") and access.host_allowed("cdn.example.com")
    assert not access.host_allowed("media.example.com.evil.net")
    assert not access.host_allowed("evilmedia.example.com")
