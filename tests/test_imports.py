"""The import graph of webtune/ and stages/ has no cycle: every import, at module level or inside a
function, is an edge. A name the loader imports by string (webtune.registry) is no edge, by design."""

import ast
from pathlib import Path

import networkx as nx
import pytest

PACKAGES = ("webtune", "stages")


def module_name(repo: Path, path: Path) -> str:
    parts = path.relative_to(repo).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(repo: Path) -> nx.DiGraph:
    files = {module_name(repo, p): p for pkg in PACKAGES for p in (repo / pkg).rglob("*.py")}
    graph = nx.DiGraph()
    graph.add_nodes_from(files)
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from . import x, from .y import z
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            for target in targets:
                # the longest prefix that is one of our modules is what the import runs
                parts = target.split(".")
                for i in range(len(parts), 0, -1):
                    if ".".join(parts[:i]) in files:
                        if ".".join(parts[:i]) != name:
                            graph.add_edge(name, ".".join(parts[:i]))
                        break
    return graph


def test_the_graph_is_read_from_the_source(repo):
    graph = import_graph(repo)
    assert graph.has_edge("stages.train", "webtune.training")
    assert graph.has_edge("webtune.training.hf", "webtune.params")
    assert "webtune.registry" in graph and not list(graph.successors("webtune.registry"))


def test_webtune_and_stages_have_no_import_cycle(repo):
    cycles = list(nx.simple_cycles(import_graph(repo)))
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c + [c[0]]) for c in cycles[:5])


def test_a_cycle_would_be_found(repo, tmp_path):
    for pkg in PACKAGES:
        (tmp_path / pkg).mkdir()
    (tmp_path / "webtune" / "__init__.py").write_text("")
    (tmp_path / "stages" / "__init__.py").write_text("")
    (tmp_path / "webtune" / "a.py").write_text("from webtune import b\n")
    (tmp_path / "webtune" / "b.py").write_text("def f():\n    from webtune.a import g\n")
    with pytest.raises(AssertionError, match=r"webtune\.(a|b) -> webtune\.(b|a) -> webtune\.\1"):
        test_webtune_and_stages_have_no_import_cycle(tmp_path)
