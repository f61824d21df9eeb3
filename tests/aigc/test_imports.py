"""The project's import graph: no cycles, and imports flow one way between the packages.

Every `import` and `from ... import` in the project's packages counts, at module level or
inside a function (a lazy import still ties the modules together). Layers, lowest first:

- `aigc.errors`, `aigc.fsutil`, `aigc.registry`: the exceptions, file helpers and model-kind
  registry every package uses (the registry names its hooks as strings, each resolved by the
  stage it belongs to);
- `training`;
- `serving.triton_models`: the GPT-2 engine and the Triton models, self-contained (they run
  from a flat repository version folder inside Triton's Python backend); `export` judges and
  profiles the variants with the engine that will serve them;
- `export`;
- `serving` (the builder, server, client, OpenAI frontend);
- `benchmarks`;
- `aigc` (the CLI on top).

A module may import its own layer and the layers below it.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("aigc", "training", "export", "serving", "benchmarks")
LAYERS = (
    ("aigc.errors", "aigc.fsutil", "aigc.registry", "aigc.imagegrid"),
    ("training",),
    ("serving.triton_models",),
    ("export",),
    ("serving",),
    ("benchmarks",),
    ("aigc",),
)


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            parts = f.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            mods[name] = f
    return mods


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports (the longest module prefix of each name)."""
    mods = _modules()

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in mods}
    for module, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from pkg import module` ties to the module; `from pkg import name` to pkg
                subs = [f"{node.module}.{a.name}" for a in node.names]
                names = [n for n in subs if n in mods] or [node.module]
            else:
                continue
            for name in names:
                target = resolve(name)
                if target is not None and target != module:
                    graph[module].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def layer(module: str) -> int:
    """The layer of a module: the most specific entry of LAYERS that contains it."""
    best, depth = None, -1
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and prefix.count(".") > depth:
                best, depth = i, prefix.count(".")
    assert best is not None, f"{module} is in no layer"
    return best


def test_the_graph_finds_the_projects_imports():
    graph = import_graph()
    assert "serving.builder" in graph and "aigc.cli" in graph
    assert "serving.variant_choice" in graph["serving.builder"]
    assert "aigc.errors" in graph["training.checkpoint"]


def test_cycle_finder_finds_a_cycle_and_only_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_imports_flow_one_way_between_the_packages():
    upward = [
        f"{module} -> {target}"
        for module, targets in import_graph().items()
        for target in sorted(targets)
        if layer(target) > layer(module)
    ]
    assert upward == []
