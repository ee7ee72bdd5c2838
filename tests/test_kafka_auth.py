"""Every clipguard command that talks to Kafka takes the worker's security settings.

The worker reads ``CLIPGUARD_SECURITY_PROTOCOL``, ``CLIPGUARD_SASL_*`` and ``CLIPGUARD_SSL_*``;
:func:`consumers.kafka_auth.client_security` hands the same to ``produce``, ``consume``, the
store sink, the backtest's ``--publish``, job submission and the studio's flag feed. Proven on
the settings themselves and on the wire: the embedded broker has no SASL users, so a produce
given SASL credentials is refused by it, while the same produce without them goes through.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from consumers.kafka_auth import SECURITY_KEYS, client_security
from pipeline.errors import ConfigError
from tests.kafkaspace import KafkaSpace
from tests.media import write_frames

_SASL_ENV = {
    "CLIPGUARD_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
    "CLIPGUARD_SASL_MECHANISM": "SCRAM-SHA-512",
    "CLIPGUARD_SASL_USERNAME": "clipguard-producer",
}


def _clear(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("CLIPGUARD_"):
            monkeypatch.delenv(name)


def test_no_security_settings_mean_plaintext(monkeypatch: pytest.MonkeyPatch) -> None:
    _clear(monkeypatch)
    assert client_security() == {"security_protocol": "PLAINTEXT"}


def test_sasl_settings_and_the_password_file_reach_every_client(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _clear(monkeypatch)
    secret = tmp_path / "producer-password"
    secret.write_text("s3cret-from-a-file\n")
    for name, value in _SASL_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("CLIPGUARD_SASL_PASSWORD_FILE", str(secret))
    config = client_security()
    assert config == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "clipguard-producer",
        "sasl_plain_password": "s3cret-from-a-file",
    }
    assert set(config) <= set(SECURITY_KEYS)


def test_a_broken_secret_file_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _clear(monkeypatch)
    for name, value in _SASL_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("CLIPGUARD_SASL_PASSWORD_FILE", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match=r"Kafka security settings .*missing"):
        client_security()


def test_produce_speaks_sasl_when_the_environment_says_so(
    kafka: KafkaSpace,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from consumers.cli import main

    kafka.create(only=["segments"])
    video = tmp_path / "clip.mp4"
    write_frames(video, [np.full((64, 64, 3), 8 * i, np.uint8) for i in range(30)])
    argv = [
        "produce",
        str(video),
        "--stream-id",
        "cam-auth",
        "--topic",
        kafka.names.segments,
        "--bootstrap-servers",
        kafka.bootstrap,
    ]
    _clear(monkeypatch)
    assert main(argv) == 0, capsys.readouterr()  # the control: plaintext goes through
    capsys.readouterr()
    for name, value in {**_SASL_ENV, "CLIPGUARD_SASL_MECHANISM": "PLAIN"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("CLIPGUARD_SASL_PASSWORD", "not-a-user-of-this-broker")
    assert main(argv) != 0
    captured = capsys.readouterr()
    assert "produced" not in captured.out
    assert "cannot connect to the broker" in captured.err  # its SASL handshake is refused
