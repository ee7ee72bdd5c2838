"""The SASL/SCRAM and ACL override (docker/compose.sasl.yaml) and its scripts, checked without a
Docker engine or a Kafka installation: docker-compose resolves the override, shellcheck reads the
scripts, and the scripts run for real against stand-ins for Kafka's command-line tools that
record what they are asked (the broker's configuration, the credentials, the ACLs).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_deploy import _FAKE_KAFKA_TOPICS, PROFILES, WORKERS, _compose_env, _run, needs_compose

from consumers.settings import load_settings

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
SASL = DOCKER / "compose.sasl.yaml"
BROKER_SCRIPT = DOCKER / "kafka" / "sasl-broker.sh"
SETUP_SCRIPT = DOCKER / "kafka" / "sasl-setup.sh"
SECRET_SCRIPT = DOCKER / "kafka" / "secret.sh"  # sourced by both
SECRET_WORDS = re.compile(r"PASSWORD|SECRET|TOKEN|JAAS|CREDENTIAL|PASSWD", re.I)

needs_shellcheck = pytest.mark.skipif(
    shutil.which("shellcheck") is None, reason="shellcheck is not installed"
)


@cache
def _sasl_config() -> dict[str, Any]:
    profiles = [arg for p in PROFILES for arg in ("--profile", p)]
    out = _run("docker-compose", "-f", COMPOSE, "-f", SASL, *profiles, "config", env=_compose_env())
    config: dict[str, Any] = yaml.safe_load(out)
    return config


@needs_compose
def test_the_sasl_override_validates() -> None:
    _run("docker-compose", "-f", COMPOSE, "-f", SASL, "config", "-q", env=_compose_env())
    services = _sasl_config()["services"]
    assert {"kafka", "topics", *WORKERS, "models", "producer", "prometheus", "grafana"} <= set(
        services
    )
    assert services["kafka"]["entrypoint"] == ["bash", "/opt/clipguard/sasl-broker.sh"]
    assert services["topics"]["entrypoint"] == ["bash", "/opt/clipguard/sasl-setup.sh"]
    # its own data volume: a folder formatted without SASL has no admin credential
    assert "kafka-sasl-data:/var/lib/kafka/data:rw" in services["kafka"]["volumes"]


@needs_compose
def test_every_service_is_locked_down() -> None:
    for name, service in _sasl_config()["services"].items():
        assert service.get("read_only") is True, name
        assert service.get("cap_drop") == ["ALL"], name
        assert "no-new-privileges:true" in service.get("security_opt", []), name


@needs_compose
def test_secrets_are_files_and_no_password_is_in_an_environment() -> None:
    config = _sasl_config()
    for name, service in config["services"].items():
        for key, value in (service.get("environment") or {}).items():
            text = "" if value is None else str(value)
            assert "password=" not in text.lower(), (name, key)
            if SECRET_WORDS.search(key):
                assert key.endswith("_FILE"), (name, key)  # a path to a secret, never one
                assert text.startswith("/run/secrets/"), (name, key, text)
                assert text.removeprefix("/run/secrets/") in {
                    s["source"] for s in service["secrets"]
                }, (name, key)
    for secret in config["secrets"].values():
        assert set(secret) == {"file"} and "/docker/secrets/" in secret["file"]
    for name in WORKERS:
        worker = config["services"][name]
        assert [s["source"] for s in worker["secrets"]] == ["kafka_worker_password"]
        assert "clipguard-models:/var/lib/clipguard/models:ro" in worker["volumes"]


@needs_compose
@pytest.mark.parametrize("service", WORKERS)
def test_the_workers_sasl_environment_is_valid_settings(
    service: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = _sasl_config()["services"][service]["environment"]
    secret = tmp_path / "kafka_worker_password"
    secret.write_text("a-worker-password\n")
    for key in [k for k in os.environ if k.startswith("CLIPGUARD_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        if key.startswith("CLIPGUARD_") and value is not None:
            mounted = str(value) == "/run/secrets/kafka_worker_password"
            monkeypatch.setenv(key, str(secret) if mounted else str(value))
    settings = load_settings()
    config = settings.consumer_config()
    assert config["security_protocol"] == "SASL_PLAINTEXT"
    assert config["sasl_mechanism"] == "SCRAM-SHA-512"
    assert config["sasl_plain_username"] == "clipguard-worker"
    assert config["sasl_plain_password"] == "a-worker-password"
    assert config["group_id"] == "clipguard-workers"  # what the group ACL's prefix covers


@needs_shellcheck
def test_the_sasl_scripts_pass_shellcheck() -> None:
    _run("shellcheck", "--external-sources", BROKER_SCRIPT, SETUP_SCRIPT, SECRET_SCRIPT)


# --- the broker's start-up script, with stand-ins for Kafka's tools ---------------------------

_RECORD = r"""
import json, os, sys
from pathlib import Path
log = Path(sys.argv[1]); tool = sys.argv[2]; args = sys.argv[3:]
entry = {"tool": tool, "args": args, "env": dict(os.environ)}
for flag in ("--add-config-file", "--command-config"):  # files read while they exist
    if flag in args:
        entry[flag] = Path(args[args.index(flag) + 1]).read_text()
