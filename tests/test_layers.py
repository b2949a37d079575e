"""The import graph of the package: no circle, and no arrow from a lower layer to a higher one."""

from __future__ import annotations

import ast
from pathlib import Path

import covidseg

SRC = Path(covidseg.__file__).parent


def _graph() -> dict[str, set[str]]:
    """module -> the covidseg modules it imports (at top level or inside functions)."""
    mods = {}
    for f in SRC.rglob("*.py"):
        parts = ("covidseg",) + f.relative_to(SRC).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    graph: dict[str, set[str]] = {}
    for name, f in mods.items():
        found = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("covidseg"):
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    found.add(sub if sub in mods else node.module)
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("covidseg")}
        graph[name] = {m for m in found if m in mods and m != name}
    return graph


def test_the_import_graph_has_no_circle() -> None:
    graph, state, cycles = _graph(), {}, []

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in graph[node]:
            if nxt == "covidseg" or node == "covidseg":  # the package root's lazy conveniences
                continue
            if state.get(nxt) == "open":
                cycles.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for m in graph:
        if m not in state:
            visit(m, [m])
    assert not cycles, cycles


LOWER_NEVER_IMPORTS_UPPER = {
    "covidseg.engine": ("covidseg.report", "covidseg.sweep", "covidseg.evaluation", "covidseg.cli", "covidseg.serve"),
    "covidseg.inference": ("covidseg.report", "covidseg.predict", "covidseg.export", "covidseg.cli", "covidseg.serve"),
    "covidseg.data": ("covidseg.engine", "covidseg.inference", "covidseg.report", "covidseg.cli"),
    "covidseg.metrics": ("covidseg.data",),
    "covidseg.detection": ("covidseg.data",),
    "covidseg.figures": ("covidseg.engine", "covidseg.report", "covidseg.data"),
    "covidseg.sweep": ("covidseg.report",),
    "covidseg.report": ("covidseg.sweep", "covidseg.cli"),
}


def test_lower_layers_do_not_import_upper_ones() -> None:
    wrong = [
        (m, t)
        for m, targets in _graph().items()
        for low, banned in LOWER_NEVER_IMPORTS_UPPER.items()
        if m == low or m.startswith(low + ".")
        for t in targets
        if any(t == b or t.startswith(b + ".") for b in banned)
    ]
    assert not wrong, wrong
