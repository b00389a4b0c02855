"""Every shipped config loads and validates (no model is loaded)."""

from pathlib import Path

import pytest

from iama.config import load_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_validates(path):
    cfg = load_config(path)
    assert cfg.criteria and cfg.num_generations >= 2


def test_there_are_configs():
    names = {p.name for p in CONFIGS}
    assert {"length.yaml", "length-baseline.yaml", "length-tiny.yaml", "length-tiny-baseline.yaml"} <= names


def test_the_import_graph_has_no_circle():
    """Modules import one way (config at the bottom, ctrl and trainer above it): no module reaches itself."""
    import ast

    package = Path(__file__).resolve().parents[1] / "iama"
    graph = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(package.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        here = parts[:-1]  # the package a relative import starts from
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level and node.module:
                deps.add(".".join([*here[: len(here) - node.level + 1], node.module]))
        graph[module] = deps

    def reaches(start, goal):
        seen, todo = set(), list(graph.get(start, ()))
        while todo:
            m = todo.pop()
            if m == goal:
                return True
            if m not in seen:
                seen.add(m)
                todo.extend(graph.get(m, ()))
        return False

    assert "iama.config" in graph["iama.trainer"] and "iama.algorithms" in graph["iama.config"]  # edges are found
    circles = sorted((a, b) for a in graph for b in graph[a] if reaches(b, a))
    assert circles == []
