"""The package's shape: a stage imports only the stages before it; nothing imports in a cycle."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import attrsub

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("attrsub", "sweeps", "results")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every project module ``name`` imports, at module level or inside a function."""
    out: set[str] = set()
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")[: len(name.split(".")) - node.level + is_pkg]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {name: _imports(name, path, set(mods)) for name, path in mods.items()}


def _layer(module: str) -> tuple[str, int] | None:
    """(kind, position) of an attrsub module: its stage's index, -1 for a foundation."""
    parts = module.split(".")
    if parts[0] != "attrsub" or len(parts) < 2:
        return None
    if parts[1] in attrsub.FOUNDATIONS:
        return ("foundation", -1)
    if parts[1] in attrsub.STAGES:
        return (parts[1], attrsub.STAGES.index(parts[1]))
    return None


def test_every_library_module_is_a_stage_or_a_foundation() -> None:
    top = {"attrsub", "attrsub.cli", "attrsub.__main__"}
    loose = [m for m in _modules() if m.startswith("attrsub") and m not in top
             and _layer(m) is None]
    assert not loose, f"modules outside STAGES and FOUNDATIONS: {loose}"


def test_stages_import_only_earlier_stages() -> None:
    bad = []
    for mod, deps in _graph().items():
        here = _layer(mod)
        if here is None:
            continue
        for dep in deps:
            if dep == "attrsub" or not dep.startswith("attrsub"):
                continue
            there = _layer(dep)
            if there is None:
                bad.append(f"{mod} ({here[0]}) -> {dep} (above every stage)")
            elif there[1] > here[1]:
                bad.append(f"{mod} ({here[0]}) -> {dep} ({there[0]})")
    assert not bad, "imports against the stage order:\n" + "\n".join(sorted(bad))


def test_no_import_cycle() -> None:
    graph = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


@pytest.mark.parametrize("stage", [*attrsub.STAGES, *attrsub.FOUNDATIONS, "cli"])
def test_each_stage_imports_alone(stage: str) -> None:
    """A fresh interpreter imports the stage by itself: nothing relies on an import order."""
    code = (f"import attrsub.{stage}, sys; "
            "print(sorted(m for m in sys.modules if m.startswith('ray')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"attrsub.{stage} imported Ray: {out.stdout}"


def test_package_data_names_files_that_exist() -> None:
    """Every package-data glob in pyproject.toml matches a file, so a wheel ships them all."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    data = config["tool"]["setuptools"]["package-data"]
    empty = [f"{pkg}/{glob}" for pkg, globs in data.items() for glob in globs
             if not list((ROOT / pkg.replace(".", "/")).glob(glob))]
    assert not empty, f"package data that matches nothing: {empty}"
