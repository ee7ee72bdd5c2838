"""Settings of the stream worker: one frozen model, validated once at the edge.

:func:`load_settings` builds a :class:`WorkerSettings` from four layers, each overriding the
ones below it::

    overrides (command-line options)        load_settings(overrides={"decode.fit": "crop"})
    environment variables                   CLIPGUARD_MAX_BATCH_SIZE=32, CLIPGUARD_DECODE__FIT=crop
    config file (YAML or TOML)              load_settings(config_file=Path("worker.yaml"))
    defaults                                the field defaults below

Nested settings (``topics``, ``decode``, ``sampling``) take ``__`` in environment variable names
(``CLIPGUARD_TOPICS__SEGMENTS``), a nested table in a config file, and a dotted key in
``overrides``. Lists and whole nested models can be given as JSON in the environment
(``CLIPGUARD_POLICIES='["policies/a", "policies/b"]'``). A config file is data, never code:
YAML through ``yaml.safe_load``, TOML through ``tomllib``; an unknown key in it is an error that
names the key. Every failure is a :class:`~pipeline.errors.ConfigError`.

Secrets (``sasl_password``) are :class:`~pydantic.SecretStr`: hidden in ``repr``, ``str`` and
:meth:`WorkerSettings.kafka_client_config` ``(redact=True)``, the form to log. In production
give the password as a file (``sasl_password_file``, read by :mod:`consumers.secrets`), not in
the environment, which child processes inherit.
:func:`describe` renders every setting as a Markdown table for the docs.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Final, Literal, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from consumers.secrets import read_secret_file
from consumers.sections import DecodeSettings, JobsSettings, SamplingSettings, TopicNames
from pipeline.errors import ConfigError
from pipeline.policies.bundled import POLICIES_FOLDER, default_policies

__all__ = [
    "DecodeSettings",
    "Device",
    "LogFormat",
    "Precision",
    "SamplingSettings",
    "SaslMechanism",
    "SecurityProtocol",
    "TopicNames",
    "WorkerSettings",
    "describe",
    "load_settings",
    "topic_names_from_env",
]

ENV_PREFIX: Final = "CLIPGUARD_"
_NESTED_DELIMITER: Final = "__"
# The same name as pipeline.models.registry.DEMO_MODEL (a test pins it): importing the registry
# here would import torch, and settings are read before anything heavy is loaded.
_DEMO_MODEL: Final = "clipguard-demo"
_MIB: Final = 1024 * 1024
_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")

Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["auto", "fp32", "bf16", "fp16", "int8"]
LogFormat = Literal["text", "json"]
SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]

_MODEL_DESCRIPTION: Final = (
    "CLIP model name (see `clipguard models list`) or weights path. The default clipguard-demo "
    "is a demo model that only knows synthetic shapes, colours and a few printed words; for real "
    "moderation run `clipguard models download ViT-B/32` and set CLIPGUARD_MODEL=ViT-B/32."
)


# The config file's contents for the WorkerSettings being built by load_settings.
_config_file_data: ContextVar[Mapping[str, Any] | None] = ContextVar(
    "_config_file_data", default=None
)


class _ConfigFileSource(PydanticBaseSettingsSource):
    """The settings read from the config file by :func:`load_settings` (empty otherwise)."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        data = _config_file_data.get() or {}
        return data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_config_file_data.get() or {})


