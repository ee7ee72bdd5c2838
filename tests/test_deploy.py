"""Deployment files (docker/): checked with the tools that read them, without a Docker engine.

docker-compose parses the compose file, promtool checks the Prometheus configuration, rules and
a real scrape, shellcheck the topic script; Debian packages that ``make deploy-tools`` installs
(tests that need a missing tool skip and say so). The dashboard's and the rules' metric names
are checked against a real HTTP scrape of the worker's metrics server; reuse
:func:`dashboard_and_rule_metric_names`, :func:`scrape_metric_names` and
:func:`scrape_label_names` to check them against a running worker.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from kafkaspace import KafkaSpace
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from consumers.broker import DEFAULT_TOPICS
from consumers.produce import segment_video
from consumers.settings import TopicNames, describe
from pipeline.metrics import Metrics, MetricsServer, start_http_server
from pipeline.policies.bundled import DEMO_POLICIES

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
DOCKERFILE = DOCKER / "Dockerfile"
DOCKERIGNORE = DOCKER / "Dockerfile.dockerignore"
CREATE_TOPICS = DOCKER / "kafka" / "create-topics.sh"
PROMETHEUS_CONFIG = DOCKER / "prometheus" / "prometheus.yml"
RULES = DOCKER / "prometheus" / "rules" / "clipguard.yml"
RULE_TESTS = DOCKER / "prometheus" / "tests" / "clipguard_test.yml"
DASHBOARD = DOCKER / "grafana" / "dashboards" / "clipguard.json"
DATASOURCES = DOCKER / "grafana" / "provisioning" / "datasources" / "prometheus.yaml"
DASHBOARD_PROVIDERS = DOCKER / "grafana" / "provisioning" / "dashboards" / "clipguard.yaml"
SETTINGS_REFERENCE = ROOT / "scripts" / "settings_reference.py"

WORKERS = ("worker", "worker-cpu")
PROFILES = ("gpu", "cpu", "demo", "models")
# CLIPGUARD_ variables read outside the settings model (model cache, policy cache, mirror)
NON_SETTINGS_ENV = {"CLIPGUARD_CACHE_DIR", "CLIPGUARD_POLICY_CACHE", "CLIPGUARD_MODEL_MIRROR"}
# labels Prometheus adds to every scraped series
TARGET_LABELS = {"instance", "job"}
REQUIRED_ALERTS = {
    "ClipguardConsumerLagGrowing",
    "ClipguardDeadLetterRateHigh",
    "ClipguardNoFramesScored",
    "ClipguardFlagRateOffBaseline",
    "ClipguardPolicyReloadFailed",
}


def _needs(tool: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(
        shutil.which(tool) is None,
        reason=f"{tool} is not installed (make deploy-tools installs it from Debian)",
    )


needs_compose = _needs("docker-compose")
needs_promtool = _needs("promtool")
needs_shellcheck = _needs("shellcheck")


def _run(*args: str | Path, input: str | None = None, env: dict[str, str] | None = None) -> str:
    """Run a command; fail the test with its output when it exits non-zero."""
    result = subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        input=input,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, (
        f"{' '.join(map(str, args))} exited {result.returncode}\n{result.stdout}{result.stderr}"
    )
    return result.stdout


# --- PromQL names ---------------------------------------------------------------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_LABEL_MATCHER = re.compile(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)")
_BRACKETS = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")
_IDENTIFIER = re.compile(r"(?<![\w.:$])[A-Za-z_:][\w:]*")
_KEYWORDS = {"and", "or", "unless", "offset", "bool", "inf", "nan"}
_LABEL_VALUES = re.compile(r"label_values\(\s*([A-Za-z_:][\w:]*)\s*(?:\{[^}]*\})?\s*,\s*(\w+)\s*\)")


def promql_names(expr: str) -> tuple[set[str], set[str]]:
    """The metric names and the label names that a PromQL expression refers to.

    Enough of PromQL for the expressions in docker/: strings, label matchers, ranges and
    grouping clauses are taken out first; what is left that is not a function, an aggregation
    or a keyword is a metric name."""
    expr = _STRING.sub('""', expr)
    labels: set[str] = set()
    for block in _MATCHERS.findall(expr):
        labels.update(_LABEL_MATCHER.findall(block))
    expr = _MATCHERS.sub(" ", expr)
    expr = _BRACKETS.sub(" ", expr)
    for group in _GROUPING.findall(expr):
        labels.update(name.strip() for name in group.split(",") if name.strip())
    expr = _GROUPING.sub(" ", expr)
    metrics = set()
    for match in _IDENTIFIER.finditer(expr):
        name = match.group()
        following = expr[match.end() :].lstrip()
        if following.startswith("(") or name.lower() in _KEYWORDS:
            continue  # a function or an aggregation, or a keyword
        metrics.add(name)
    return metrics, labels


def _dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def _dashboard_panels() -> Iterator[dict[str, Any]]:
    for panel in _dashboard()["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_exprs() -> list[str]:
    """Every PromQL expression of the dashboard's panels."""
    return [
        target["expr"]
        for panel in _dashboard_panels()
        for target in panel.get("targets", [])
        if target.get("expr")
    ]