if tool == "kafka-server-start.sh":
    entry["config"] = Path(args[0]).read_text()
    entry["mode"] = oct(Path(args[0]).stat().st_mode & 0o777)
with log.open("a") as f:
    f.write(json.dumps(entry) + "\n")
"""


def _fake_tools(tmp_path: Path, *names: str) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (tmp_path / "record.py").write_text(_RECORD)
    (tmp_path / "topics.py").write_text(_FAKE_KAFKA_TOPICS)
    for name in names:
        tool = bin_dir / name
        if name == "kafka-topics.sh":  # keeps topics (tests/test_deploy.py), and is recorded
            body = (
                f'"{sys.executable}" "{tmp_path / "record.py"}" "{tmp_path / "calls.jsonl"}" '
                f'{name} "$@"\nexec "{sys.executable}" "{tmp_path / "topics.py"}" '
                f'"{tmp_path / "topics.json"}" "$@"\n'
            )
        else:
            body = (
                f'exec "{sys.executable}" "{tmp_path / "record.py"}" '
                f'"{tmp_path / "calls.jsonl"}" {name} "$@"\n'
            )
        tool.write_text("#!/bin/sh\n" + body)
        tool.chmod(0o755)
    return bin_dir


def _calls(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _secret(tmp_path: Path, name: str, value: str) -> Path:
    path = tmp_path / "secrets" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(value)
    return path


def _broker(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    home = tmp_path / "kafka"
    home.mkdir(exist_ok=True)
    bin_dir = _fake_tools(tmp_path, "kafka-storage.sh", "kafka-server-start.sh")
    if not (home / "bin").exists():
        (home / "bin").symlink_to(bin_dir)
    base = {
        "PATH": os.environ["PATH"],
        "KAFKA_HOME": str(home),
        "CONFIG_DIR": str(tmp_path / "config"),
        "CLUSTER_ID": "Z_sa3qoIcJq-05YyYtwmiQ",
        "ADMIN_PASSWORD_FILE": str(_secret(tmp_path, "admin", "a0dm1n-pass\n")),
        "CONTROLLER_PASSWORD_FILE": str(_secret(tmp_path, "controller", "c0ntr0ller")),
    }
    return subprocess.run(
        ["bash", str(BROKER_SCRIPT)],
        capture_output=True,
        text=True,
        env={**base, **env},
        timeout=60,
    )


def _properties(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def test_the_broker_starts_with_scram_acls_and_a_private_configuration(tmp_path: Path) -> None:
    done = _broker(tmp_path)
    assert done.returncode == 0, done.stderr
    storage, server = _calls(tmp_path)
    assert storage["tool"] == "kafka-storage.sh" and server["tool"] == "kafka-server-start.sh"
    assert "--ignore-formatted" in storage["args"]
    assert "SCRAM-SHA-512=[name=admin,password=a0dm1n-pass]" in storage["args"]

    props = _properties(server["config"])
    assert server["mode"] == "0o600"  # it holds passwords
    protocols = dict(p.split(":") for p in props["listener.security.protocol.map"].split(","))
    assert protocols == {
        "INTERNAL": "SASL_PLAINTEXT",
        "EXTERNAL": "SASL_PLAINTEXT",
        "CONTROLLER": "SASL_PLAINTEXT",
    }
    assert props["sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert props["sasl.mechanism.inter.broker.protocol"] == "SCRAM-SHA-512"
    assert props["listeners"].endswith("CONTROLLER://127.0.0.1:9093")  # loopback only
    assert props["authorizer.class.name"].endswith("StandardAuthorizer")
    assert props["allow.everyone.if.no.acl.found"] == "false"
    assert props["super.users"] == "User:admin;User:controller"
    assert (
        'password="a0dm1n-pass"' in props["listener.name.internal.scram-sha-512.sasl.jaas.config"]
    )
    assert "c0ntr0ller" in props["listener.name.controller.plain.sasl.jaas.config"]
    assert "a0dm1n-pass" not in json.dumps(server["env"]) + json.dumps(server["args"])
    admin = _properties((tmp_path / "config" / "admin.properties").read_text())
    assert admin["security.protocol"] == "SASL_PLAINTEXT"
    assert stat.S_IMODE((tmp_path / "config" / "admin.properties").stat().st_mode) == 0o600


@pytest.mark.parametrize(
    ("secret", "error"),
    [
        (None, "no such file"),
        ("\n", "empty"),
        ('pass"word', "letters, digits"),
        ("x" * 5000, "4096"),
    ],
)
def test_the_broker_refuses_a_bad_secret(tmp_path: Path, secret: str | None, error: str) -> None:
    path = tmp_path / "missing" if secret is None else _secret(tmp_path, "bad", secret)
    done = _broker(tmp_path, ADMIN_PASSWORD_FILE=str(path))
    assert done.returncode == 2 and error in done.stderr
    assert _calls(tmp_path) == []  # Kafka never started
    assert 'pass"word' not in done.stderr


# --- the set-up script: topics, credentials and ACLs ------------------------------------------


def test_the_worker_principal_gets_what_it_needs_and_nothing_else(tmp_path: Path) -> None:
    bin_dir = _fake_tools(tmp_path, "kafka-topics.sh", "kafka-configs.sh", "kafka-acls.sh")
    env = {
        "PATH": os.environ["PATH"],
        "KAFKA_BIN": str(bin_dir),
        "CONFIG_DIR": str(tmp_path / "admin"),
        "ADMIN_PASSWORD_FILE": str(_secret(tmp_path, "admin", "a0dm1n-pass")),
        "WORKER_PASSWORD_FILE": str(_secret(tmp_path, "worker", "w0rker-pass\n")),
        "PRODUCER_PASSWORD_FILE": str(_secret(tmp_path, "producer", "pr0ducer-pass")),
    }
    done = subprocess.run(
        ["bash", str(SETUP_SCRIPT)], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    calls = _calls(tmp_path)
    for call in calls:  # as the admin, passwords never on a command line
        assert 'username="admin" password="a0dm1n-pass"' in call["--command-config"]
        for password in ("a0dm1n-pass", "w0rker-pass", "pr0ducer-pass"):
            assert not any(password in arg for arg in call["args"]), call["args"]
    assert "clipguard.segments" in json.loads((tmp_path / "topics.json").read_text())

    credentials = {
        c["args"][c["args"].index("--entity-name") + 1]: c["--add-config-file"]
        for c in calls
        if c["tool"] == "kafka-configs.sh"
    }
    assert credentials == {
        "clipguard-worker": "SCRAM-SHA-512=[iterations=8192,password=w0rker-pass]\n",
        "clipguard-producer": "SCRAM-SHA-512=[iterations=8192,password=pr0ducer-pass]\n",
    }
    assert not list((tmp_path / "admin").glob("*.scram"))  # the credential files are gone

    granted: dict[str, set[tuple[str, str, str]]] = {}
    for call in (c for c in calls if c["tool"] == "kafka-acls.sh"):
        args = call["args"]
        assert "--add" in args and "--deny-principal" not in args
        principal = args[args.index("--allow-principal") + 1]
        ops = [args[i + 1] for i, a in enumerate(args) if a == "--operation"]
        kind = "topic" if "--topic" in args else "group"
        name = args[args.index(f"--{kind}") + 1]
        if kind == "group":
            assert args[args.index("--resource-pattern-type") + 1] == "prefixed"
        granted.setdefault(principal, set()).update((kind, name, op) for op in ops)

    def topic(name: str, *ops: str) -> set[tuple[str, str, str]]:
        return {("topic", name, op) for op in ops}

    worker = topic("clipguard.segments", "Read", "Describe") | topic(
        "clipguard.jobs", "Read", "Describe"
    )
    worker |= topic("clipguard.state", "Read", "Write", "Describe")
    for output in ("scores", "flags", "dlq", "job-status", "embeddings"):
        worker |= topic(f"clipguard.{output}", "Write", "Describe")
    worker |= {("group", "clipguard-workers", "Read"), ("group", "clipguard-workers", "Describe")}
    assert granted == {
        "User:clipguard-worker": worker,
        "User:clipguard-producer": topic("clipguard.segments", "Write", "Describe"),
    }