class WorkerSettings(BaseSettings):
    """Everything the stream worker can be configured with; build it with :func:`load_settings`
    (or directly, for environment and defaults only). Frozen once validated."""

    model_config = SettingsConfigDict(
        frozen=True,
        extra="forbid",
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=_NESTED_DELIMITER,
        case_sensitive=False,
        validate_default=True,
    )
    # the password read from sasl_password_file at validation (never a field: not dumped)
    _file_password: SecretStr | None = PrivateAttr(default=None)

    # --- Kafka ---
    bootstrap_servers: str = Field(
        default="127.0.0.1:9092", description="Kafka brokers, comma-separated host:port."
    )
    group_id: str = Field(
        default="clipguard-workers", min_length=1, description="Consumer group of the workers."
    )
    topics: TopicNames = Field(
        default_factory=TopicNames,
        description="Topic names (segments, scores, flags, dlq, state, jobs, job_status).",
    )
    max_poll_interval_ms: int = Field(
        default=10_000,
        gt=0,
        description="Consumer max poll interval, ms (low: Tansu group joins stall at 300 s).",
    )
    session_timeout_ms: int = Field(
        default=10_000, gt=0, description="Consumer group session timeout, ms."
    )
    max_partition_fetch_bytes: int = Field(
        default=16 * _MIB,
        gt=0,
        description="Largest fetch per partition, bytes (segments exceed 1 MiB).",
    )
    max_request_size: int = Field(
        default=16 * _MIB, gt=0, description="Largest producer request, bytes."
    )
    connect_timeout_s: float = Field(
        default=30.0,
        gt=0,
        allow_inf_nan=False,
        description="How long to try reaching the brokers at start-up before giving up, s.",
    )
    retries: int = Field(
        default=5, ge=0, description="Attempts after a transient failure before giving up."
    )
    retry_backoff_ms: int = Field(
        default=200, gt=0, description="Wait before retrying a transient failure, ms."
    )
    security_protocol: SecurityProtocol = Field(
        default="PLAINTEXT",
        description="Kafka security: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL.",
    )
    sasl_mechanism: SaslMechanism | None = Field(
        default=None,
        description="SASL mechanism (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512); SASL_* only.",
    )
    sasl_username: SecretStr | None = Field(default=None, description="SASL user name.")
    sasl_password: SecretStr | None = Field(
        default=None,
        description="SASL password (prefer sasl_password_file: the environment is visible to "
        "the worker's child processes).",
    )
    sasl_password_file: Path | None = Field(
        default=None,
        description="File holding the SASL password (e.g. /run/secrets/kafka_password), read "
        "once at start: a regular file of one line, at most 4096 bytes. Not with "
        "sasl_password.",
    )
    ssl_cafile: Path | None = Field(
        default=None, description="CA certificates (PEM) to verify the brokers."
    )
    ssl_certfile: Path | None = Field(default=None, description="Client certificate (PEM).")
    ssl_keyfile: Path | None = Field(default=None, description="Client private key (PEM).")

    # --- model and policies ---
    model: str = Field(default=_DEMO_MODEL, min_length=1, description=_MODEL_DESCRIPTION)
    policies: Annotated[tuple[Path, ...], NoDecode] = Field(
        default=None,  # type: ignore[arg-type]  # resolved from the model by _default_policies
        description="Policy files or folders (in the environment: one path, comma-separated "
        "paths or a JSON list); default: the demo policies bundled with clipguard for the demo "
        "model (found from any directory), else policies.",
    )
    banks: Annotated[tuple[Path, ...], NoDecode] = Field(
        default=(),
        description="Hash bank files (*.bank.tsv) or folders, for kind: hash policies (as "
        "policies: one path, comma-separated paths or a JSON list); reloaded when they change. "
        "Unset: no banks (a hash policy is then an error).",
    )
    device: Device = Field(default="auto", description="Encoder device: auto, cpu or cuda.")
    precision: Precision = Field(
        default="auto",
        description="Image encoder precision: auto (on a CPU the fastest of int8, bf16 and "
        "fp32 that passes the accuracy guard, through OpenVINO; on CUDA fp16), fp32, bf16, "
        "fp16 (CUDA) or int8 (CPU). The mode in force is logged, exported as a metric label "
        "and written in every score record.",
    )
    guard_min_mean_cosine: float = Field(
        default=0.995,
        gt=0,
        le=1,
        description="Accuracy guard: the least mean cosine a converted image encoder's "
        "embeddings may have with fp32's on the validation frames.",
    )
    guard_images: Path | None = Field(
        default=None,
        description="Accuracy guard: a folder of your own images added to the validation "
        "frames (png, jpeg, webp).",
    )
    encoder_threads: int = Field(
        default=0,
        ge=0,
        description="CPU threads of the encoder on a CPU device; 0: the cores the decode "
        "processes leave (at least 1), so the stages do not fight over cores.",
    )
    policy_reload_interval_s: float = Field(
        default=2.0,
        gt=0,
        allow_inf_nan=False,
        description="How often policy and bank files are checked, s.",
    )

    # --- batching, decoding, sampling ---
    max_batch_size: int = Field(default=64, gt=0, description="Most frames in one encoder batch.")
    max_batch_wait_ms: int = Field(
        default=20, ge=0, description="Longest wait to fill an encoder batch, ms."
    )
    decode: DecodeSettings = Field(
        default_factory=DecodeSettings, description="Decode processes, fit and limits."
    )
    sampling: SamplingSettings = Field(
        default_factory=SamplingSettings, description="Which frames are scored."
    )
    max_inflight_segments: int = Field(
        default=32, gt=0, description="Segments in progress before consuming pauses."
    )
    jobs_enabled: bool = Field(
        default=True,
        description="Also run scan jobs from the jobs topic (one at a time, in their own thread "
        "and consumer group: group_id + '-jobs'), when the topic exists and jobs.allowed_roots "
        "or jobs.allowed_url_hosts allows something.",
    )
    jobs: JobsSettings = Field(
        default_factory=JobsSettings,
        description="What scan jobs may read (allowed roots, URL hosts, networks).",
    )
    max_ts_jump_s: float = Field(
        default=3600.0,
        gt=0,
        allow_inf_nan=False,
        description="Largest start-ts jump (forward or back) a stream may make; a larger one "
        "restarts the stream's temporal state (its incidents close; counted in "
        "clipguard_stream_timeline_resets_total) so one bad timestamp cannot silence it.",
    )
    stream_idle_close_s: float = Field(
        default=300.0,
        ge=0,
        allow_inf_nan=False,
        description="Close the open incidents of a stream that sent nothing for this long and "
        "forget it (a stream that stops without stream-end); 0: never.",
    )
    store_embeddings: bool = Field(
        default=False,
        description="Publish every scored frame's embedding (float16) and policy set to the "
        "embeddings topic, one Arrow record per segment, for the frame store's sink.",
    )
    store_thumbnails: bool = Field(
        default=True,
        description="With store_embeddings: include a JPEG thumbnail (at most 128 px) of each "
        "frame. Thumbnails show what was flagged: see the README on who may read a store.",
    )
    checkpoint_state: bool = Field(
        default=True,
        description="Checkpoint each stream's temporal state to the state topic, so a restart "
        "or a partition move continues open incidents with the same event ids.",
    )

    # --- operations ---
    shutdown_deadline_s: float = Field(
        default=30.0, gt=0, allow_inf_nan=False, description="Drain time on SIGTERM, s."
    )
    metrics_port: int = Field(
        default=9400, ge=0, le=65535, description="Prometheus metrics port; 0 disables."
    )
    metrics_host: str = Field(
        default="127.0.0.1", min_length=1, description="Address the metrics server binds."
    )
    log_format: LogFormat = Field(default="text", description="Log lines as text or json.")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # No .env or secrets directory: settings come from the places load_settings names.
        return init_settings, env_settings, _ConfigFileSource(settings_cls)

    @field_validator("bootstrap_servers")
    @classmethod
    def _valid_servers(cls, value: str) -> str:
        servers = [s.strip() for s in value.split(",")]
        for server in servers:
            host, sep, port = server.rpartition(":")
            if not (sep and host and port.isdigit() and 0 < int(port) <= 65535):
                raise ValueError(f"expected host:port[,host:port...], got {server!r}")
        return ",".join(servers)

    @field_validator("policies", "banks", mode="before")
    @classmethod
    def _default_policies(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None and info.field_name == "banks":
            return ()
        if value is None:
            if info.data.get("model", _DEMO_MODEL) == _DEMO_MODEL:
                return (default_policies(demo=True),)
            try:
                return (default_policies(demo=False),)
            except ConfigError:  # loading the policies names the missing folder
                return (POLICIES_FOLDER,)
        if isinstance(value, Path):
            return (value,)
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                try:
                    return tuple(json.loads(text))
                except ValueError as e:
                    raise ValueError(f"not a JSON list of paths: {e}") from None
            return tuple(part.strip() for part in text.split(",") if part.strip())
        return value

    @field_validator("policies")
    @classmethod
    def _some_policies(cls, value: tuple[Path, ...]) -> tuple[Path, ...]:
        if not value:
            raise ValueError("at least one policy path is needed")
        return value

    @field_validator("ssl_cafile", "ssl_certfile", "ssl_keyfile")
    @classmethod
    def _file_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"no such file: {value}")
        return value

    @model_validator(mode="after")
    def _security_consistent(self) -> WorkerSettings:
        if self.sasl_password is not None and self.sasl_password_file is not None:
            raise ValueError(
                "sasl_password and sasl_password_file are both set: give the password one way "
                "(the file, preferably)"
            )
        if self.sasl_password_file is not None:
            self._file_password = SecretStr(
                read_secret_file(self.sasl_password_file, what="sasl_password_file")
            )
        sasl = self.security_protocol.startswith("SASL_")
        if sasl:
            missing = [
                name
                for name in ("sasl_mechanism", "sasl_username", "sasl_password")
                if getattr(self, name) is None
                and not (name == "sasl_password" and self._file_password is not None)
            ]
            if missing:
                named = [
                    m + (" (or sasl_password_file)" if m == "sasl_password" else "")
                    for m in missing
                ]
                raise ValueError(
                    f"security_protocol {self.security_protocol} needs {', '.join(named)}"
                )
        elif self.sasl_mechanism is not None:
            raise ValueError(
                f"sasl_mechanism is set but security_protocol is {self.security_protocol}"
            )
        if self.ssl_keyfile is not None and self.ssl_certfile is None:
            raise ValueError("ssl_keyfile needs ssl_certfile")
        return self

    @property
    def is_demo_model(self) -> bool:
        """Whether the model is the bundled demo model (synthetic shapes, colours and words)."""
        return self.model == _DEMO_MODEL

    def resolved_device(self) -> Literal["cpu", "cuda"]:
        """The device to run on: ``auto`` is ``cuda`` when torch sees a GPU, else ``cpu``."""
        if self.device != "auto":
            return self.device
        import torch  # heavy: only when a device is actually chosen

        return "cuda" if torch.cuda.is_available() else "cpu"

    def kafka_client_config(self, *, redact: bool = False) -> dict[str, Any]:
        """Connection and security keyword arguments shared by kafka-python's ``KafkaConsumer``
        and ``KafkaProducer``. It holds the SASL password in clear text, as kafka-python needs:
        log only the ``redact=True`` form, which replaces it with ``"**********"``."""
        config: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers.split(","),
            "security_protocol": self.security_protocol,
            "retry_backoff_ms": self.retry_backoff_ms,
            "bootstrap_timeout_ms": int(self.connect_timeout_s * 1000),
        }
        if self.sasl_mechanism is not None:
            config["sasl_mechanism"] = self.sasl_mechanism
        for key, secret in (
            ("sasl_plain_username", self.sasl_username),
            ("sasl_plain_password", self.sasl_password or self._file_password),
        ):
            if secret is not None:
                config[key] = str(secret) if redact else secret.get_secret_value()
        for key, path in (
            ("ssl_cafile", self.ssl_cafile),
            ("ssl_certfile", self.ssl_certfile),
            ("ssl_keyfile", self.ssl_keyfile),
        ):
            if path is not None:
                config[key] = str(path)
        return config

    def consumer_config(self, *, redact: bool = False) -> dict[str, Any]:
        """Keyword arguments for kafka-python's ``KafkaConsumer``: offsets are committed by the
        worker after its outputs are acknowledged, never automatically."""
        return {
            **self.kafka_client_config(redact=redact),
            "group_id": self.group_id,
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            "max_poll_interval_ms": self.max_poll_interval_ms,
            "session_timeout_ms": self.session_timeout_ms,
            "max_partition_fetch_bytes": self.max_partition_fetch_bytes,
        }

    def producer_config(self, *, redact: bool = False) -> dict[str, Any]:
        """Keyword arguments for kafka-python's ``KafkaProducer``: acknowledged by all replicas,
        with the settings' retries and request size."""
        return {
            **self.kafka_client_config(redact=redact),
            "acks": "all",
            "retries": self.retries,
            "max_request_size": self.max_request_size,
        }


