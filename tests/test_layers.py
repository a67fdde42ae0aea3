"""The package's import arrows run down: shared machinery never imports a stage, no module cycle.

Every `import` counts, also the lazy ones inside functions: a cycle through a lazy import still
ties two modules together, and a stage reached from below still drags its dependencies in.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "lamini"

# Each top-level part of lamini and the parts it may import (its own modules aside). Read it as
# floors: config and corpus at the bottom, then models/scoring, engines, runs, analysis, the stages
# (generate, train, evaluate) and the command line on top. `testing` builds fixtures for tests and
# benchmarks and is imported by no library module.
ALLOWED: dict[str, set[str]] = {
    "lamini": set(),
    "lamini.config": {"lamini"},
    "lamini.corpus": {"lamini", "lamini.config"},
    "lamini.reporting": set(),
    "lamini.paper": set(),
    "lamini.models": {"lamini", "lamini.config", "lamini.reporting"},
    "lamini.scoring": {"lamini", "lamini.config"},
    "lamini.engines": {"lamini", "lamini.config", "lamini.models"},
    "lamini.runs": {"lamini", "lamini.config", "lamini.corpus", "lamini.engines", "lamini.models"},
    "lamini.analysis": {"lamini", "lamini.config", "lamini.corpus", "lamini.reporting", "lamini.runs", "lamini.scoring",
                        "lamini.paper"},
    "lamini.generate": {"lamini", "lamini.config", "lamini.corpus", "lamini.reporting", "lamini.models",
                        "lamini.scoring", "lamini.engines", "lamini.runs", "lamini.analysis"},
    "lamini.train": {"lamini", "lamini.config", "lamini.corpus", "lamini.reporting", "lamini.models", "lamini.runs"},
    "lamini.evaluate": {"lamini", "lamini.config", "lamini.corpus", "lamini.reporting", "lamini.models",
                        "lamini.scoring", "lamini.engines", "lamini.runs"},
    "lamini.testing": {"lamini", "lamini.config", "lamini.models"},
}  # fmt: skip
# The herd runs every stage: it sits on top of them all, under the command line.
ALLOWED["lamini.herd"] = set(ALLOWED) - {"lamini.testing"}
ALLOWED["lamini.cli"] = set(ALLOWED) - {"lamini.cli", "lamini.testing"}


def _module(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """module -> the lamini modules it imports (anywhere in it), by dotted name."""
    out: dict[str, set[str]] = defaultdict(set)
    for path in PKG.rglob("*.py"):
        mod = _module(path)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "lamini":
                out[mod].add(node.module)
                for alias in node.names:  # `from lamini.x import module`
                    sub = f"{node.module}.{alias.name}"
                    if (PKG.parent / (sub.replace(".", "/") + ".py")).exists() or (PKG.parent / sub.replace(".", "/")).is_dir():
                        out[mod].add(sub)
            elif isinstance(node, ast.Import):
                out[mod].update(a.name for a in node.names if a.name.split(".")[0] == "lamini")
    return out


def _part(mod: str) -> str:
    return ".".join(mod.split(".")[:2])


def test_every_part_is_placed():
    assert {_part(m) for m in _imports()} | {_part(_module(p)) for p in PKG.rglob("*.py")} <= set(ALLOWED)


def test_import_arrows_run_down():
    wrong = sorted(
        f"{mod} imports {dep}"
        for mod, deps in _imports().items()
        for dep in deps
        if _part(dep) != _part(mod) and _part(dep) not in ALLOWED[_part(mod)]
    )
    assert not wrong, "imports that run up or sideways:\n" + "\n".join(wrong)


def test_evaluate_needs_neither_generate_nor_train():
    deps = {d for m, ds in _imports().items() if _part(m) == "lamini.evaluate" for d in ds}
    assert not {d for d in deps if _part(d) in ("lamini.generate", "lamini.train")}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in list(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_between_modules():
    # A module importing its own package's __init__ is not a cycle of two modules.
    graph = {m: {d for d in ds if d != m and not m.startswith(d + ".")} for m, ds in _imports().items()}
    assert _cycles(graph) == []


@pytest.mark.parametrize("graph,expected", [({"a": {"b"}, "b": {"a"}}, [["a", "b"]]), ({"a": {"b"}, "b": set()}, [])])
def test_cycle_finder_finds_cycles(graph, expected):
    assert _cycles(graph) == expected
