"""Metrics: the stream worker's Prometheus metrics, and a small HTTP server for them.

:class:`Metrics` registers every metric on the ``CollectorRegistry`` it is given (tests pass a
fresh one; the worker passes its own), so two workers in one process never collide::

    metrics = Metrics(CollectorRegistry(), model="clipguard-demo", device="cpu", precision="int8")
    metrics.segments.labels(outcome="ok").inc()
    with metrics.decode_seconds.time():
        ...
    server = start_http_server(metrics, port=9400, host="127.0.0.1")   # GET /metrics
    server.close()

The server also answers ``GET /healthz`` (200 while the process serves) and ``GET /readyz``
(200 when the ``ready`` callable says so, else 503). Every connection has one deadline for its
whole request (``REQUEST_TIMEOUT_S``), not a timeout per read, and at most ``MAX_CONNECTIONS``
are served at once, so a client trickling bytes (slowloris) holds one thread for a few seconds
and never keeps anyone else from ``/metrics`` or ``/readyz``.
"""

from __future__ import annotations

import functools
import io
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Final

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)

from pipeline import __version__

__all__ = [
    "BATCH_SIZE_BUCKETS",
    "END_TO_END_BUCKETS",
    "MAX_CONNECTIONS",
    "REQUEST_TIMEOUT_S",
    "Metrics",
    "MetricsServer",
    "start_http_server",
]

#: Encoder batch sizes: powers of two from 1 to 256.
BATCH_SIZE_BUCKETS: Final = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0)
#: Segment arrival to outputs published, seconds: 10 ms to 60 s.
END_TO_END_BUCKETS: Final = (
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    20.0,
    30.0,
    60.0,
)
#: Decode and encode durations, seconds: 1 ms to 30 s.
_STAGE_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_STAGE_BUCKETS_LONG: Final = (*_STAGE_BUCKETS, 10.0, 30.0)


class Metrics:
    """Every metric the stream worker exports, registered on ``registry``."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        model: str = "",
        device: str = "",
        precision: str = "",
        backend: str = "",
        version: str = __version__,
    ) -> None:
        self.registry = registry
        r = registry
        # --- counters ---
        self.segments = Counter(
            "clipguard_segments",
            "Input segments handled, by outcome (ok, dlq, ...).",
            ["outcome"],
            registry=r,
        )
        self.segments_received = Counter(
            "clipguard_segments_received",
            "Input segments consumed from Kafka (before decoding).",
            registry=r,
        )
        self.retries = Counter(
            "clipguard_retries",
            "Transient failures retried, by what was retried (decode, publish).",
            ["stage"],
            registry=r,
        )
        self.shadow_incidents = Counter(
            "clipguard_shadow_incidents",
            "Incidents of shadow-mode policies (counted, never published), by policy and label.",
            ["policy", "label"],
            registry=r,
        )
        self.frames_decoded = Counter(
            "clipguard_frames_decoded", "Frames decoded and sampled for scoring.", registry=r
        )
        self.frames_scored = Counter(
            "clipguard_frames_scored", "Frames encoded and scored against policies.", registry=r
        )
        self.dlq = Counter(
            "clipguard_dlq",
            "Inputs sent to the dead-letter topic, by reason.",
            ["reason"],
            registry=r,
        )
        self.flags = Counter(
            "clipguard_flags",
            "Flag events published, by policy, label and state.",
            ["policy", "label", "state"],
            registry=r,
        )
        self.policy_reload_errors = Counter(
            "clipguard_policy_reload_errors",
            "Policy reloads that failed (the previous policies stay in force).",
            registry=r,
        )
        self.outputs_refused = Counter(
            "clipguard_outputs_refused",
            "Output records the broker refused for good (too large, invalid), by topic: a stub "
            "dead letter went in their place.",
            ["topic"],
            registry=r,
        )
        self.timeline_resets = Counter(
            "clipguard_stream_timeline_resets",
            "Streams whose start-ts jumped more than max_ts_jump_s from their last frame: their "
            "temporal state restarted (incidents closed) instead of dropping later frames.",
            registry=r,
        )
        self.job_runner_failures = Counter(
            "clipguard_job_runner_failures",
            "Times the scan job runner stopped on an unexpected error (readiness goes false).",
            registry=r,
        )
        self.bank_reload_errors = Counter(
            "clipguard_bank_reload_errors",
            "Hash bank files that failed to reload (their last good bank stays in force).",
            registry=r,
        )
        # --- histograms ---
        self.decode_seconds = Histogram(
            "clipguard_decode_seconds",
            "Wall time to decode one segment, seconds.",
            buckets=_STAGE_BUCKETS_LONG,
            registry=r,
        )
        self.encode_seconds = Histogram(
            "clipguard_encode_seconds",
            "Wall time to encode one batch of frames, seconds.",
            buckets=_STAGE_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "clipguard_batch_size",
            "Frames per encoder batch.",
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.end_to_end_seconds = Histogram(
            "clipguard_end_to_end_seconds",
            "Segment arrival to all its outputs published, seconds.",
            buckets=END_TO_END_BUCKETS,
            registry=r,
        )
        # --- gauges ---
        self.inflight_segments = Gauge(
            "clipguard_inflight_segments", "Segments consumed but not yet committed.", registry=r
        )
        self.ready = Gauge(
            "clipguard_ready",
            "1 when the worker has joined its group with the model and policies loaded.",
            registry=r,
        )
        self.consumer_lag = Gauge(
            "clipguard_consumer_lag",
            "Messages behind the end of the partition, by topic and partition.",
            ["topic", "partition"],
            registry=r,
        )
        # --- info ---
        self.build_info = Info("clipguard_build", "clipguard version.", registry=r)
        self.build_info.info({"version": version})
        self.model_info = Info(
            "clipguard_model",
            "The model the worker scores with, and its image encoder's precision and backend.",
            registry=r,
        )
        self.set_model(model=model, device=device, precision=precision, backend=backend)

    def set_model(
        self, *, model: str, device: str = "", precision: str = "", backend: str = ""
    ) -> None:
        """Record the model in ``clipguard_model_info`` (after a model is loaded or swapped)."""
        labels = {"model": model, "device": device, "precision": precision, "backend": backend}
        self.model_info.info(labels)

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format, as a scrape returns it."""
        return generate_latest(self.registry)


