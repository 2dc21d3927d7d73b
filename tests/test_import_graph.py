"""The import graph of src/deltalens (issue 16, done-when): no cycle, no upward arrow.

A static scan (``ast``) of every ``import`` in every module, including the lazy ones inside
functions: an arrow is an arrow whenever it runs. Areas are the first name under ``deltalens``
(``kernel``, ``weights``, ``models``, ...).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1] / "src" / "deltalens"

#: areas that measure; they may be used by the lab, the report and the CLI, never the other way round
LOWER = ("checkpoints", "linalg", "weights", "kernel", "curvature", "behavior", "models", "limits", "tracking")
UPPER = ("lab", "report", "cli", "demo")


def _module(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path = ROOT) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(every import, module-level imports only): module -> deltalens modules it imports."""
    paths = {_module(p, root): p for p in root.rglob("*.py")}
    every, top = defaultdict(set), defaultdict(set)
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(path.read_text(), filename=str(path))
        top_nodes = set(map(id, tree.body))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in paths]
            else:
                continue
            for target in targets:
                if target in paths and target != name:
                    every[name].add(target)
                    if id(node) in top_nodes:
                        top[name].add(target)
    return every, top


def area(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in list(graph):
        if v not in index:
            visit(v)
    return found


def area_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    out = defaultdict(set)
    for module, targets in graph.items():
        for target in targets:
            if area(module) != area(target):
                out[area(module)].add(area(target))
    return out


def test_the_scan_sees_planted_cycles_and_arrows(tmp_path):
    """The scanner itself: a planted cycle (one of them a lazy, relative import) and an upward arrow."""
    pkg = tmp_path / "deltalens"
    (pkg / "weights").mkdir(parents=True)
    (pkg / "lab").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "weights" / "__init__.py").write_text("from deltalens.weights.a import f\n")
    (pkg / "weights" / "a.py").write_text("def f():\n    from .b import g\n    return g\n")
    (pkg / "weights" / "b.py").write_text("import deltalens.weights.a\nfrom deltalens.lab import run\n")
    (pkg / "lab" / "__init__.py").write_text("run = 1\n")
    every, top = import_graph(pkg)
    assert cycles(every) == [["deltalens.weights.a", "deltalens.weights.b"]]
    assert cycles(top) == []  # the a → b arrow is lazy
    assert area_graph(every)["weights"] == {"lab"}


def test_lower_areas_never_import_upper_ones():
    """weights, kernel, behavior, curvature, ... never import lab, report or the CLI (not even lazily)."""
    every, _ = import_graph()
    upward = sorted(f"{m} -> {t}" for m, ts in every.items() for t in ts if area(m) in LOWER and area(t) in UPPER)
    assert upward == []


def test_no_cycle_outside_lab_and_report():
    """No cycle among modules (any import) nor among areas, leaving out lab/ and report/ (the next test
    includes them: it names a cycle there apart from one among the measuring areas)."""
    every, _ = import_graph()
    kept = {m: {t for t in ts if area(t) not in ("lab", "report")} for m, ts in every.items()
            if area(m) not in ("lab", "report")}
    assert cycles(kept) == []
    assert cycles(area_graph(kept)) == []


def test_no_cycle_anywhere():
    every, top = import_graph()
    assert cycles(top) == []
    assert cycles(every) == []
    assert cycles(area_graph(every)) == []
