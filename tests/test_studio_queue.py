"""The review queue fed from live traffic: the studio, served by uvicorn, reads a flags topic on
the session's embedded broker into its SQLite queue; reviewers label what came in; a restarted
studio goes on from where its queue stopped, neither losing nor doubling an incident."""

from __future__ import annotations

import json
import re
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from kafkaspace import KafkaSpace

from consumers.studio import StudioConfig, create_app
from consumers.studio.incidents import incident_id
from consumers.studio.queue import ReviewQueue
from tests.studio_fixtures import free_port, make_policies, scan_into_store, serve


def _event(n: int, state: str, *, stream: str, start: float, peak: float) -> dict[str, Any]:
    return {
        "schema": "clipguard.flag/1",
        "event_id": f"ev{n}",
        "state": state,
        "stream_id": stream,
        "policy": "red-triangle",
        "policy_version": 1,
        "label": "red-triangle",
        "severity": "medium",
        "action": "flag",
        "start_ts": start,
        "end_ts": start + 2.0 if state == "closed" else None,
        "peak_score": peak,
        "peak_ts": start + 0.5,
        "threshold": 0.55,
        "margin": None,
        "top_prompt": "a red triangle",
        "model": "clipguard-demo",
    }


def _produce(kafka: KafkaSpace, values: list[bytes]) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap, acks="all")
    try:
        for value in values:
            producer.send(kafka.names.flags, value=value, key=b"cam").get(timeout=10)
    finally:
        producer.close()


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as response:
        return str(response.read().decode())


def _wait_for(url: str, pattern: str, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        page = _get(url)
        if re.search(pattern, page):
            return page
        assert time.monotonic() < deadline, f"{pattern!r} never showed on {url}"
        time.sleep(0.2)


class _Studio:
    def __init__(self, config: StudioConfig) -> None:
        self.port = config.port
        self.url = f"http://127.0.0.1:{self.port}"
        self.server, self.thread = serve(create_app(config), self.port)

    def stop(self) -> None:
        self.server.should_exit = True  # type: ignore[attr-defined]
        self.thread.join(timeout=30)  # type: ignore[attr-defined]


def test_flags_topic_feeds_the_queue_across_restarts(kafka: KafkaSpace, tmp_path: Path) -> None:
    kafka.create(only=["flags"])
    policies = make_policies(tmp_path)
    first = _event(1, "open", stream="cam-1", start=10.0, peak=0.61)
    _produce(
        kafka,
        [
            json.dumps(first).encode(),
            b"{not json",  # stepped over, logged with its place
            b"{" + b" " * (70 * 1024) + b"}",  # over the size a flag event can have: not read
            json.dumps(_event(2, "closed", stream="cam-1", start=10.0, peak=0.64)).encode(),
            json.dumps(_event(3, "open", stream="cam-2", start=3.0, peak=0.58)).encode(),
        ],
    )

    def config() -> StudioConfig:
        return StudioConfig(
            policies_dir=policies,
            data_dir=tmp_path / "data",
            port=free_port(),
            user="rita",
            flags_topic=kafka.names.flags,
            bootstrap_servers=kafka.bootstrap,
        )

    studio = _Studio(config())
    try:
        page = _wait_for(studio.url + "/review", r'id="queue-total">2<')
        assert 'id="origin-flags">2<' in page
        assert "2 other records stepped over" in page  # the feed's status line
        one = incident_id("cam-1", "red-triangle", "red-triangle", 10.0)
        two = incident_id("cam-2", "red-triangle", "red-triangle", 3.0)
        section = page.split(f'id="incident-{one}"', 1)[1].split("</section>", 1)[0]
        assert "10.00\u201312.00 s, peak 0.640" in section  # the closing event replaced the opening
        section = page.split(f'id="incident-{two}"', 1)[1].split("</section>", 1)[0]
        assert "3.00\u2013open s" in section
        form = urllib.parse.urlencode({"verdict": "correct", "note": "a real triangle"}).encode()
        request = urllib.request.Request(
            f"{studio.url}/review/{one}", data=form, headers={"Origin": studio.url}
        )
        assert "Marked correct by rita" in _get_request(request)
    finally:
        studio.stop()

    # while the studio is down, the second incident closes on the topic
    _produce(kafka, [json.dumps(_event(4, "closed", stream="cam-2", start=3.0, peak=0.6)).encode()])
    studio = _Studio(config())
    try:
        page = _wait_for(studio.url + "/review", r"3\.00\u20135\.00 s")
        assert 'id="queue-total">2<' in page  # nothing read twice
        assert 'id="count-correct">1<' in page  # the label was kept
        tune = _get(studio.url + "/policies/red-triangle/tune")
        data = json.loads(tune.split('id="tune-data">', 1)[1].split("</script>", 1)[0])
        assert sorted(data["queue"]) == [0.6, 0.64]  # Tune's queue: the flags topic's peaks
        assert sorted(data["positives"], key=lambda p: p["source"])[-1]["score"] == 0.64
    finally:
        studio.stop()
    queue = ReviewQueue(tmp_path / "data" / "labels.sqlite3")
    try:
        assert queue.offsets(kafka.names.flags) == {0: 6}  # every record read, the bad ones too
    finally:
        queue.close()


def _get_request(request: urllib.request.Request) -> str:
    with urllib.request.urlopen(request, timeout=30) as response:
        return str(response.read().decode())


def test_a_scan_incident_on_the_flags_topic_and_in_the_store_is_one_item(
    kafka: KafkaSpace, tmp_path: Path
) -> None:
    """A scan with --store publishes its flag events (here: its flags.jsonl, produced to the
    topic) and keeps its frames; the studio reads the topic and queues what the policy files
    find in the store: the scan's incident is one review item, the flags topic's."""
    kafka.create(only=["flags"])
    policies, store, out = scan_into_store(tmp_path)
    lines = [x for x in (out / "flags.jsonl").read_text().splitlines() if x.strip()]
    closed = [json.loads(x) for x in lines if json.loads(x)["state"] == "closed"]
    assert [f["policy"] for f in closed] == ["red-triangle"]  # spam-text is in shadow mode
    _produce(kafka, [x.encode() for x in lines])
    config = StudioConfig(
        policies_dir=policies,
        data_dir=tmp_path / "data",
        port=free_port(),
        store=store,
        warm=False,
        flags_topic=kafka.names.flags,
        bootstrap_servers=kafka.bootstrap,
    )
    studio = _Studio(config)
    try:
        _wait_for(studio.url + "/review", r'id="origin-flags">1<')
        request = urllib.request.Request(
            f"{studio.url}/store/queue", data=b"", headers={"Origin": studio.url}
        )
        _get_request(request)  # queued now, or once the store's backtest is ready
        page = _wait_for(studio.url + "/review", r'id="origin-store">1<')
        # the store found the red triangle again (merged) and the shadow policy's incident
        assert 'id="queue-total">2<' in page and 'id="origin-flags">1<' in page
    finally:
        studio.stop()
    red = closed[0]
    queue = ReviewQueue(store / "_labels.sqlite")
    try:
        item = queue.get(
            incident_id(red["stream_id"], red["policy"], red["label"], red["start_ts"])
        )
        assert item is not None and item.origin == "flags"
        assert (item.event_id, item.source, item.end_ts) == (
            red["event_id"],
            red["source"],
            red["end_ts"],
        )
        assert {i.policy for i in queue.all()} == {"red-triangle", "spam-text"}
    finally:
        queue.close()
