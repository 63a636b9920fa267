"""The code base keeps its own rules: lint (ruff), types (mypy --strict), layers (import-linter)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def run(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    exe = BIN / tool if (BIN / tool).exists() else shutil.which(tool)
    if exe is None:
        pytest.fail(f"{tool} is not installed: run .ci/setup")
    return subprocess.run([str(exe), *args], cwd=ROOT, capture_output=True, text=True, check=False)


def test_ruff_finds_nothing() -> None:
    done = run("ruff", "check", "--no-cache", ".")
    assert done.returncode == 0, done.stdout + done.stderr


def test_code_is_ruff_formatted() -> None:
    done = run("ruff", "format", "--check", "--no-cache", ".")
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.slow
def test_mypy_strict_passes() -> None:
    done = run("mypy")
    assert done.returncode == 0, done.stdout + done.stderr


def test_layers_are_kept() -> None:
    done = run("lint-imports", "--no-cache")
    assert done.returncode == 0, done.stdout + done.stderr


PRODUCT = ("spider", "actors", "cni")


def test_no_import_cycle_between_product_modules() -> None:
    import grimp

    graph = grimp.build_graph(*PRODUCT, cache_dir=None)
    modules = sorted(graph.modules)
    index = {m: i for i, m in enumerate(modules)}
    # Tarjan's strongly connected components: any component of two or more modules is a cycle.
    order: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(m: str) -> None:
        order[m] = low[m] = len(order)
        stack.append(m)
        on_stack.add(m)
        for n in sorted(graph.find_modules_directly_imported_by(m), key=index.__getitem__):
            if n not in order:
                visit(n)
                low[m] = min(low[m], low[n])
            elif n in on_stack:
                low[m] = min(low[m], order[n])
        if low[m] == order[m]:
            component = []
            while True:
                n = stack.pop()
                on_stack.discard(n)
                component.append(n)
                if n == m:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for m in modules:
        if m not in order:
            visit(m)
    assert cycles == []


def test_no_product_module_is_over_1000_lines() -> None:
    long = {
        str(p.relative_to(ROOT)): n
        for package in PRODUCT
        for p in (ROOT / package).rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 1000
    }
    assert long == {}


def test_actors_is_a_set_of_rooms_that_say_what_they_own() -> None:
    loose = sorted(p.name for p in (ROOT / "actors").glob("*.py") if p.name != "__init__.py")
    assert len(loose) <= 8, loose
    rooms = [p for p in (ROOT / "actors").iterdir() if p.is_dir() and not p.name.startswith("__")]
    assert len(rooms) >= 5
    for room in rooms:
        init = room / "__init__.py"
        assert init.exists(), f"{room.name} is not a package"
        text = init.read_text()
        assert text.startswith('"""'), f"{room.name}/__init__.py must say what it owns"
        assert "import" in text.lower(), f"{room.name}/__init__.py must say what it may import"