def load_settings(
    *, config_file: Path | None = None, overrides: Mapping[str, Any] | None = None
) -> WorkerSettings:
    """Validate the worker's settings: ``overrides`` (command-line options; dotted keys such as
    ``"decode.fit"`` reach nested settings, ``None`` values mean "not given") over environment
    variables over ``config_file`` (YAML or TOML, by suffix) over defaults.

    Raises :class:`~pipeline.errors.ConfigError` for an unreadable or malformed config file, an
    unknown key (named), or an invalid value."""
    file_data: dict[str, Any] = {}
    if config_file is not None:
        file_data = _read_config_file(config_file)
        _check_keys(file_data, WorkerSettings, where=str(config_file))
    init = _expand_dotted(
        {key: value for key, value in (overrides or {}).items() if value is not None}
    )
    _check_keys(init, WorkerSettings, where="overrides")
    token = _config_file_data.set(file_data)
    try:
        return WorkerSettings(**init)
    except ValidationError as e:
        raise ConfigError(_explain(e, config_file)) from e
    finally:
        _config_file_data.reset(token)


class _TopicsFromEnvironment(BaseSettings):
    """Only the topic names, from the environment variables a worker reads them from."""

    model_config = SettingsConfigDict(
        frozen=True,
        extra="ignore",
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=_NESTED_DELIMITER,
        case_sensitive=False,
    )

    # (no env_file or secrets_dir is configured: the environment is the only source)
    topics: TopicNames = Field(default_factory=TopicNames)


