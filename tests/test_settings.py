"""Worker settings: defaults, the four layers and their precedence, validation, secrets, docs."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import pytest

import consumers.settings as settings_module
from consumers.broker import DEFAULT_TOPICS
from consumers.settings import WorkerSettings, describe, load_settings, topic_names_from_env
from pipeline.decode import Limits, Sampling
from pipeline.errors import ConfigError
from pipeline.policies.bundled import DEMO_POLICIES


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No CLIPGUARD_ variable of the caller's shell leaks into these tests."""
    import os

    for name in list(os.environ):
        if name.upper().startswith("CLIPGUARD_"):
            monkeypatch.delenv(name)


def test_exported_names() -> None:
    assert sorted(settings_module.__all__) == [
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


def test_defaults() -> None:
    s = load_settings()
    assert s.bootstrap_servers == "127.0.0.1:9092"
    assert s.group_id == "clipguard-workers"
    assert (s.topics.segments, s.topics.scores, s.topics.flags, s.topics.dlq) == (
        "clipguard.segments",
        "clipguard.scores",
        "clipguard.flags",
        "clipguard.dlq",
    )
    assert s.model == "clipguard-demo" and s.is_demo_model
    assert s.policies == (DEMO_POLICIES,)
    assert (s.device, s.precision) == ("auto", "auto")
    assert (s.max_batch_size, s.max_batch_wait_ms, s.max_inflight_segments) == (64, 20, 32)
    assert s.decode.processes == 2 and s.decode.fit == "pad"
    assert s.decode.max_input_bytes == 16 * 1024 * 1024 and s.decode.timeout_s == 30.0
    assert s.sampling.mode == "fps" and s.sampling.fps == 2.0
    assert s.max_poll_interval_ms == 10_000
    assert s.max_partition_fetch_bytes == s.max_request_size == 16 * 1024 * 1024
    assert (s.shutdown_deadline_s, s.metrics_port, s.metrics_host) == (30.0, 9400, "127.0.0.1")
    assert s.policy_reload_interval_s == 2.0 and s.log_format == "text"
    assert s.security_protocol == "PLAINTEXT" and s.sasl_password is None


def test_defaults_match_the_contracts() -> None:
    from pipeline.models.registry import DEMO_MODEL

    s = WorkerSettings()
    assert s.model == DEMO_MODEL
    for topic in (s.topics.segments, s.topics.scores, s.topics.flags, s.topics.dlq):
        assert topic in DEFAULT_TOPICS


def test_frozen() -> None:
    s = WorkerSettings()
    with pytest.raises(ValueError, match="frozen"):
        s.max_batch_size = 1  # type: ignore[misc]


def test_demo_description_says_how_to_switch() -> None:
    description = WorkerSettings.model_fields["model"].description or ""
    assert "demo model" in description
    assert "synthetic shapes, colours" in description
    assert "clipguard models download" in description and "CLIPGUARD_MODEL" in description


def test_policies_default_follows_the_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_settings().policies == (DEMO_POLICIES,)  # from any folder
    (tmp_path / "policies").mkdir()  # another model: policies/ of the current folder
    assert load_settings(overrides={"model": "ViT-B/32"}).policies == (tmp_path / "policies",)
    given = load_settings(overrides={"model": "ViT-B/32", "policies": ["a", "b"]})
    assert given.policies == (Path("a"), Path("b"))
    assert load_settings(overrides={"policies": "x.yaml"}).policies == (Path("x.yaml"),)


def test_environment_overrides_including_nested(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIPGUARD_MAX_BATCH_SIZE", "8")
    monkeypatch.setenv("CLIPGUARD_DECODE__FIT", "crop")
    monkeypatch.setenv("clipguard_topics__dlq", "other.dlq")
    monkeypatch.setenv("CLIPGUARD_POLICIES", '["p1", "p2"]')
    monkeypatch.setenv("CLIPGUARD_CACHE_DIR", "/tmp/elsewhere")  # another part's variable
    s = load_settings()
    assert s.max_batch_size == 8
    assert s.decode.fit == "crop" and s.decode.processes == 2
    assert s.topics.dlq == "other.dlq" and s.topics.segments == "clipguard.segments"
    assert s.policies == (Path("p1"), Path("p2"))


def test_topic_names_alone_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """What ``clipguard scan --bootstrap-servers`` reads: the workers' topic variables, and no
    other setting (an invalid one elsewhere is not its business)."""
    assert topic_names_from_env() == load_settings().topics
    monkeypatch.setenv("CLIPGUARD_TOPICS__JOBS", "fleet.jobs")
    monkeypatch.setenv("clipguard_topics__job_status", "fleet.status")
    monkeypatch.setenv("CLIPGUARD_MAX_BATCH_SIZE", "not a number")
    topics = topic_names_from_env()
    assert (topics.jobs, topics.job_status, topics.scores) == (
        "fleet.jobs",
        "fleet.status",
        "clipguard.scores",
    )
    monkeypatch.setenv("CLIPGUARD_TOPICS", '{"flags": "fleet.flags"}')
    assert topic_names_from_env().flags == "fleet.flags"
    monkeypatch.setenv("CLIPGUARD_TOPICS__JOBS", "../../etc")
    with pytest.raises(ConfigError, match=r"topics\.jobs: .*not a valid Kafka topic name"):
        topic_names_from_env()


_YAML = """\
max_batch_size: 16
group_id: from-file
decode:
  processes: 3
  fit: tiles
sampling: {mode: keyframes}
"""
_TOML = """\
max_batch_size = 16
group_id = "from-file"
[decode]
processes = 3
fit = "tiles"
[sampling]
mode = "keyframes"
"""


@pytest.mark.parametrize(("name", "text"), [("worker.yaml", _YAML), ("worker.toml", _TOML)])
def test_config_file_under_environment_under_overrides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, text: str
) -> None:
    path = tmp_path / name
    path.write_text(text)
    s = load_settings(config_file=path)
    assert (s.max_batch_size, s.group_id) == (16, "from-file")
    assert (s.decode.processes, s.decode.fit, s.sampling.mode) == (3, "tiles", "keyframes")
    assert s.sampling.fps == 2.0  # defaults fill what the file leaves out

    monkeypatch.setenv("CLIPGUARD_MAX_BATCH_SIZE", "32")
    monkeypatch.setenv("CLIPGUARD_DECODE__FIT", "crop")
    s = load_settings(config_file=path)
    assert (s.max_batch_size, s.group_id) == (32, "from-file")
    assert (s.decode.processes, s.decode.fit) == (3, "crop")  # merged, not replaced

    s = load_settings(
        config_file=path,
        overrides={"max_batch_size": 4, "decode.fit": "pad", "group_id": None},
    )
    assert (s.max_batch_size, s.decode.fit, s.decode.processes) == (4, "pad", 3)
    assert s.group_id == "from-file"  # None: the option was not given


def test_empty_yaml_file_is_defaults(tmp_path: Path) -> None:
    path = tmp_path / "empty.yml"
    path.write_text("")
    assert load_settings(config_file=path) == WorkerSettings()


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("max_batch_sise: 3\n", "max_batch_sise"),
        ("decode:\n  fitt: crop\n", "decode.fitt"),
    ],
)
def test_unknown_config_key_is_named(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "worker.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(f"unknown setting '{key}'")):
        load_settings(config_file=path)


def test_unknown_override_is_named() -> None:
    with pytest.raises(ConfigError, match=re.escape("unknown setting 'sampling.rate'")):
        load_settings(overrides={"sampling.rate": 3})


def test_bad_config_files(tmp_path: Path) -> None:
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("decode: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(config_file=bad_yaml)
    code = tmp_path / "worker.py"
    code.write_text("max_batch_size = 3\n")
    with pytest.raises(ConfigError, match="yaml"):
        load_settings(config_file=code)
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(config_file=tmp_path / "missing.toml")
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_settings(config_file=listing)


def test_yaml_is_data_not_code(tmp_path: Path) -> None:
    path = tmp_path / "evil.yaml"
    path.write_text("group_id: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(config_file=path)


@pytest.mark.parametrize(
    ("overrides", "where"),
    [
        ({"max_batch_size": 0}, "max_batch_size"),
        ({"decode.processes": -1}, "decode.processes"),
        ({"sampling.fps": float("nan")}, "sampling.fps"),
        ({"metrics_port": 70000}, "metrics_port"),
        ({"bootstrap_servers": "localhost"}, "bootstrap_servers"),
        ({"bootstrap_servers": "a:1,b:99999"}, "bootstrap_servers"),
        ({"device": "tpu"}, "device"),
        ({"precision": "float32"}, "precision"),
        ({"log_format": "xml"}, "log_format"),
        ({"topics.scores": "bad topic"}, "topics.scores"),
        ({"policies": []}, "policies"),
        ({"ssl_cafile": "/nonexistent/ca.pem"}, "ssl_cafile"),
    ],
)
def test_invalid_values(overrides: dict[str, object], where: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(where)):
        load_settings(overrides=overrides)


def test_metrics_port_zero_disables() -> None:
    assert load_settings(overrides={"metrics_port": 0}).metrics_port == 0


def test_sasl_needs_mechanism_and_credentials() -> None:
    with pytest.raises(ConfigError, match="sasl_mechanism, sasl_username, sasl_password"):
        load_settings(overrides={"security_protocol": "SASL_SSL"})
    with pytest.raises(ConfigError, match="sasl_password"):
        load_settings(
            overrides={
                "security_protocol": "SASL_PLAINTEXT",
                "sasl_mechanism": "PLAIN",
                "sasl_username": "u",
            }
        )
    with pytest.raises(ConfigError, match="sasl_mechanism is set"):
        load_settings(overrides={"sasl_mechanism": "PLAIN"})
    with pytest.raises(ConfigError, match="sasl_mechanism"):
        load_settings(
            overrides={
                "security_protocol": "SASL_SSL",
                "sasl_mechanism": "GSSAPI",
                "sasl_username": "u",
                "sasl_password": "p",
            }
        )


def test_ssl_files_must_exist(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("pem")
    s = load_settings(overrides={"security_protocol": "SSL", "ssl_cafile": str(ca)})
    assert s.kafka_client_config()["ssl_cafile"] == str(ca)
    with pytest.raises(ConfigError, match="ssl_keyfile needs ssl_certfile"):
        load_settings(overrides={"ssl_keyfile": str(ca)})


def test_secrets_stay_secret(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("CLIPGUARD_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("CLIPGUARD_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("CLIPGUARD_SASL_USERNAME", "worker")
    monkeypatch.setenv("CLIPGUARD_SASL_PASSWORD", "hunter2-secret")
    s = load_settings()
    for text in (repr(s), str(s), str(s.model_dump()), describe()):
        assert "hunter2-secret" not in text
    redacted = s.kafka_client_config(redact=True)
    with caplog.at_level(logging.INFO):
        logging.getLogger("clipguard.test").info("kafka config: %s", redacted)
        logging.getLogger("clipguard.test").info("settings: %s", s)
    assert "hunter2-secret" not in caplog.text
    assert redacted["sasl_plain_password"] == "**********"
    # the real client needs the real value
    config = s.kafka_client_config()
    assert config["sasl_plain_password"] == "hunter2-secret"
    assert config["sasl_mechanism"] == "SCRAM-SHA-512"
    assert config["security_protocol"] == "SASL_SSL"


_SASL = {
    "security_protocol": "SASL_PLAINTEXT",
    "sasl_mechanism": "SCRAM-SHA-512",
    "sasl_username": "clipguard-worker",
}


def test_the_sasl_password_is_read_from_a_file(tmp_path: Path) -> None:
    secret = tmp_path / "kafka_password"
    secret.write_text("hunter2-from-a-file\n")  # as `echo` writes it
    s = load_settings(overrides={**_SASL, "sasl_password_file": str(secret)})
    assert s.kafka_client_config()["sasl_plain_password"] == "hunter2-from-a-file"
    assert s.consumer_config()["sasl_plain_password"] == "hunter2-from-a-file"
    assert s.kafka_client_config(redact=True)["sasl_plain_password"] == "**********"
    for text in (repr(s), str(s), str(s.model_dump()), s.model_dump_json()):
        assert "hunter2-from-a-file" not in text
    assert s.sasl_password is None and s.sasl_password_file == secret


@pytest.mark.parametrize(
    ("contents", "error"),
    [
        (None, "no such file"),
        (b"", "empty"),
        (b"\n", "empty"),
        (b"x" * 4097, "over the 4096"),
        (b"hunter2\xff\xfe", "not UTF-8"),
        (b"hunter2\nsecond line\n", "one line"),
        ("dir", "not a regular file"),
        ("fifo", "not a regular file"),
    ],
)
def test_a_bad_sasl_password_file_is_a_clear_error(
    tmp_path: Path, contents: bytes | str | None, error: str
) -> None:
    secret = tmp_path / "kafka_password"
    if contents == "dir":
        secret.mkdir()
    elif contents == "fifo":
        os.mkfifo(secret)  # nobody writes it: reading must not block
    elif isinstance(contents, bytes):
        secret.write_bytes(contents)
    with pytest.raises(ConfigError, match=error) as info:
        load_settings(overrides={**_SASL, "sasl_password_file": str(secret)})
    message = str(info.value)
    assert "sasl_password_file" in message and str(secret) in message
    assert "hunter2" not in message and "second line" not in message


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_an_unreadable_sasl_password_file_is_a_clear_error(tmp_path: Path) -> None:
    secret = tmp_path / "kafka_password"
    secret.write_text("hunter2")
    secret.chmod(0)
    with pytest.raises(ConfigError, match="permission denied"):
        load_settings(overrides={**_SASL, "sasl_password_file": str(secret)})


def test_the_sasl_password_is_given_one_way_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "kafka_password"
    secret.write_text("hunter2-file")
    monkeypatch.setenv("CLIPGUARD_SASL_PASSWORD", "hunter2-env")
    with pytest.raises(ConfigError, match="both set") as info:
        load_settings(overrides={**_SASL, "sasl_password_file": str(secret)})
    assert "hunter2" not in str(info.value)
    monkeypatch.delenv("CLIPGUARD_SASL_PASSWORD")
    with pytest.raises(ConfigError, match=r"sasl_password \(or sasl_password_file\)"):
        load_settings(overrides=_SASL)
    monkeypatch.setenv("CLIPGUARD_SASL_PASSWORD_FILE", str(secret))  # as compose sets it
    assert load_settings(overrides=_SASL).kafka_client_config()["sasl_plain_password"] == (
        "hunter2-file"
    )


def test_secret_in_config_file_is_hidden_in_errors(tmp_path: Path) -> None:
    path = tmp_path / "worker.toml"
    path.write_text('security_protocol = "SASL_SSL"\nsasl_password = "hunter2-secret"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(config_file=path)
    assert "hunter2-secret" not in str(info.value)


# kafka-python 3.0.12 loads its protocol schemas with importlib.resources' legacy read_text and
# open_text, deprecated on Python 3.11: a warning from its code, not ours.
@pytest.mark.filterwarnings(r"ignore:(read_text|open_text) is deprecated:DeprecationWarning")
def test_kafka_client_configs_are_accepted_by_kafka_python() -> None:
    from kafka.consumer.group import KafkaConsumer
    from kafka.producer.kafka import KafkaProducer

    s = load_settings(overrides={"bootstrap_servers": "a:9092, b:9093"})
    common = s.kafka_client_config()
    assert common["bootstrap_servers"] == ["a:9092", "b:9093"]
    consumer = s.consumer_config()
    producer = s.producer_config()
    assert consumer["max_partition_fetch_bytes"] == 16 * 1024 * 1024
    assert consumer["max_poll_interval_ms"] == 10_000 and consumer["enable_auto_commit"] is False
    assert producer["max_request_size"] == 16 * 1024 * 1024 and producer["acks"] == "all"
    # every key is one kafka-python knows (it raises on unknown configs)
    assert set(consumer) <= set(KafkaConsumer.DEFAULT_CONFIG)
    assert set(producer) <= set(KafkaProducer.DEFAULT_CONFIG)


def test_resolved_device() -> None:
    import torch

    assert load_settings(overrides={"device": "cpu"}).resolved_device() == "cpu"
    assert load_settings(overrides={"device": "cuda"}).resolved_device() == "cuda"
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert load_settings().resolved_device() == expected


def test_decode_and_sampling_convert() -> None:
    s = load_settings(overrides={"sampling.max_frames": 10, "decode.timeout_s": 5})
    assert s.decode.limits() == Limits(max_input_bytes=16 * 1024 * 1024, timeout=5.0)
    assert s.sampling.rule() == Sampling(mode="fps", fps=2.0, max_frames=10)


def _env_names() -> list[str]:
    names = []
    for name, field in WorkerSettings.model_fields.items():
        section = field.annotation
        if isinstance(section, type) and hasattr(section, "model_fields"):
            names += [f"CLIPGUARD_{name}__{sub}".upper() for sub in section.model_fields]
        else:
            names.append(f"CLIPGUARD_{name.upper()}")
    return names


def test_describe_lists_every_setting() -> None:
    table = describe()
    lines = table.splitlines()
    assert lines[0] == "| environment variable | type | default | description |"
    rows = {line.split(" | ")[0].strip("| `"): line for line in lines[2:]}
    assert sorted(rows) == sorted(_env_names())
    assert len(rows) > 35
    assert "`64`" in rows["CLIPGUARD_MAX_BATCH_SIZE"]
    assert "demo model" in rows["CLIPGUARD_MODEL"]
    assert "bundled demo policies" in rows["CLIPGUARD_POLICIES"]
    assert '"auto" or "cpu" or "cuda"' in rows["CLIPGUARD_DEVICE"]
    assert "| unset |" in rows["CLIPGUARD_SASL_PASSWORD"]
    assert all(line.count(" | ") == 3 for line in lines)  # no stray pipes in a cell
    for env in _env_names():  # the names in the table are the ones that work
        assert env.startswith("CLIPGUARD_")