def _dashboard_variable_queries() -> list[str]:
    queries = []
    for variable in _dashboard()["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        if variable.get("type") == "query" and query:
            queries.append(query)
    return queries


def _rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [rule for group in data["groups"] for rule in group["rules"]]


def _recorded_names() -> set[str]:
    return {rule["record"] for rule in _rules() if "record" in rule}


def _references() -> tuple[set[str], set[str]]:
    metrics: set[str] = set()
    labels: set[str] = set()
    for expr in [*dashboard_exprs(), *(rule["expr"] for rule in _rules())]:
        m, lab = promql_names(expr)
        metrics |= m
        labels |= lab
    for query in _dashboard_variable_queries():
        found = _LABEL_VALUES.fullmatch(query.strip())
        assert found, f"dashboard variable query is not label_values(metric, label): {query}"
        metrics.add(found.group(1))
        labels.add(found.group(2))
    return metrics - _recorded_names(), labels


def dashboard_and_rule_metric_names() -> set[str]:
    """Every metric the Grafana dashboard and the Prometheus rules read, named as in a scrape
    (``clipguard_segments_total``, ``clipguard_encode_seconds_bucket``); series the rules record
    themselves are left out, the metrics their expressions read are in."""
    return _references()[0]


def dashboard_and_rule_label_names() -> set[str]:
    """Every label name the dashboard and the rules match on or group by."""
    return _references()[1]


def scrape_metric_names(body: str) -> set[str]:
    """The sample names of a Prometheus text exposition, as PromQL sees them."""
    return {s.name for f in text_string_to_metric_families(body) for s in f.samples}


def scrape_label_names(body: str) -> set[str]:
    """Every label name of a Prometheus text exposition's samples."""
    return {
        label for f in text_string_to_metric_families(body) for s in f.samples for label in s.labels
    }


def test_promql_names_reads_the_forms_used_here() -> None:
    q95 = (
        "histogram_quantile(0.95, sum by (le) "
        '(rate(clipguard_encode_seconds_bucket{instance=~"$instance"}[$__rate_interval])))'
    )
    assert promql_names(q95) == ({"clipguard_encode_seconds_bucket"}, {"le", "instance"})
    ratio = (
        'sum by (policy) (rate(clipguard_flags_total{state="open"}[1d] offset 1h))\n'
        "/ on () group_left () sum(rate(clipguard_frames_scored_total[1h])) > 1e-3"
    )
    assert promql_names(ratio) == (
        {"clipguard_flags_total", "clipguard_frames_scored_total"},
        {"policy", "state"},
    )
    joined = "a:b:c / a:b:d > 4 or x_total and on (topic, partition) max(y{p='q{'}) > 30"
    assert promql_names(joined) == ({"a:b:c", "a:b:d", "x_total", "y"}, {"topic", "partition", "p"})


# --- the scrape -----------------------------------------------------------------------------------


def _exercise(metrics: Metrics) -> None:
    """Touch every metric once, so labelled ones have a series in the scrape."""
    metrics.segments.labels(outcome="ok").inc()
    metrics.frames_decoded.inc(4)
    metrics.frames_scored.inc(4)
    metrics.dlq.labels(reason="InvalidMedia").inc()
    metrics.flags.labels(policy="red-triangle", label="red-triangle", state="open").inc()
    metrics.policy_reload_errors.inc()
    metrics.decode_seconds.observe(0.05)
    metrics.encode_seconds.observe(0.01)
    metrics.batch_size.observe(4)
    metrics.end_to_end_seconds.observe(0.4)
    metrics.inflight_segments.set(1)
    metrics.consumer_lag.labels(topic="clipguard.segments", partition="0").set(2)


@pytest.fixture(scope="module")
def metrics_server() -> Iterator[MetricsServer]:
    metrics = Metrics(CollectorRegistry(), model="clipguard-demo", device="cpu", precision="fp32")
    _exercise(metrics)
    with start_http_server(metrics, 0, "127.0.0.1") as server:
        yield server


@pytest.fixture(scope="module")
def scrape(metrics_server: MetricsServer) -> str:
    with urllib.request.urlopen(f"{metrics_server.url}/metrics", timeout=10) as response:
        assert response.status == 200
        body: str = response.read().decode()
    return body


def test_dashboard_metrics_exist_in_metrics_server_scrape(scrape: str) -> None:
    names = dashboard_and_rule_metric_names()
    assert len(names) >= 12  # the helper found the dashboard's and the rules' metrics
    missing = names - scrape_metric_names(scrape)
    assert not missing, f"named in the dashboard or rules but not in a scrape: {sorted(missing)}"


def test_dashboard_labels_exist_in_metrics_server_scrape(scrape: str) -> None:
    missing = dashboard_and_rule_label_names() - scrape_label_names(scrape) - TARGET_LABELS
    assert not missing, f"labels the dashboard or rules use but no metric has: {sorted(missing)}"


@needs_promtool
def test_promtool_check_metrics_on_metrics_server_scrape(scrape: str) -> None:
    _run("promtool", "check", "metrics", input=scrape)


# --- Prometheus -----------------------------------------------------------------------------------


@needs_promtool
def test_prometheus_config_and_rules_check() -> None:
    out = _run("promtool", "check", "config", PROMETHEUS_CONFIG)
    assert "1 rule files found" in out  # rules/*.yml resolved from the config's folder
    _run("promtool", "check", "rules", RULES)


@needs_promtool
def test_alert_rules_unit_tests() -> None:
    out = _run("promtool", "test", "rules", RULE_TESTS)
    assert "SUCCESS" in out


def test_required_alerts_have_firing_and_quiet_unit_tests() -> None:
    alerts = {rule["alert"] for rule in _rules() if "alert" in rule}
    assert alerts >= REQUIRED_ALERTS
    cases = yaml.safe_load(RULE_TESTS.read_text(encoding="utf-8"))
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in cases["tests"]:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert fires >= alerts, f"alerts never shown to fire: {sorted(alerts - fires)}"
    assert quiet >= alerts, f"alerts never shown to stay quiet: {sorted(alerts - quiet)}"


def test_every_rule_is_labelled_and_explained() -> None:
    for rule in _rules():
        if "alert" in rule:
            assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
            assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        else:  # recording rules follow level:metric:operations
            assert re.fullmatch(r"[a-z_]+:clipguard_\w+:\w+", rule["record"]), rule["record"]


@needs_promtool
def test_dashboard_queries_parse(tmp_path: Path) -> None:
    """Every dashboard query, Grafana's variables filled in, goes through Prometheus's parser
    as a recording rule."""
    rules = []
    for i, expr in enumerate(dashboard_exprs()):
        expr = re.sub(r"\$__\w+", "5m", expr)  # $__rate_interval, $__interval, ...
        expr = re.sub(r"\$\{?\w+\}?", ".*", expr)  # $instance, $policy
        rules.append({"record": f"dashboard:query_{i}:check", "expr": expr})
    assert len(rules) >= 10
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    out = _run("promtool", "check", "rules", path)
    assert f"SUCCESS: {len(rules)} rules found" in out


def test_prometheus_scrapes_the_workers_compose_names() -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "clipguard-worker")
    (sd,) = job["dns_sd_configs"]
    compose = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    for name in WORKERS:
        service = compose["services"][name]
        assert sd["names"] == service["networks"]["default"]["aliases"]
        assert str(sd["port"]) in {str(p) for p in service["expose"]}


