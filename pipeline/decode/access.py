"""What an input reference from an untrusted sender may reach: files under allowed roots, URLs
on allowed hosts whose addresses are public (or allowed by name).

A scan job names its input (``clipguard.jobs``); whoever can write that topic must not steer a
worker to its model weights, ``/etc/passwd``, a FIFO, the worker's own ``/metrics`` or a cloud
metadata address. :class:`InputAccess` says what is allowed; the decode process enforces it
(:func:`~pipeline.decode.decode_uri` with ``access``):

- **files** (:func:`open_input_file`): the path is resolved with :func:`os.path.realpath` (no
  symlink or ``..`` escape) and must lie under one of ``roots``; it is opened with
  ``O_NOFOLLOW | O_NONBLOCK`` (a FIFO cannot block the open), the descriptor's own path is
  checked again where ``/proc/self/fd`` exists (a swap between the check and the open is
  caught), and only a regular file within the size limit is read;
- **URLs** (:func:`fetch_url`): http(s) only, the host must be one of ``url_hosts``
  (``*.example.com`` for its subdomains); the host is resolved and *every* address it resolves
  to must be public unicast (not loopback, private, link-local, carrier-grade NAT, multicast,
  reserved, unspecified, nor the metadata addresses), unless inside one of ``networks``; the
  connection goes to the checked address (pinned, so a second DNS answer cannot move it), and
  each redirect is checked the same way before it is followed (at most ``max_redirects``).

Refusals raise :class:`~pipeline.errors.InputRefused` with the detail in the message; a job's
status carries only the class and a generic reason (:mod:`consumers.jobs.reasons`).

Fetching is written on :mod:`http.client` here rather than with an HTTP library: the address
check has to sit between name resolution and connecting, on every redirect, and FFmpeg's HTTP
input (used for unrestricted URLs) resolves and follows redirects inside itself.
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import ipaddress
import os
import socket
import ssl
import stat
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final
from urllib.parse import urljoin, urlsplit

from pipeline.errors import (
    ConfigError,
    DecodeTimeout,
    InputRefused,
    LimitExceeded,
    MediaUnavailable,
    UnsupportedMedia,
)

__all__ = [
    "InputAccess",
    "address_allowed",
    "fetch_url",
    "open_input_file",
]

_Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Cloud instance metadata services: link-local or private already, listed so that an operator
# who allows a private range still has to name them to reach them.
_METADATA: Final = tuple(
    ipaddress.ip_network(n)
    for n in ("169.254.169.254/32", "169.254.170.2/32", "fd00:ec2::254/128", "100.100.100.200/32")
)
_REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})
_CHUNK: Final = 1 << 16
_SPOOL_BYTES: Final = 8 << 20  # bodies up to this stay in memory, larger ones go to a temp file
_HOST_CHARS: Final = 253


@dataclass(frozen=True, slots=True)
class InputAccess:
    """The files and URLs an untrusted input reference may name (see the module docstring).

    Empty ``roots`` refuses every file, empty ``url_hosts`` every URL. ``networks`` (CIDR)
    allows addresses that are otherwise refused, for storage on a private network."""

    roots: tuple[str, ...] = ()  # folders, resolved with realpath
    url_hosts: tuple[str, ...] = ()  # host names (lower case), "*.example.com" for subdomains
    networks: tuple[str, ...] = ()  # CIDR blocks allowed although not public
    max_redirects: int = 5  # most redirects followed per URL

    def __post_init__(self) -> None:
        roots = tuple(os.path.realpath(r) for r in self.roots)
        for root in roots:
            if not os.path.isabs(root):
                raise ConfigError(f"allowed root {root!r} is not an absolute path")
        object.__setattr__(self, "roots", roots)
        hosts = tuple(h.strip().lower().rstrip(".") for h in self.url_hosts)
        for host in hosts:
            if not host or len(host) > _HOST_CHARS or any(c in host for c in "/:@ \t"):
                raise ConfigError(f"allowed URL host {host!r} is not a host name")
        object.__setattr__(self, "url_hosts", hosts)
        try:
            for network in self.networks:
                ipaddress.ip_network(network, strict=False)
        except ValueError as e:
            raise ConfigError(f"allowed network: {e}") from e
        if self.max_redirects < 0:
            raise ConfigError("max_redirects must be 0 or more")

    @property
    def configured(self) -> bool:
        """Whether anything at all is allowed."""
        return bool(self.roots or self.url_hosts)

    def path_allowed(self, path: str) -> bool:
        """Whether a resolved path lies inside one of the roots."""
        return any(_inside(path, root) for root in self.roots)

    def host_allowed(self, host: str) -> bool:
        """Whether a URL's host name is one of ``url_hosts``."""
        host = host.lower().rstrip(".")
        for allowed in self.url_hosts:
            if allowed.startswith("*."):
                if host.endswith(allowed[1:]) and len(host) > len(allowed) - 1:
                    return True
            elif host == allowed:
                return True
        return False


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def address_allowed(address: str, networks: tuple[str, ...] = ()) -> bool:
    """Whether a connection to ``address`` is allowed: inside one of ``networks``, or public
    unicast (IPv4-mapped IPv6 addresses are judged as their IPv4 address)."""
    ip: _Address = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    allowed = [n for n in map(_network, networks) if ip.version == n.version and ip in n]
    metadata = [m for m in _METADATA if ip.version == m.version and ip in m]
    if metadata:  # only a block inside the metadata address itself allows it
        return any(n.subnet_of(m) for n in allowed for m in metadata)  # type: ignore[arg-type]
    return bool(allowed) or (ip.is_global and not ip.is_multicast)