def topic_names_from_env() -> TopicNames:
    """The topic names the environment gives the workers (``CLIPGUARD_TOPICS__JOBS=...``, or
    ``CLIPGUARD_TOPICS`` as JSON), defaults for the rest: for clients that talk to a worker
    fleet without being workers (``clipguard scan --bootstrap-servers``). Other ``CLIPGUARD_``
    variables are not read. Raises :class:`~pipeline.errors.ConfigError` for an invalid name."""
    try:
        return _TopicsFromEnvironment().topics
    except ValidationError as e:
        raise ConfigError(_explain(e, None)) from e


def describe() -> str:
    """Every setting as a Markdown table: environment variable, type, default, description."""
    rows = ["| environment variable | type | default | description |", "| --- | --- | --- | --- |"]
    for env, field in _walk_fields(WorkerSettings, ENV_PREFIX):
        rows.append(
            "| "
            + " | ".join(
                _cell(s)
                for s in (
                    f"`{env}`",
                    _type_name(field.annotation),
                    _default_text(env, field),
                    field.description or "",
                )
            )
            + " |"
        )
    return "\n".join(rows) + "\n"


# --- helpers -----------------------------------------------------------------------------------


def _read_config_file(path: Path) -> dict[str, Any]:
    suffix = path.suffix.lower()
    try:
        if suffix in {".yaml", ".yml"}:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        elif suffix == ".toml":
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        else:
            raise ConfigError(f"{path}: config files are .yaml, .yml or .toml, not {suffix!r}")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file: {e.strerror or e}") from e
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{path}: not valid {suffix.lstrip('.').upper()}: {e}") from e
    if data is None:  # an empty YAML file
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    return data


