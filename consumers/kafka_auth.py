"""Kafka security for every clipguard client, not only the worker.

The worker reads its connection security from its settings (``CLIPGUARD_SECURITY_PROTOCOL``,
``CLIPGUARD_SASL_MECHANISM``, ``CLIPGUARD_SASL_USERNAME``, ``CLIPGUARD_SASL_PASSWORD`` or
``CLIPGUARD_SASL_PASSWORD_FILE``, ``CLIPGUARD_SSL_*``: :class:`~consumers.settings.WorkerSettings`).
The other commands that talk to Kafka (``clipguard produce``, ``consume``, ``store sink``, the
backtest's ``--publish``, ``scan --bootstrap-servers`` job submission, the studio's flag feed)
take the same variables through :func:`client_security`, so one environment (or one mounted
secret file) serves a whole deployment; the broker address stays each command's own option.
"""

from __future__ import annotations

from typing import Any, Final

from pipeline.errors import ConfigError

__all__ = ["SECURITY_KEYS", "client_security"]

#: kafka-python keyword arguments that :func:`client_security` may return.
SECURITY_KEYS: Final = (
    "security_protocol",
    "sasl_mechanism",
    "sasl_plain_username",
    "sasl_plain_password",
    "ssl_cafile",
    "ssl_certfile",
    "ssl_keyfile",
)


def client_security() -> dict[str, Any]:
    """kafka-python security keyword arguments from the ``CLIPGUARD_*`` environment (empty
    apart from ``security_protocol="PLAINTEXT"`` when none is set). The SASL password is in
    clear text, as kafka-python needs it: never log the result. :class:`ConfigError` (naming
    the variable) when the environment's settings are invalid, e.g. an unreadable password
    file."""
    from consumers.settings import load_settings

    try:
        config = load_settings().kafka_client_config()
    except ConfigError as e:
        raise ConfigError(f"Kafka security settings (CLIPGUARD_* environment): {e}") from e
    return {key: config[key] for key in SECURITY_KEYS if key in config}