# --- Grafana --------------------------------------------------------------------------------------


def test_dashboard_is_well_formed() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    panels = list(_dashboard_panels())
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    datasource = yaml.safe_load(DATASOURCES.read_text(encoding="utf-8"))["datasources"][0]
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["title"] and panel.get("description"), panel["id"]
        assert panel["datasource"]["uid"] == datasource["uid"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == datasource["uid"]
            assert target["expr"].count("(") == target["expr"].count(")")
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]


def test_dashboard_shows_what_operators_need() -> None:
    exprs = dashboard_exprs()

    def panel_reading(metric: str, *needles: str) -> bool:
        return any(metric in promql_names(e)[0] and all(n in e for n in needles) for e in exprs)

    assert panel_reading("clipguard_segments_total", "rate(")
    assert panel_reading("clipguard_frames_decoded_total", "rate(")
    assert panel_reading("clipguard_frames_scored_total", "rate(")
    assert panel_reading("clipguard_batch_size_bucket", "histogram_quantile(")
    assert panel_reading("clipguard_encode_seconds_bucket", "histogram_quantile(")
    for q in ("0.5", "0.95", "0.99"):
        assert panel_reading("clipguard_end_to_end_seconds_bucket", f"histogram_quantile({q},")
    assert panel_reading("clipguard_consumer_lag", "by (topic, partition)")
    assert panel_reading("clipguard_dlq_total", "by (reason)")
    assert panel_reading("clipguard_flags_total", "by (policy, label)")
    assert panel_reading("clipguard_policy_reload_errors_total")


