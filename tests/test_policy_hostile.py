"""Hostile policy files: YAML that expands or recurses, files too large or not files, exemplar
paths that leave the policy's folder. Real files, FIFOs and symlinks; the real compiler (on a
tiny random-weight CLIP) for the exemplar checks."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from pipeline.errors import PolicyError
from pipeline.models import load_clip
from pipeline.policies import load_policies
from pipeline.policies.compile import PolicyCompiler
from pipeline.policies.schema import MAX_POLICY_BYTES, load_policy, parse_policy

BASE = """\
id: knives
version: 2
description: Knives held or shown.
owner: tns@example.com
severity: high
action: review
labels:
  - name: knife
    prompts: [a knife]
    threshold: 0.25
"""


def _bomb(levels: int = 9) -> str:
    """The classic alias bomb: each level nine aliases of the one before."""
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for n in range(1, levels):
        refs = ",".join([f"*a{n - 1}"] * 9)
        lines.append(f"a{n}: &a{n} [{refs}]")
    return BASE + "\n".join(lines) + "\n"


def test_yaml_anchors_and_aliases_are_refused_at_once() -> None:
    text = _bomb()
    assert len(text) < 1000
    started = time.monotonic()
    with pytest.raises(PolicyError, match=r"knives\.yaml:\d+:\d+: YAML anchors and aliases"):
        parse_policy(text, path="knives.yaml")
    assert time.monotonic() - started < 1.0
    # a self-referencing alias: a clear error, not a RecursionError
    with pytest.raises(PolicyError, match="anchors and aliases"):
        parse_policy(BASE + "x: &x [*x]\n", path="knives.yaml")
    # a merge key needs an alias too
    with pytest.raises(PolicyError, match="anchors and aliases"):
        parse_policy(BASE + "t: &t {k: 1}\ntemporal: {<<: *t}\n", path="knives.yaml")


def test_deep_nesting_and_large_files_are_refused() -> None:
    with pytest.raises(PolicyError, match="nested deeper than 32"):
        parse_policy(BASE + "x: " + "[" * 20000 + "]" * 20000 + "\n", path="knives.yaml")
    with pytest.raises(PolicyError, match=str(MAX_POLICY_BYTES)):
        parse_policy(BASE + "#" * MAX_POLICY_BYTES, path="knives.yaml")


def test_policy_files_are_regular_files_within_the_size_cap(tmp_path: Path) -> None:
    big = tmp_path / "big" / "knives.yaml"
    big.parent.mkdir()
    big.write_text(BASE + "#" * MAX_POLICY_BYTES)
    with pytest.raises(PolicyError, match="over the limit"):
        load_policy(big)
    fifo = tmp_path / "fifo" / "knives.yaml"
    fifo.parent.mkdir()
    os.mkfifo(fifo)
    outcome: list[BaseException] = []

    def attempt() -> None:
        try:
            load_policy(fifo)
        except BaseException as e:
            outcome.append(e)

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout=5)
    if thread.is_alive():
        with open(fifo, "wb"):
            pass
        pytest.fail("reading a FIFO policy file blocked")
    assert len(outcome) == 1 and isinstance(outcome[0], PolicyError), outcome
    assert "not a regular file" in str(outcome[0])


@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("/etc/passwd", "not absolute"),
        ("../secret.png", "no '..'"),
        ("examples/../../secret.png", "no '..'"),
    ],
)
def test_exemplar_and_example_paths_stay_relative(path: str, words: str) -> None:
    exemplar = BASE.replace(
        "    prompts: [a knife]\n", f"    prompts: [a knife]\n    exemplars: [{path}]\n"
    )
    with pytest.raises(PolicyError, match=r"knives\.yaml:\d+:\d+: labels\.0\.exemplars\.0"):
        parse_policy(exemplar, path="knives.yaml")
    example = BASE + f"examples:\n  - {{path: {path}, expect: flag}}\n"
    with pytest.raises(PolicyError, match=words):
        parse_policy(example, path="knives.yaml")


def test_exemplars_are_regular_files_inside_the_policy_folder(tmp_path: Path) -> None:
    model = load_clip("clipguard-demo")
    folder = tmp_path / "p"
    folder.mkdir()
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"\x89PNG secret")
    (folder / "out.png").symlink_to(secret)  # a symlink out of the folder
    (folder / "zero.png").symlink_to("/dev/zero")  # read whole, this was a MemoryError
    os.mkfifo(folder / "pipe.png")  # read, this blocked
    for name, words in (
        ("out.png", "outside the policy's folder"),
        ("zero.png", "outside the policy's folder"),
        ("pipe.png", "not a regular file"),
    ):
        text = BASE.replace(
            "    prompts: [a knife]\n", f"    prompts: [a knife]\n    exemplars: [{name}]\n"
        )
        (folder / "knives.yaml").write_text(text)
        compiler = PolicyCompiler(model, cache_dir=tmp_path / "cache")
        started = time.monotonic()
        with pytest.raises(PolicyError, match=words):
            compiler.compile(load_policies([folder]))
        assert time.monotonic() - started < 10