def _expand_dotted(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{"decode.fit": "crop"}`` -> ``{"decode": {"fit": "crop"}}``."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"overrides: {key!r} conflicts with a value for {part!r}")
            node = child
        if isinstance(value, Mapping) and isinstance(node.get(leaf), dict):
            node[leaf].update(value)
        else:
            node[leaf] = value
    return out


def _check_keys(data: Mapping[str, Any], model: type[BaseModel], *, where: str) -> None:
    """Reject keys that are not settings, naming them (``decode.fitt``)."""
    for key, value in data.items():
        field = model.model_fields.get(key) if isinstance(key, str) else None
        if field is None:
            raise ConfigError(f"{where}: unknown setting {key!r}")
        section = _section_of(field)
        if section is not None and isinstance(value, Mapping):
            try:
                _check_keys(value, section, where=where)
            except ConfigError as e:
                raise ConfigError(
                    str(e).replace("unknown setting '", f"unknown setting '{key}.", 1)
                ) from None


def _section_of(field: FieldInfo) -> type[BaseModel] | None:
    annotation = field.annotation
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _explain(error: ValidationError, config_file: Path | None) -> str:
    problems = []
    for item in error.errors(include_url=False, include_input=False):
        where = ".".join(str(part) for part in item["loc"]) or "settings"
        problems.append(f"{where}: {item['msg']}")
    source = f" (config file {config_file})" if config_file else ""
    return f"invalid worker settings{source}: " + "; ".join(problems)


def _walk_fields(model: type[BaseModel], prefix: str) -> Iterator[tuple[str, FieldInfo]]:
    for name, field in model.model_fields.items():
        env = f"{prefix}{name.upper()}"
        section = _section_of(field)
        if section is not None:
            yield from _walk_fields(section, env + _NESTED_DELIMITER)
        else:
            yield env, field


def _type_name(annotation: Any) -> str:
    if annotation is type(None):
        return "unset"
    origin = get_origin(annotation)
    if origin is Literal:
        return " or ".join(json.dumps(arg) for arg in get_args(annotation))
    if origin is tuple:
        return f"list of {_type_name(get_args(annotation)[0])}"
    args = get_args(annotation)
    if args and origin is not None:  # a union such as int | None
        return " or ".join(_type_name(arg) for arg in args)
    if annotation is SecretStr:
        return "secret string"
    if annotation is Path:
        return "path"
    return getattr(annotation, "__name__", str(annotation))


def _default_text(env: str, field: FieldInfo) -> str:
    if env == f"{ENV_PREFIX}POLICIES":
        return f"the bundled demo policies (demo model), else `{POLICIES_FOLDER}`"
    default = field.default
    if default is PydanticUndefined or default is None:
        return "unset"
    if SecretStr in (field.annotation, *get_args(field.annotation)):
        return "unset"  # never print a secret, even a default one
    return f"`{default}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
