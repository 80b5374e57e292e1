"""The package's layers import downwards only: no two subpackages import each other, directly or
through others (function-local imports count: they hide a cycle, they do not remove it)."""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

PACKAGE = Path(__file__).resolve().parents[1] / "embed_assets"


def _unit(module: str) -> str:
    """A module's layer: its subpackage (``embed_assets.training``) or top-level module."""
    parts = module.split(".")
    return ".".join(parts[:2])


def package_graph() -> nx.DiGraph:
    graph = nx.DiGraph()
    for path in PACKAGE.rglob("*.py"):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        source = _unit(module.removesuffix(".__init__"))
        graph.add_node(source)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module]
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0
                else []
            )
            for name in names:
                if name.startswith("embed_assets.") and _unit(name) != source:
                    graph.add_edge(
                        source, _unit(name), at=f"{path.relative_to(PACKAGE.parent)}:{node.lineno}"
                    )
    return graph


def test_no_subpackages_import_each_other():
    graph = package_graph()
    cycles = list(nx.simple_cycles(graph))
    where = [
        " -> ".join(c + [c[0]])
        + " ("
        + ", ".join(graph.edges[a, b]["at"] for a, b in zip(c, c[1:] + c[:1], strict=True))
        + ")"
        for c in cycles
    ]
    assert not cycles, "import cycles:\n" + "\n".join(where)
