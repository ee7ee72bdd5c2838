"""The ``clipguard`` command line as a package: one ``add_parser`` per command group, one Kafka
address option (``--bootstrap-servers``) on every command that talks to Kafka, the former
spellings still accepted but not shown, and a help screen that loads neither torch nor Kafka.

Parsing is checked on the real parser; the scan's switch to Kafka mode on the real command (it
refuses ``--model`` there before any connection). Sending and reading records with the former
spellings against a real broker is in tests/test_broker.py.
"""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

from consumers.cli import build_parser, main
from consumers.cli.common import DEFAULT_BOOTSTRAP, EXIT_USAGE

ROOT = Path(__file__).resolve().parent.parent

GROUPS = (
    "models",
    "policy",
    "banks",
    "broker",
    "produce",
    "worker",
    "consume",
    "scan",
    "store",
    "studio",
)

# command line before the Kafka address, and the former spelling of the option
KAFKA_COMMANDS = {
    "produce": (["produce", "clip.mp4", "--stream-id", "cam1"], "--bootstrap"),
    "consume": (["consume", "clipguard.flags"], "--bootstrap"),
    "scan": (["scan", "uploads/"], "--kafka"),
    "worker": (["worker"], None),
}


def _help(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main([*argv, "--help"]) == 0
    return capsys.readouterr().out


def test_every_group_module_adds_its_parser() -> None:
    for name in GROUPS:
        module = importlib.import_module(f"consumers.cli.{name}")
        assert "add_parser" in module.__all__, name
        assert callable(module.add_parser), name
    choices = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert set(choices) == set(GROUPS)


@pytest.mark.parametrize("command", sorted(KAFKA_COMMANDS))
def test_every_kafka_command_takes_bootstrap_servers(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv, _ = KAFKA_COMMANDS[command]
    args = build_parser().parse_args([*argv, "--bootstrap-servers", "kafka-1:9092,kafka-2:9092"])
    assert args.bootstrap_servers == "kafka-1:9092,kafka-2:9092"
    assert "--bootstrap-servers" in _help(capsys, command)


@pytest.mark.parametrize("command", ["produce", "consume", "scan"])
def test_former_spellings_still_work_and_are_hidden(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv, old = KAFKA_COMMANDS[command]
    assert old is not None
    args = build_parser().parse_args([*argv, old, "kafka:9092"])
    assert args.bootstrap_servers == "kafka:9092"
    # the last one given wins, whichever its spelling
    args = build_parser().parse_args([*argv, old, "a:1", "--bootstrap-servers", "b:2"])
    assert args.bootstrap_servers == "b:2"
    args = build_parser().parse_args([*argv, "--bootstrap-servers", "b:2", old, "a:1"])
    assert args.bootstrap_servers == "a:1"
    text = _help(capsys, command)
    assert "--bootstrap-servers" in text
    assert re.search(rf"{old}(?![-\w])", text) is None, text


def test_defaults_of_the_kafka_address() -> None:
    parser = build_parser()
    for command in ("produce", "consume"):
        argv, _ = KAFKA_COMMANDS[command]
        assert parser.parse_args(argv).bootstrap_servers == DEFAULT_BOOTSTRAP
    assert parser.parse_args(["scan", "uploads/"]).bootstrap_servers is None  # local scan
    assert parser.parse_args(["worker"]).bootstrap_servers is None  # the settings decide


def test_a_former_spelling_without_its_value_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["consume", "clipguard.flags", "--bootstrap"]) == EXIT_USAGE
    assert "argument --bootstrap: expected one argument" in capsys.readouterr().err


@pytest.mark.parametrize("spelling", ["--bootstrap-servers", "--kafka"])
def test_a_kafka_address_switches_scan_to_the_worker_fleet(
    spelling: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # In Kafka mode the workers' model scans, so --model is refused, before any connection:
    # a local scan would have failed on the unknown model instead (status 1).
    argv = ["scan", spelling, "127.0.0.1:9", "--model", "no-such-model"]
    assert main([*argv, str(tmp_path / "missing.mp4"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "--model cannot be used with --bootstrap-servers" in err
    assert not (tmp_path / "out").exists()


def test_help_loads_neither_torch_nor_kafka() -> None:
    code = (
        "import sys, contextlib, io\n"
        "from consumers.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    for argv in ([], ['scan'], ['worker'], ['consume'], ['produce'], ['models'],\n"
        "                 ['studio']):\n"
        "        assert main([*argv, '--help']) == 0\n"
        "loaded = sorted(m for m in ('torch', 'kafka', 'av', 'cv2') if m in sys.modules)\n"
        "assert not loaded, loaded\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
