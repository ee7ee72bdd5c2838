"""The studio's settings, validated once when it starts (:class:`StudioConfig`)."""

from __future__ import annotations

import getpass
import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from pipeline.errors import ConfigError

__all__ = ["DEFAULT_MAX_UPLOAD_BYTES", "StudioConfig", "is_loopback"]

#: Uploads to the Try page are refused above this many bytes (a short clip or a photo).
DEFAULT_MAX_UPLOAD_BYTES: Final = 50 * 1024**2
_MIN_TOKEN_LENGTH: Final = 16
_TOPIC: Final = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) only accepts connections from this
    machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class StudioConfig:
    """Everything the studio needs to know, checked when it is made.

    Bound anywhere but the loopback interface, the studio requires ``token`` (every request
    carries it, once as ``?token=`` which sets a cookie, or as ``Authorization: Bearer``), or
    ``behind_proxy`` (an authenticating reverse proxy in front of it, which is then the only
    thing allowed to reach it; the reviewer's name is read from ``user_header``)."""

    policies_dir: Path  # the policy files: the source of truth, edited as new versions
    data_dir: Path  # uploads, thumbnails, version history, audit log, labels database
    model: str | None = None  # score with this model instead of each policy's own
    host: str = "127.0.0.1"
    port: int = 8600
    token: str | None = None
    behind_proxy: bool = False
    user_header: str = "X-Forwarded-User"  # who is acting, as the proxy says (behind_proxy)
    user: str = ""  # who is acting otherwise (default: the account running the studio)
    incidents: Path | None = None  # flag events (JSON lines) for the review queue
    flags_topic: str | None = None  # the flags topic, read into the review queue as it grows
    bootstrap_servers: str = "127.0.0.1:9092"  # Kafka, for flags_topic
    store: Path | None = None  # stored frame embeddings (`clipguard store`), when there are
    banks: tuple[Path, ...] = ()  # hash bank files or folders, for hash policies (kind: hash)
    warm: bool = True  # compute the store's answers in the background (consumers.studio.warm)
    prepare_store: bool = False  # compute them before serving instead (a longer start)
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    sample_fps: float = 2.0  # frames a second scored in uploaded videos
    precision: str = (
        "fp32"  # image encoder precision for uploads: fp32 (reference) or as load_encoder
    )

    def __post_init__(self) -> None:
        if not self.policies_dir.is_dir():
            raise ConfigError(f"policies folder {self.policies_dir} is not a folder")
        if self.precision not in ("auto", "fp32", "bf16", "fp16", "int8"):
            raise ConfigError(
                f"precision must be auto, fp32, bf16, fp16 or int8, not {self.precision!r}"
            )
        if not 0 < self.port < 65536:
            raise ConfigError(f"port must be in 1-65535, not {self.port}")
        if self.token is not None and len(self.token) < _MIN_TOKEN_LENGTH:
            raise ConfigError(f"the token must be at least {_MIN_TOKEN_LENGTH} characters long")
        if not self.loopback and self.token is None and not self.behind_proxy:
            raise ConfigError(
                f"the studio is bound to {self.host}, which other machines can reach: give a "
                "--token (or CLIPGUARD_STUDIO_TOKEN), or --behind-proxy when an authenticating "
                "reverse proxy is the only way in"
            )
        if self.flags_topic is not None and not _TOPIC.match(self.flags_topic):
            raise ConfigError(f"not a Kafka topic name: {self.flags_topic!r}")
        if not 1024 <= self.max_upload_bytes <= 2 * 1024**3:
            raise ConfigError("max_upload_bytes must be between 1 KiB and 2 GiB")
        if not 0 < self.sample_fps <= 30:
            raise ConfigError(f"sample_fps must be in (0, 30], not {self.sample_fps}")
        if not self.user:
            object.__setattr__(self, "user", _account())

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)


def _account() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        return "studio"
