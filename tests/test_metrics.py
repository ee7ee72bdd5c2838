"""Worker metrics: a real scrape over HTTP from the metrics server, parsed as Prometheus does."""

from __future__ import annotations

import itertools
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

import pipeline.metrics as metrics_module
from pipeline import __version__
from pipeline.metrics import Metrics, MetricsServer, start_http_server

NAMES = {
    "clipguard_segments": "counter",
    "clipguard_frames_decoded": "counter",
    "clipguard_frames_scored": "counter",
    "clipguard_dlq": "counter",
    "clipguard_flags": "counter",
    "clipguard_policy_reload_errors": "counter",
    "clipguard_bank_reload_errors": "counter",
    "clipguard_decode_seconds": "histogram",
    "clipguard_encode_seconds": "histogram",
    "clipguard_batch_size": "histogram",
    "clipguard_end_to_end_seconds": "histogram",
    "clipguard_inflight_segments": "gauge",
    "clipguard_consumer_lag": "gauge",
    # info metrics are exposed as gauges with the value 1 in the text format
    "clipguard_build_info": "gauge",
    "clipguard_model_info": "gauge",
}


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(CollectorRegistry(), model="clipguard-demo", device="cpu", precision="fp32")


@pytest.fixture
def server(metrics: Metrics) -> Iterator[MetricsServer]:
    with start_http_server(metrics, 0, "127.0.0.1") as s:
        yield s


def _get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.headers["Content-Type"], e.read().decode()


def _scrape(server: MetricsServer) -> list[Sample]:
    status, content_type, body = _get(f"{server.url}/metrics")
    assert status == 200 and content_type.startswith("text/plain")
    return [s for family in text_string_to_metric_families(body) for s in family.samples]


def _value(samples: list[Sample], name: str, **labels: str) -> float:
    found = [s.value for s in samples if s.name == name and s.labels == labels]
    assert len(found) == 1, (name, labels, found)
    return found[0]


def test_exported_names() -> None:
    assert sorted(metrics_module.__all__) == [
        "BATCH_SIZE_BUCKETS",
        "END_TO_END_BUCKETS",
        "MAX_CONNECTIONS",
        "Metrics",
        "MetricsServer",
        "REQUEST_TIMEOUT_S",
        "start_http_server",
    ]


def test_every_metric_in_a_scrape(server: MetricsServer) -> None:
    _, _, body = _get(f"{server.url}/metrics")
    families = {f.name: f.type for f in text_string_to_metric_families(body)}
    assert {name: families.get(name) for name in NAMES} == NAMES
    assert "# TYPE clipguard_segments_total counter" in body  # units and _total in the names


def test_observed_values_appear_in_the_scrape(metrics: Metrics, server: MetricsServer) -> None:
    metrics.segments.labels(outcome="ok").inc(3)
    metrics.segments.labels(outcome="dlq").inc()
    metrics.frames_decoded.inc(40)
    metrics.frames_scored.inc(38)
    metrics.dlq.labels(reason="invalid_media").inc()
    metrics.flags.labels(policy="weapons", label="knife", state="raised").inc(2)
    metrics.policy_reload_errors.inc()
    metrics.decode_seconds.observe(0.2)
    metrics.encode_seconds.observe(0.004)
    metrics.batch_size.observe(48)
    metrics.end_to_end_seconds.observe(0.7)
    metrics.end_to_end_seconds.observe(90.0)
    metrics.inflight_segments.set(5)
    metrics.consumer_lag.labels(topic="clipguard.segments", partition="2").set(17)

    samples = _scrape(server)
    assert _value(samples, "clipguard_segments_total", outcome="ok") == 3
    assert _value(samples, "clipguard_segments_total", outcome="dlq") == 1
    assert _value(samples, "clipguard_frames_decoded_total") == 40
    assert _value(samples, "clipguard_frames_scored_total") == 38
    assert _value(samples, "clipguard_dlq_total", reason="invalid_media") == 1
    flags = {"policy": "weapons", "label": "knife", "state": "raised"}
    assert _value(samples, "clipguard_flags_total", **flags) == 2
    assert _value(samples, "clipguard_policy_reload_errors_total") == 1
    assert _value(samples, "clipguard_decode_seconds_count") == 1
    assert _value(samples, "clipguard_decode_seconds_sum") == pytest.approx(0.2)
    assert _value(samples, "clipguard_encode_seconds_bucket", le="0.005") == 1
    assert _value(samples, "clipguard_batch_size_bucket", le="32.0") == 0
    assert _value(samples, "clipguard_batch_size_bucket", le="64.0") == 1
    assert _value(samples, "clipguard_end_to_end_seconds_bucket", le="1.0") == 1
    assert _value(samples, "clipguard_end_to_end_seconds_bucket", le="60.0") == 1
    assert _value(samples, "clipguard_end_to_end_seconds_bucket", le="+Inf") == 2
    assert _value(samples, "clipguard_inflight_segments") == 5
    lag = {"topic": "clipguard.segments", "partition": "2"}
    assert _value(samples, "clipguard_consumer_lag", **lag) == 17
    assert _value(samples, "clipguard_build_info", version=__version__) == 1
    model = {"model": "clipguard-demo", "device": "cpu", "precision": "fp32", "backend": ""}
    assert _value(samples, "clipguard_model_info", **model) == 1

    metrics.set_model(model="ViT-B/32", device="cuda", precision="fp16", backend="torch")
    samples = _scrape(server)
    model = {"model": "ViT-B/32", "device": "cuda", "precision": "fp16", "backend": "torch"}
    assert _value(samples, "clipguard_model_info", **model) == 1