def _network(text: str) -> _Network:
    return ipaddress.ip_network(text, strict=False)


# ------------------------------------------------------------------------------------ files


def open_input_file(
    path: str | os.PathLike[str], access: InputAccess | None, *, limit: int, label: str
) -> tuple[IO[bytes], int]:
    """Open a stored input for reading: a regular file within ``limit`` bytes, and with
    ``access``, inside its roots after resolving symlinks and ``..``. Opened non-blocking, so a
    FIFO or device refuses instead of hanging. Returns the handle and the file's size."""
    name = os.fspath(path)
    if access is not None:
        name = os.path.realpath(name)
        if not access.path_allowed(name):
            raise InputRefused(f"{label}: {name!r} is not under an allowed root")
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    if access is not None:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(name, flags)
    except FileNotFoundError as e:
        raise MediaUnavailable(f"{label}: no such file") from e
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise InputRefused(f"{label}: a symbolic link swapped in while opening") from e
        raise MediaUnavailable(f"{label}: cannot open ({e.strerror or e})") from e
    try:
        if access is not None:
            _check_opened(fd, access, label)
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise MediaUnavailable(f"{label}: a folder, not a file")
        if not stat.S_ISREG(info.st_mode):
            raise UnsupportedMedia(f"{label}: not a regular file")
        if info.st_size > limit:
            raise LimitExceeded(f"{label}: {info.st_size} bytes, over the limit of {limit}")
        os.set_blocking(fd, True)
        handle = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    return handle, info.st_size


def _check_opened(fd: int, access: InputAccess, label: str) -> None:
    """Where the platform says which file a descriptor is, it must still be under a root (a
    folder swapped for a symlink between resolving and opening is caught here)."""
    link = Path(f"/proc/self/fd/{fd}")
    try:
        actual = os.readlink(link)
    except OSError:  # no /proc: the resolved path and O_NOFOLLOW are the check
        return
    if not access.path_allowed(actual):
        raise InputRefused(f"{label}: opened {actual!r}, which is not under an allowed root")


# ------------------------------------------------------------------------------------- URLs