def test_grafana_provisioning_matches_the_compose_stack() -> None:
    compose = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    grafana = compose["services"]["grafana"]
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"] if v.startswith("./"))
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    datasource = yaml.safe_load(DATASOURCES.read_text(encoding="utf-8"))["datasources"][0]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090" and "prometheus" in compose["services"]
    provider = yaml.safe_load(DASHBOARD_PROVIDERS.read_text(encoding="utf-8"))["providers"][0]
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]
    assert (DOCKER / "grafana" / "dashboards" / DASHBOARD.name).is_file()
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['options']['path']}/{DASHBOARD.name}"


# --- compose --------------------------------------------------------------------------------------


def _compose_env() -> dict[str, str]:
    """The environment without the caller's compose variables, so defaults are what is read."""
    own = {"SEGMENT_PARTITIONS", "TOPIC_PARTITIONS", "KAFKA_EXTERNAL_HOST", "KAFKA_CLUSTER_ID"}
    own |= {"GRAFANA_ADMIN_PASSWORD"}
    return {
        k: v
        for k, v in os.environ.items()
        if not (k.startswith(("CLIPGUARD_", "COMPOSE_")) or k in own)
    }


@cache
def _compose_config() -> dict[str, Any]:
    """``docker-compose config`` with every profile on: the file as compose resolves it."""
    profiles = [arg for p in PROFILES for arg in ("--profile", p)]
    out = _run("docker-compose", "-f", COMPOSE, *profiles, "config", env=_compose_env())
    config: dict[str, Any] = yaml.safe_load(out)
    return config


@needs_compose
def test_compose_file_validates() -> None:
    _run("docker-compose", "-f", COMPOSE, "config", "-q", env=_compose_env())
    profiles = [arg for p in PROFILES for arg in ("--profile", p)]
    _run("docker-compose", "-f", COMPOSE, *profiles, "config", "-q", env=_compose_env())


@needs_compose
def test_readme_override_example_validates(tmp_path: Path) -> None:
    readme = (DOCKER / "README.md").read_text(encoding="utf-8")
    (example,) = re.findall(r"```yaml\n(# docker/compose.override.yaml\n.*?)```", readme, re.S)
    override = tmp_path / "compose.override.yaml"
    override.write_text(example)
    out = _run(
        "docker-compose",
        "-f",
        COMPOSE,
        "-f",
        override,
        "--profile",
        "gpu",
        "config",
        env=_compose_env(),
    )
    worker = yaml.safe_load(out)["services"]["worker"]
    assert json.loads(worker["environment"]["CLIPGUARD_POLICIES"]) == ["/app/my-policies"]
    assert any(v.endswith(":/app/my-policies:ro") for v in worker["volumes"])


@needs_compose
def test_compose_services_and_profiles() -> None:
    services = _compose_config()["services"]
    assert {"kafka", "topics", "prometheus", "grafana", *WORKERS, "producer", "models"} <= set(
        services
    )
    for always in ("kafka", "topics", "prometheus", "grafana"):
        assert "profiles" not in services[always], always
    assert services["worker"]["profiles"] == ["gpu"]
    assert services["worker-cpu"]["profiles"] == ["cpu"]
    assert services["producer"]["profiles"] == ["demo"]
    (gpu,) = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    assert "deploy" not in services["worker-cpu"]
    for name in (*WORKERS, "producer"):
        assert services[name]["depends_on"]["topics"]["condition"] == (
            "service_completed_successfully"
        )
        assert services[name]["image"] == services["worker"]["image"]
    assert services["topics"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    for name in WORKERS:  # scalable: nothing that two replicas could not share
        assert "container_name" not in services[name] and "ports" not in services[name]


def _setting_names() -> set[str]:
    return set(re.findall(r"^\| `(CLIPGUARD_\w+)` \|", describe(), flags=re.MULTILINE))


def _dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction, args in _dockerfile_instructions(final_stage=True):
        if instruction == "ENV":
            for key, value in re.findall(r"(\w+)=(\S+)", args):
                env[key] = value
    return env


def _entrypoint() -> list[str]:
    """The image's ENTRYPOINT, run from this checkout's virtual environment."""
    final = dict(_dockerfile_instructions(final_stage=True))
    program, *args = json.loads(final["ENTRYPOINT"])
    return [str(Path(sys.executable).parent / program), *args]


@needs_compose
@pytest.mark.parametrize("service", WORKERS)
def test_compose_worker_environment_is_valid_settings(service: str) -> None:
    """The image's and the compose file's CLIPGUARD_ variables are real settings that the
    entrypoint accepts together, and agree with the broker's record size limit."""
    config = _compose_config()
    environment = {**_dockerfile_env(), **config["services"][service]["environment"]}
    ours = {k: v for k, v in environment.items() if k.startswith("CLIPGUARD_")}
    unknown = set(ours) - _setting_names() - NON_SETTINGS_ENV
    assert not unknown, f"not worker settings: {sorted(unknown)}"
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("CLIPGUARD_")}
    env.update({k: str(v) for k, v in ours.items() if v is not None and k not in NON_SETTINGS_ENV})
    settings = json.loads(_run(*_entrypoint(), "--print-settings", env=env))
    assert settings["metrics_host"] == "0.0.0.0"  # scrapable from other containers
    assert settings["metrics_port"] == 9400
    assert settings["bootstrap_servers"] == "kafka:9092"
    assert settings["device"] == ("cuda" if service == "worker" else "cpu")
    assert settings["policies"] == [str(DEMO_POLICIES)]  # the package's own, from any folder
    broker = config["services"]["kafka"]["environment"]
    limit = int(broker["KAFKA_MESSAGE_MAX_BYTES"])
    assert int(broker["KAFKA_REPLICA_FETCH_MAX_BYTES"]) >= limit
    assert int(config["services"]["topics"]["environment"]["MAX_MESSAGE_BYTES"]) == limit
    assert settings["max_request_size"] <= limit
    max_input = settings["decode"]["max_input_bytes"]
    assert max_input < limit  # room for headers and the record batch
    assert settings["max_partition_fetch_bytes"] >= max_input