def test_buckets() -> None:
    assert (
        metrics_module.BATCH_SIZE_BUCKETS[0] == 1 and metrics_module.BATCH_SIZE_BUCKETS[-1] == 256
    )
    assert metrics_module.END_TO_END_BUCKETS[0] == 0.01
    assert metrics_module.END_TO_END_BUCKETS[-1] == 60


def test_fresh_registries_do_not_collide() -> None:
    a = Metrics(CollectorRegistry())
    b = Metrics(CollectorRegistry())
    a.frames_scored.inc()
    assert b.registry.get_sample_value("clipguard_frames_scored_total") == 0
    assert a.registry.get_sample_value("clipguard_frames_scored_total") == 1
    assert b"clipguard_frames_scored_total 0.0" in b.exposition()


def test_health_and_readiness(metrics: Metrics) -> None:
    ready = False
    with start_http_server(metrics, 0, ready=lambda: ready) as server:
        assert server.host == "127.0.0.1" and server.port > 0
        assert _get(f"{server.url}/healthz")[0] == 200
        assert _get(f"{server.url}/readyz")[0] == 503
        ready = True
        assert _get(f"{server.url}/readyz")[0] == 200
        assert _get(f"{server.url}/nothing")[0] == 404


def test_close_releases_the_port(metrics: Metrics) -> None:
    server = start_http_server(metrics, 0)
    url = server.url
    server.close()
    server.close()  # twice is fine
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{url}/healthz", timeout=2)


def test_a_silent_connection_to_the_metrics_server_is_closed() -> None:
    import socket
    import time

    server = start_http_server(Metrics(CollectorRegistry()), port=0)
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            sock.sendall(b"GET /metr")  # never finished
            started = time.monotonic()
            assert sock.recv(100) == b""  # the server closed it
            assert time.monotonic() - started < metrics_module.REQUEST_TIMEOUT_S + 3
    finally:
        server.close()


def _trickle(port: int, stop: threading.Event, closed_after: list[float]) -> None:
    """A slowloris client: a request line sent one byte every 0.1 s, never finished; records
    how long the server let it stay."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.settimeout(0.1)
        for byte in itertools.cycle(b"GET /metrics HTTP/1.1\r\nX-Slow: "):
            if stop.is_set():
                return
            try:
                sock.sendall(bytes([byte]))
                if sock.recv(100) == b"":
                    break  # the server closed it
            except TimeoutError:
                continue
            except OSError:
                break
        closed_after.append(time.monotonic() - started)


def test_slowloris_clients_do_not_keep_others_from_metrics_or_readiness(metrics: Metrics) -> None:
    """Clients that trickle bytes forever are cut off at the request deadline (a timeout per
    read would keep them, each byte resetting it), and meanwhile /metrics and /readyz answer
    others at once."""
    deadline_s = 1.5
    server = start_http_server(metrics, 0, request_timeout_s=deadline_s, max_connections=16)
    stop = threading.Event()
    closed_after: list[float] = []
    slow = [
        threading.Thread(target=_trickle, args=(server.port, stop, closed_after), daemon=True)
        for _ in range(6)
    ]
    try:
        for thread in slow:
            thread.start()
        time.sleep(0.3)  # all of them connected and trickling
        for _ in range(5):
            for path in ("/metrics", "/readyz"):
                started = time.monotonic()
                status, _, _ = _get(f"{server.url}{path}")
                assert status == 200
                assert time.monotonic() - started < 1.0, path
        for thread in slow:
            thread.join(deadline_s + 5)
        assert len(closed_after) == len(slow)  # every one was closed by the server
        assert max(closed_after) < deadline_s + 2
    finally:
        stop.set()
        server.close()


def test_connections_over_the_cap_are_closed_at_once(metrics: Metrics) -> None:
    server = start_http_server(metrics, 0, request_timeout_s=1.0, max_connections=2)
    try:
        held = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(2)]
        time.sleep(0.2)
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as extra:
            started = time.monotonic()
            assert extra.recv(100) == b""
            assert time.monotonic() - started < 0.8  # closed on arrival, not at the deadline
        for sock in held:  # the held ones are closed at their deadline, freeing the slots
            sock.settimeout(5)
            assert sock.recv(100) == b""
            sock.close()
        time.sleep(0.1)
        assert _get(f"{server.url}/readyz")[0] == 200
    finally:
        server.close()