class MetricsServer:
    """A running metrics HTTP server (see :func:`start_http_server`); ``close()`` stops it."""

    def __init__(self, server: ThreadingHTTPServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread

    @property
    def host(self) -> str:
        return str(self._server.server_address[0])

    @property
    def port(self) -> int:
        """The bound port (the chosen one when started with port 0)."""
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def close(self) -> None:
        """Stop serving and release the port; safe to call twice."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


#: Seconds a metrics connection has for its whole request (however slowly it trickles bytes),
#: and again for the reply to be taken.
REQUEST_TIMEOUT_S: Final = 5.0
#: Connections served at once; one more is closed on arrival (each holds a thread, for at most
#: REQUEST_TIMEOUT_S while it sends its request).
MAX_CONNECTIONS: Final = 64


class _DeadlineReader(io.RawIOBase):
    """A socket's reads under one deadline for the whole request: each read may wait only for
    what is left of it, so a client sending a byte now and then (slowloris) is cut off when
    the deadline passes, not kept alive by each byte (http.server's own timeout is per read)."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self._sock = sock
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request took longer than its deadline")
        self._sock.settimeout(left)
        return self._sock.recv_into(buffer)


class _Server(ThreadingHTTPServer):
    """A thread per connection, at most ``max_connections`` at once."""

    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], slots: int
    ) -> None:
        super().__init__(address, handler)
        self._slots = threading.BoundedSemaphore(slots)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # full: closed at once, never queued
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


def start_http_server(
    metrics: Metrics,
    port: int,
    host: str = "127.0.0.1",
    *,
    ready: Callable[[], bool] = lambda: True,
    request_timeout_s: float = REQUEST_TIMEOUT_S,
    max_connections: int = MAX_CONNECTIONS,
) -> MetricsServer:
    """Serve ``metrics`` on ``http://host:port/metrics`` from a daemon thread, with
    ``/healthz`` and ``/readyz``; port 0 picks a free port (see :attr:`MetricsServer.port`).

    Each connection has ``request_timeout_s`` for its whole request and as long again for the
    reply, one request per connection, at most ``max_connections`` at once: a client that holds
    a connection open cannot keep others from ``/metrics`` and ``/readyz``."""
    registry = metrics.registry

    class _Handler(BaseHTTPRequestHandler):
        timeout = request_timeout_s  # the socket's timeout until setup() sets the deadline

        def setup(self) -> None:
            super().setup()
            deadline = time.monotonic() + request_timeout_s
            self.rfile = io.BufferedReader(_DeadlineReader(self.connection, deadline))

        def do_GET(self) -> None:
            self.connection.settimeout(request_timeout_s)  # for the reply
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._reply(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                self._reply(200, b"ok\n")
            elif path == "/readyz":
                if ready():
                    self._reply(200, b"ready\n")
                else:
                    self._reply(503, b"not ready\n")
            else:
                self._reply(404, b"not found\n")

        def _reply(
            self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8"
        ) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # scrapes every few seconds would flood the log

    server = _Server((host, port), _Handler, max_connections)
    thread = threading.Thread(
        target=functools.partial(server.serve_forever, poll_interval=0.05),
        name="clipguard-metrics",
        daemon=True,
    )
    thread.start()
    return MetricsServer(server, thread)