@needs_compose
def test_compose_kafka_is_kraft_with_large_records() -> None:
    kafka = _compose_config()["services"]["kafka"]["environment"]
    assert set(kafka["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert "zookeeper" not in json.dumps(kafka).lower()
    assert int(kafka["KAFKA_MESSAGE_MAX_BYTES"]) >= 16 * 1024 * 1024
    assert kafka["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"  # the topics service creates them
    listeners = kafka["KAFKA_ADVERTISED_LISTENERS"]
    assert "//kafka:9092" in listeners


# --- the topic creator ----------------------------------------------------------------------------


def test_topic_creator_creates_every_topic() -> None:
    created = set(re.findall(r"^ensure (\S+)", CREATE_TOPICS.read_text(), flags=re.MULTILINE))
    defaults = TopicNames()
    expected = {*DEFAULT_TOPICS, "clipguard.state"}
    expected |= {defaults.segments, defaults.scores, defaults.flags, defaults.dlq}
    assert created == expected


@needs_shellcheck
def test_topic_creator_passes_shellcheck() -> None:
    _run("shellcheck", CREATE_TOPICS)


# A stand-in for Kafka's kafka-topics.sh (which needs Java and a broker): it keeps topics in a
# JSON file and answers --create --if-not-exists, --describe and --alter as Kafka's tool does.
_FAKE_KAFKA_TOPICS = r"""
import json, re, sys
from pathlib import Path
state = Path(sys.argv[1]); args = sys.argv[2:]
topics = json.loads(state.read_text()) if state.exists() else {}
def opt(name):
    return args[args.index(name) + 1]
name = opt("--topic")
if "--create" in args:
    assert "--if-not-exists" in args and opt("--replication-factor") == "1"
    configs = [args[i + 1] for i, a in enumerate(args) if a == "--config"]
    topics.setdefault(name, {"partitions": int(opt("--partitions")), "configs": configs})
elif "--alter" in args:
    topics[name]["partitions"] = int(opt("--partitions"))
elif "--describe" in args:
    t = topics[name]
    print(f"Topic: {name}\tTopicId: x\tPartitionCount: {t['partitions']}\tReplicationFactor: 1")
    for p in range(t["partitions"]):
        print(f"\tTopic: {name}\tPartition: {p}\tLeader: 1\tReplicas: 1\tIsr: 1")
state.write_text(json.dumps(topics))
"""


def _create_topics(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    fake = tmp_path / "kafka-topics.sh"
    fake.write_text(
        f'#!/bin/sh\nexec "{sys.executable}" "{tmp_path / "fake.py"}" "{tmp_path / "topics.json"}"'
        ' "$@"\n'
    )
    fake.chmod(0o755)
    (tmp_path / "fake.py").write_text(_FAKE_KAFKA_TOPICS)
    return subprocess.run(
        ["bash", str(CREATE_TOPICS)],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"], "KAFKA_TOPICS": str(fake), **env},
        timeout=60,
    )


def test_topic_creator_creates_grows_and_refuses_bad_counts(tmp_path: Path) -> None:
    first = _create_topics(tmp_path, SEGMENT_PARTITIONS="4")
    assert first.returncode == 0, first.stderr
    topics = json.loads((tmp_path / "topics.json").read_text())
    assert topics["clipguard.segments"]["partitions"] == 4
    assert topics["clipguard.state"]["partitions"] == 4
    assert topics["clipguard.state"]["configs"] == ["cleanup.policy=compact"]
    assert "max.message.bytes=20971520" in topics["clipguard.segments"]["configs"]
    assert "max.message.bytes=20971520" in topics["clipguard.dlq"]["configs"]
    assert topics["clipguard.scores"]["partitions"] == 1

    again = _create_topics(tmp_path, SEGMENT_PARTITIONS="6", TOPIC_PARTITIONS="2")
    assert again.returncode == 0, again.stderr
    topics = json.loads((tmp_path / "topics.json").read_text())
    assert topics["clipguard.segments"]["partitions"] == 6
    assert topics["clipguard.state"]["partitions"] == 6  # grown with the segments
    assert topics["clipguard.flags"]["partitions"] == 2
    assert "clipguard.segments: 4 -> 6 partitions" in again.stdout

    fewer = _create_topics(tmp_path, SEGMENT_PARTITIONS="2")
    assert fewer.returncode == 0 and "cannot shrink" in fewer.stdout
    assert json.loads((tmp_path / "topics.json").read_text())["clipguard.segments"] == {
        "partitions": 6,
        "configs": topics["clipguard.segments"]["configs"],
    }

    bad = _create_topics(tmp_path, SEGMENT_PARTITIONS="0")
    assert bad.returncode == 2 and "whole numbers >= 1" in bad.stderr


# --- the image ------------------------------------------------------------------------------------


def _dockerfile_instructions(*, final_stage: bool = False) -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    instructions = []
    for line in joined.splitlines():
        if line.strip():
            instruction, _, args = line.strip().partition(" ")
            instructions.append((instruction.upper(), args.strip()))
    if final_stage:
        last = max(i for i, (ins, _) in enumerate(instructions) if ins == "FROM")
        instructions = instructions[last:]
    return instructions


def test_dockerfile_runtime_stage() -> None:
    instructions = _dockerfile_instructions()
    assert sum(ins == "FROM" for ins, _ in instructions) >= 2  # multi-stage
    args = dict(a.partition("=")[::2] for ins, a in instructions if ins == "ARG" and "=" in a)
    assert args["CUDA_IMAGE"].startswith("nvidia/cuda:") and "runtime" in args["CUDA_IMAGE"]
    assert "download.pytorch.org/whl/cu" in args["TORCH_INDEX_URL"]
    # the same torch as development (the Makefile's pin), as a CUDA build
    makefile_torch = re.search(r"TORCH_SPEC \?= torch==(\S+)", (ROOT / "Makefile").read_text())
    assert makefile_torch and args["TORCH_VERSION"] == makefile_torch.group(1)
    final = dict(_dockerfile_instructions(final_stage=True))
    user = final["USER"]
    assert user not in {"root", "0"} and not user.startswith("0:")
    assert json.loads(final["ENTRYPOINT"]) == ["clipguard", "worker"]
    assert "CMD" not in final  # configured by the environment only
    assert "HEALTHCHECK" in final and "/healthz" in final["HEALTHCHECK"]
    assert final["EXPOSE"] == "9400"
    assert _dockerfile_env()["CLIPGUARD_METRICS_HOST"] == "0.0.0.0"


def test_compiled_kernels_are_cached_on_the_containers_tmpfs(tmp_path: Path) -> None:
    """With the root filesystem read-only numba cannot cache beside the package or in $HOME
    (it then refuses the kernels: "no locator available"); the image names a folder on /tmp,
    which every read-only clipguard service mounts as a tmpfs, and numba uses that folder."""
    folder = _dockerfile_env()["NUMBA_CACHE_DIR"]
    assert folder.startswith("/tmp/")
    compose = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    ours = [
        svc
        for svc in compose["services"].values()
        if svc.get("read_only") and "clipguard" in str(svc.get("image", ""))
    ]
    assert ours
    for svc in ours:
        assert any(str(t).split(":")[0] == "/tmp" for t in svc.get("tmpfs", [])), svc
    cache_dir = tmp_path / "numba"
    code = (
        "import numpy as np; from pipeline.hashes.pdq import pdq_hash; "
        "pdq_hash(np.zeros((40, 60, 3), np.uint8))"
    )
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache_dir)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=ROOT, timeout=300)
    assert list(cache_dir.rglob("*.nbi"))  # the kernels were cached where the variable says


def _healthcheck_command() -> list[str]:
    final = dict(_dockerfile_instructions(final_stage=True))
    _, _, command = final["HEALTHCHECK"].partition("CMD ")
    exec_form: list[str] = json.loads(command)
    assert exec_form[0] == "python"
    return [sys.executable, *exec_form[1:]]


def test_healthcheck_command_against_a_metrics_server(metrics_server: MetricsServer) -> None:
    command = _healthcheck_command()
    env = {"PATH": os.environ["PATH"], "CLIPGUARD_METRICS_PORT": str(metrics_server.port)}
    healthy = subprocess.run(command, env=env, capture_output=True, timeout=30)
    assert healthy.returncode == 0, healthy.stderr
    # nothing listening there any more: unhealthy
    metrics = Metrics(CollectorRegistry())
    with start_http_server(metrics, 0) as gone:
        port = gone.port
    env["CLIPGUARD_METRICS_PORT"] = str(port)
    down = subprocess.run(command, env=env, capture_output=True, timeout=30)
    assert down.returncode != 0


def _ignore_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def _in_build_context(path: str) -> bool:
    """Whether BuildKit sends ``path`` (relative to the repository root) with the context:
    the last matching pattern of Dockerfile.dockerignore decides; a pattern that matches a
    folder covers what is in it."""
    included = True
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        regex = _ignore_regex(line.lstrip("!").strip("/"))
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            included = negate
    return included


def test_build_context_has_what_the_image_copies_and_little_else() -> None:
    sources = []
    for instruction, args in _dockerfile_instructions():
        if instruction == "COPY" and "--from=" not in args:
            *srcs, _dest = args.split()
            sources += srcs
    assert "pyproject.toml" in sources and "policies" in sources
    for source in sources:
        assert (ROOT / source).exists(), source
        files = [ROOT / source] if (ROOT / source).is_file() else (ROOT / source).rglob("*.py")
        for file in files:
            if "__pycache__" not in file.parts:
                rel = file.relative_to(ROOT).as_posix()
                assert _in_build_context(rel), f"{rel} is copied but not in the build context"
    for left_out in (".venv/bin/python", ".git/HEAD", "tests/test_deploy.py", "pipeline/x.pyc"):
        assert not _in_build_context(left_out), left_out
    assert not _in_build_context("pipeline/__pycache__/decode.cpython-311.pyc")


# --- the demo clip --------------------------------------------------------------------------------


def test_demo_clip_of_the_image_cuts_into_segments(tmp_path: Path) -> None:
    """The build stage's command that writes the demo clip, run here: the clip it writes is
    where the runtime stage copies it from, and the producer streams it in 2 s segments."""
    build = _dockerfile_instructions()
    (command,) = [a for ins, a in build if ins == "RUN" and "pipeline.demo.video" in a]
    code = re.search(r'python -c "([^"]+)"', command)
    assert code
    built = re.search(r"write_video\('([^']+)'", code.group(1))
    assert built
    final = _dockerfile_instructions(final_stage=True)
    copies = [a.split()[1:] for ins, a in final if ins == "COPY" and a.startswith("--from=build")]
    runtime_path = dict(copies)[built.group(1)]
    producer = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))["services"]["producer"]
    assert f"clipguard produce {runtime_path} " in " ".join(producer["command"])

    clip = tmp_path / "demo.mp4"
    subprocess.run(
        [sys.executable, "-c", code.group(1).replace(built.group(1), str(clip))],
        check=True,
        timeout=300,
    )
    segments = list(segment_video(clip, segment_seconds=2.0))
    assert len(segments) >= 10
    assert all(s.duration == pytest.approx(2.0, abs=0.05) for s in segments)
    assert max(len(s.data) for s in segments) < 1024 * 1024


