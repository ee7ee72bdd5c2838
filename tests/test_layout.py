"""The house rules of the code layout, checked on the source: imports run one way, and no
module outgrows a reader (800 lines)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _imports(path: Path) -> set[str]:
    return _imports_of(path.read_text(encoding="utf-8"))


def _imports_of(source: str) -> set[str]:
    """Every module a source imports, at any depth (lazy imports inside functions too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def _files(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def test_the_library_never_imports_the_kafka_applications() -> None:
    offenders = {
        str(p.relative_to(ROOT)): sorted(m for m in _imports(p) if m.split(".")[0] == "consumers")
        for p in _files("pipeline")
    }
    assert {k: v for k, v in offenders.items() if v} == {}
    kafka = {
        str(p.relative_to(ROOT))
        for p in _files("pipeline")
        if any(m.split(".")[0] == "kafka" for m in _imports(p))
    }
    assert kafka == set()


def test_nothing_in_production_imports_the_demo_package() -> None:
    demo = ROOT / "pipeline" / "demo"
    offenders = [
        str(p.relative_to(ROOT))
        for p in _files("pipeline") + _files("consumers")
        if demo not in p.parents and any(m.startswith("pipeline.demo") for m in _imports(p))
    ]
    assert offenders == []


def test_the_check_sees_imports() -> None:
    """The checks above can fail: lazy and aliased imports are seen."""
    source = (
        "import numpy as np\n"
        "def f():\n"
        "    from consumers.worker import Worker\n"
        "    import pipeline.demo.scenes as s\n"
    )
    found = _imports_of(source)
    assert {"consumers.worker", "consumers.worker.Worker", "pipeline.demo.scenes"} <= found


MAX_LINES = 800  # a module a newcomer can read in one sitting


def _too_long(paths: list[Path], limit: int) -> dict[str, int]:
    """The files of ``paths`` longer than ``limit`` lines, with their line counts."""
    counts = {
        str(p.relative_to(ROOT)): len(p.read_text(encoding="utf-8").splitlines()) for p in paths
    }
    return {name: n for name, n in counts.items() if n > limit}


def test_no_module_is_longer_than_800_lines() -> None:
    files = _files("pipeline") + _files("consumers")
    assert len(files) > 50  # the packages were found
    assert _too_long(files, MAX_LINES) == {}


def test_the_length_check_sees_a_long_module() -> None:
    """The check above can fail: a module one line over the limit is named, one at it is not."""
    longest = max(_files("pipeline"), key=lambda p: len(p.read_text(encoding="utf-8").splitlines()))
    n = len(longest.read_text(encoding="utf-8").splitlines())
    assert _too_long([longest], n - 1) == {str(longest.relative_to(ROOT)): n}
    assert _too_long([longest], n) == {}
