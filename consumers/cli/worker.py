"""``clipguard worker``: the stream worker, segments from Kafka in, scores and flag events
out."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Final

from consumers.argtypes import port, positive_float, positive_int
from consumers.cli.common import (
    EXIT_USAGE,
    PROG,
    add_banks_option,
    add_bootstrap_servers,
    add_command,
    add_fit_option,
    add_model_option,
    add_policies_option,
    add_sample_fps_option,
    quiet_kafka,
    use_log_format,
)

__all__ = ["add_parser"]

_EPILOG = """\
examples:
  clipguard worker                                   demo model and policies, 127.0.0.1:9092
  clipguard worker --bootstrap-servers kafka:9092 --model ViT-B/32 --policies policies/
  clipguard worker --config worker.yaml --log-format json
  clipguard worker --set decode.timeout_s=10 --set sampling.mode=keyframes
  clipguard worker --print-settings                  show the settings in force and exit

Settings come from (each overriding the ones below): these options and --set,
CLIPGUARD_* environment variables (CLIPGUARD_MAX_BATCH_SIZE=32, nested with __:
CLIPGUARD_DECODE__FIT=crop), the --config file (YAML or TOML), the defaults.
Every setting is listed in docker/README.md.

signals: SIGTERM or SIGINT stops fetching, finishes the segments in flight, publishes
their outputs, commits, leaves the group and exits 0 (within shutdown_deadline_s).
A second signal exits at once; unfinished segments are then consumed again.
exit status: 0 after a clean stop, 1 when it cannot start or fails, 2 for usage errors.
"""

# command-line option -> settings key (dotted for nested settings)
_OPTIONS: Final = {
    "bootstrap_servers": "bootstrap_servers",
    "group_id": "group_id",
    "model": "model",
    "policies": "policies",
    "banks": "banks",
    "device": "device",
    "precision": "precision",
    "max_batch_size": "max_batch_size",
    "max_batch_wait_ms": "max_batch_wait_ms",
    "max_inflight_segments": "max_inflight_segments",
    "decode_processes": "decode.processes",
    "fit": "decode.fit",
    "sampling": "sampling.mode",
    "sample_fps": "sampling.fps",
    "metrics_port": "metrics_port",
    "metrics_host": "metrics_host",
    "log_format": "log_format",
    "shutdown_deadline_s": "shutdown_deadline_s",
}


def add_parser(subparsers: Any) -> None:
    """Add ``clipguard worker``: one option per setting in ``_OPTIONS``, ``--set`` for the
    others. Every option defaults to None: only what is given overrides the settings."""
    worker = add_command(
        subparsers,
        "worker",
        help="run the stream worker: segments from Kafka in, scores and flag events out",
        description="Join the consumer group and moderate the video segments on the segments "
        "topic: decode them in sandboxed processes, encode sampled frames with CLIP in batches "
        "shared across streams, score them against the policies, and publish score records, "
        "flag events and dead letters. Offsets are committed only after every output is "
        "acknowledged. Metrics, /healthz and /readyz are served over HTTP.",
        epilog=_EPILOG,
    )
    add = worker.add_argument
    add("--config", metavar="FILE", help="settings file, YAML or TOML")
    add_bootstrap_servers(worker, metavar="HOST:PORT[,...]", help="Kafka brokers")
    add("--group-id", metavar="ID", help="consumer group")
    add_model_option(worker, help="CLIP model (default: clipguard-demo)")
    add_policies_option(worker, repeatable=False, help="policy files or folders")
    add_banks_option(worker, help="hash bank files or folders, for kind: hash policies")
    add("--device", choices=("auto", "cpu", "cuda"), help="encoder device")
    add(
        "--precision",
        choices=("auto", "fp32", "bf16", "fp16", "int8"),
        help="image encoder precision (default: auto, the fastest that passes the accuracy guard)",
    )
    add("--max-batch-size", type=positive_int, metavar="N", help="frames per encoder batch")
    add("--max-batch-wait-ms", type=int, metavar="MS", help="longest wait to fill a batch")
    add(
        "--max-inflight-segments",
        type=positive_int,
        metavar="N",
        help="segments in progress before consumption pauses",
    )
    add("--decode-processes", type=positive_int, metavar="N", help="decode processes")
    add_fit_option(worker, help="how frames fit the model input")
    add("--sampling", choices=("all", "fps", "keyframes", "scene"), help="frame sampling mode")
    add_sample_fps_option(worker, help="frames per second (fps mode)")
    add("--metrics-port", type=port, metavar="N", help="metrics port, 0 disables")
    add("--metrics-host", metavar="ADDR", help="address the metrics server binds")
    add("--log-format", choices=("text", "json"), help="log lines as text (default) or JSON")
    add("--shutdown-deadline-s", type=positive_float, metavar="S", help="drain time on stop")
    add(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other setting, dotted for nested ones (decode.timeout_s=10); repeatable",
    )
    add(
        "--print-settings",
        action="store_true",
        help="print the settings in force (secrets hidden) as JSON and exit",
    )
    worker.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import signal
    from pathlib import Path

    from consumers.settings import load_settings

    # Signals are handled from the start: a stop during start-up (loading torch and the model
    # takes seconds) ends the worker cleanly as soon as it can act on it.
    holder: dict[str, Any] = {"signals": 0, "worker": None, "reason": None}

    def on_signal(signum: int, frame: object) -> None:
        holder["signals"] += 1
        if holder["signals"] > 1:
            raise KeyboardInterrupt
        holder["reason"] = f"{signal.Signals(signum).name} received"
        if holder["worker"] is not None:
            holder["worker"].stop(holder["reason"])

    old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        overrides = _overrides(args)
        if overrides is None:
            return EXIT_USAGE
        settings = load_settings(
            config_file=Path(args.config) if args.config else None, overrides=overrides
        )
        use_log_format(settings.log_format)
        if args.print_settings:
            print(settings.model_dump_json(indent=2))
            return 0
        quiet_kafka(args.log_level)
        from consumers.worker import Worker, encoder_threads

        if settings.resolved_device() == "cpu":  # the process is the worker's: set its threads
            import torch

            torch.set_num_threads(encoder_threads(settings))
        worker = Worker(settings)
        holder["worker"] = worker
        if holder["reason"] is not None:
            worker.stop(holder["reason"])
        return worker.run()
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _overrides(args: argparse.Namespace) -> dict[str, Any] | None:
    """The settings the options and ``--set`` give; None (after saying why) for a malformed
    ``--set``."""
    overrides: dict[str, Any] = {key: getattr(args, option) for option, key in _OPTIONS.items()}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            print(f"{PROG} worker: error: --set wants KEY=VALUE, not {item!r}", file=sys.stderr)
            return None
        overrides[key.strip()] = _setting_value(value)
    return overrides


def _setting_value(text: str) -> Any:
    """A --set value: JSON when it parses (numbers, true, lists), else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text