# --- the configuration reference ------------------------------------------------------------------


def _reference(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SETTINGS_REFERENCE), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_settings_reference_in_readme_is_current() -> None:
    result = _reference("--check")
    assert result.returncode == 0, (
        f"{result.stderr}docker/README.md is stale: python scripts/settings_reference.py --write"
    )


def test_settings_reference_check_fails_when_stale_and_write_fixes_it(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    current = (DOCKER / "README.md").read_text(encoding="utf-8")
    table = describe()
    assert table.strip() in current and "`CLIPGUARD_METRICS_HOST`" in table
    readme.write_text(current.replace("`CLIPGUARD_METRICS_HOST`", "`CLIPGUARD_METRICS_HOSTNAME`"))
    stale = _reference("--check", "--readme", readme)
    assert stale.returncode == 1 and "stale" in stale.stderr
    assert _reference("--write", "--readme", readme).returncode == 0
    assert readme.read_text(encoding="utf-8") == current
    assert _reference("--check", "--readme", readme).returncode == 0
    readme.write_text("no markers here\n")
    assert _reference("--check", "--readme", readme).returncode == 1


# --- a running worker -----------------------------------------------------------------------------


@dataclass
class LiveWorker:
    """What a real `clipguard worker` process showed while it ran, and its JSON log."""

    scrape: str  # /metrics once it had handled every segment
    healthz: int  # /healthz and /readyz status codes then
    readyz: int
    exit_status: int  # after SIGTERM
    log: str


@pytest.fixture(scope="module")
def live_worker(
    tmp_path_factory: pytest.TempPathFactory,
    kafka_spaces: Callable[[str], KafkaSpace],
    red_triangle_video: Path,
) -> LiveWorker:
    """A real `clipguard worker` process (JSON logs, a metrics port) that consumed a demo
    stream (flags) and a garbage segment (a dead letter), against the session's embedded
    broker; the dashboard, alert-rule and health checks all read this one run."""
    import streaming

    from consumers.produce import produce_file

    tmp = tmp_path_factory.mktemp("live")
    kafka = kafka_spaces("test_deploy-live_worker").create()
    segments = kafka.names.segments
    sent = produce_file(kafka.bootstrap, red_triangle_video, stream_id="cam-live", topic=segments)
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap, acks="all")
    headers = [("content-type", b"video/mp2t"), ("start-ts", b"0.0")]
    producer.send(segments, key=b"cam-junk", value=b"\x47" * 1880, headers=headers)
    producer.flush()
    producer.close()
    port = streaming.free_port()
    worker = streaming.WorkerProcess(
        kafka,
        tmp / "worker.log",
        "--log-format",
        "json",
        env={"CLIPGUARD_METRICS_PORT": str(port)},
    )
    url = f"http://127.0.0.1:{port}/metrics"
    try:

        def handled() -> bool:
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    body = response.read().decode()
            except OSError:
                return False
            done = sum(
                s.value
                for f in text_string_to_metric_families(body)
                for s in f.samples
                if s.name == "clipguard_segments_total"
            )
            return done >= sent + 1 and "clipguard_consumer_lag{" in body

        streaming.wait_for(handled, 90, "the worker to handle every segment and report lag")
        with urllib.request.urlopen(url, timeout=10) as response:
            body = response.read().decode()
        healthz, readyz = _status(port, "/healthz"), _status(port, "/readyz")
        status = worker.terminate()
    finally:
        worker.close()
    return LiveWorker(body, healthz, readyz, status, worker.log())