class _PinnedHTTP(http.client.HTTPConnection):
    """HTTP to a checked address; the Host header keeps the name."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    """HTTPS to a checked address; SNI and the certificate check use the name."""

    def __init__(
        self, host: str, port: int, address: str, timeout: float, context: ssl.SSLContext
    ) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self._address = address
        self._tls = context

    def connect(self) -> None:
        raw = socket.create_connection((self._address, self.port), self.timeout)
        try:
            self.sock = self._tls.wrap_socket(raw, server_hostname=self.host)
        except BaseException:
            raw.close()
            raise


def _checked_address(host: str, port: int, access: InputAccess, label: str) -> str:
    """The address to connect to: every address the host resolves to must be allowed (a name
    that also resolves to an internal address is refused, whichever would be used)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise MediaUnavailable(f"{label}: cannot resolve {host!r} ({e})") from e
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    refused = [a for a in addresses if not address_allowed(a, access.networks)]
    if refused or not addresses:
        raise InputRefused(f"{label}: {host!r} resolves to {', '.join(refused)}, not allowed")
    return addresses[0]


def _connection(
    url: str, access: InputAccess, timeout: float, ca_file: str | None, label: str
) -> tuple[http.client.HTTPConnection, str]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise InputRefused(f"{label}: scheme {scheme!r} is not allowed")
    host = parts.hostname or ""
    if parts.username is not None or parts.password is not None:
        raise InputRefused(f"{label}: credentials in a URL are not accepted")
    if not access.host_allowed(host):
        raise InputRefused(f"{label}: host {host!r} is not an allowed URL host")
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError as e:
        raise InputRefused(f"{label}: {e}") from e
    address = _checked_address(host, port, access, label)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if scheme == "https":
        context = ssl.create_default_context(cafile=ca_file)
        return _PinnedHTTPS(host, port, address, timeout, context), target
    return _PinnedHTTP(host, port, address, timeout), target


def fetch_url(
    url: str,
    access: InputAccess,
    *,
    limit: int,
    timeout: float,
    network_timeout: float,
    label: str,
    ca_file: str | None = None,
) -> IO[bytes]:
    """The body of an http(s) URL that ``access`` allows, in a seekable temporary file (in
    memory up to 8 MiB), positioned at its start; each redirect is checked before it is
    followed. ``limit`` bounds the body, ``timeout`` the whole fetch, ``network_timeout``
    connecting and each read."""
    deadline = time.monotonic() + timeout
    for _hop in range(access.max_redirects + 1):
        conn, target = _connection(url, access, network_timeout, ca_file, label)
        try:
            try:
                conn.request("GET", target, headers={"Accept-Encoding": "identity"})
                response = conn.getresponse()
            except (OSError, http.client.HTTPException) as e:
                if isinstance(e, TimeoutError | socket.timeout):
                    raise DecodeTimeout(f"{label}: the server did not answer in time") from e
                raise MediaUnavailable(f"{label}: {type(e).__name__}: {e}") from e
            if response.status in _REDIRECTS:
                location = response.getheader("Location")
                if not location:
                    raise MediaUnavailable(f"{label}: HTTP {response.status} without Location")
                url = urljoin(url, location)
                continue
            if response.status != 200:
                raise MediaUnavailable(f"{label}: HTTP {response.status} {response.reason}")
            return _read_body(response, limit=limit, deadline=deadline, label=label)
        finally:
            conn.close()
    raise InputRefused(f"{label}: more than {access.max_redirects} redirects")


def _read_body(
    response: http.client.HTTPResponse, *, limit: int, deadline: float, label: str
) -> IO[bytes]:
    length = response.getheader("Content-Length")
    if length is not None and length.strip().isdigit() and int(length) > limit:
        raise LimitExceeded(f"{label}: {int(length)} bytes, over the limit of {limit}")
    body: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES)  # noqa: SIM115
    try:
        total = 0
        while True:
            if time.monotonic() > deadline:
                raise DecodeTimeout(f"{label}: reading took longer than the time limit")
            try:
                chunk = response.read(_CHUNK)
            except (OSError, http.client.HTTPException) as e:
                if isinstance(e, TimeoutError | socket.timeout):
                    raise DecodeTimeout(f"{label}: a network read stalled") from e
                raise MediaUnavailable(f"{label}: {type(e).__name__}: {e}") from e
            if not chunk:
                break
            total += len(chunk)
            if total > limit:
                raise LimitExceeded(f"{label}: more than {limit} bytes, the input limit")
            body.write(chunk)
        body.seek(0)
        return body
    except BaseException:
        with contextlib.suppress(OSError):
            body.close()
        raise