def _status(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        e.close()  # (it holds the response's socket)
        return int(e.code)
    except OSError:
        return 0


def test_health_endpoints_and_json_logs(live_worker: LiveWorker) -> None:
    assert (live_worker.healthz, live_worker.readyz) == (200, 200)
    assert "clipguard_ready 1.0" in live_worker.scrape
    assert live_worker.exit_status == 0, live_worker.log[-3000:]
    lines = [json.loads(x) for x in live_worker.log.splitlines() if x.startswith("{")]
    assert any(x["message"].startswith("assigned") for x in lines)
    assert all({"ts", "level", "logger", "message"} <= x.keys() for x in lines)


@pytest.mark.filterwarnings(r"ignore:(read_text|open_text) is deprecated:DeprecationWarning")
def test_dashboard_metrics_exist_in_a_running_workers_scrape(live_worker: LiveWorker) -> None:
    worker_scrape = live_worker.scrape
    missing = dashboard_and_rule_metric_names() - scrape_metric_names(worker_scrape)
    assert not missing, f"the dashboard or rules read metrics a worker lacks: {sorted(missing)}"
    labels = dashboard_and_rule_label_names() - scrape_label_names(worker_scrape) - TARGET_LABELS
    assert not labels, f"labels the dashboard or rules use but a worker lacks: {sorted(labels)}"
    assert 'clipguard_dlq_total{reason="InvalidMedia"} 1.0' in worker_scrape
    assert (
        'clipguard_flags_total{label="red-triangle",policy="red-triangle",state="closed"} 1.0'
        in (worker_scrape)
    )


@needs_promtool
@pytest.mark.filterwarnings(r"ignore:(read_text|open_text) is deprecated:DeprecationWarning")
def test_promtool_check_metrics_on_a_running_workers_scrape(live_worker: LiveWorker) -> None:
    _run("promtool", "check", "metrics", input=live_worker.scrape)


@needs_compose
def test_workers_run_locked_down_and_grafana_has_no_default_password() -> None:
    services = _compose_config()["services"]
    for name in WORKERS:
        worker = services[name]
        assert worker["read_only"] is True and worker["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in worker["security_opt"], name
        assert any(str(t).startswith("/tmp") for t in worker["tmpfs"]), name
        # the weights cache read-only: a worker cannot change the weights it loads
        assert "clipguard-models:/var/lib/clipguard/models:ro" in worker["volumes"], name
    assert "clipguard-models:/var/lib/clipguard/models:rw" in services["models"]["volumes"]
    grafana = services["grafana"]
    env = grafana["environment"]
    assert "GF_SECURITY_ADMIN_PASSWORD" not in env  # no admin/admin fallback
    assert env["GF_SECURITY_ADMIN_PASSWORD__FILE"] == "/run/secrets/grafana_admin_password"
    assert [s["source"] for s in grafana["secrets"]] == ["grafana_admin_password"]
