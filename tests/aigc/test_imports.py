"""The project's import graph: no cycles, and imports flow one way between the packages.

Every `import` and `from ... import` in the project's packages counts, at module level or
inside a function (a lazy import still ties the modules together), relative ones resolved
(`support.import_graph`). Layers, lowest first:

- `engine`: the GPT-2 generation engine, independent of everything else in the project (it
  is copied whole into a repository version folder and imported there alone);
- `serving.triton_models`: the Triton Python-backend models, which import only the engine
  (gpt2) or the session options copied beside them (the image model);
- `aigc.errors`, `aigc.fsutil`, `aigc.registry`: the exceptions, file helpers and model-kind
  registry every package uses (the registry names its hooks as strings, each resolved by the
  stage it belongs to);
- `training`;
- `export` (it judges and profiles the variants with the engine's runners);
- `serving` (the builder, server, client, OpenAI frontend);
- `benchmarks`;
- `aigc` (the CLI on top).

A module may import its own layer and the layers below it.
"""

from __future__ import annotations

from support import import_graph

LAYERS = (
    ("engine",),
    ("serving.triton_models",),
    ("aigc.errors", "aigc.fsutil", "aigc.registry", "aigc.imagegrid", "aigc.provenance"),
    ("training",),
    ("export",),
    ("serving",),
    ("benchmarks",),
    ("aigc",),
)


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
    assert "engine.scheduler" in graph["engine.core"] and "engine.plan" in graph["engine.runners.fake"]


def test_relative_imports_are_resolved(tmp_path, monkeypatch):
    import support

    pkg = tmp_path / "engine" / "runners"
    pkg.mkdir(parents=True)
    (tmp_path / "engine" / "__init__.py").write_text("")
    (tmp_path / "engine" / "plan.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "fake.py").write_text("from ..plan import Forward\nfrom . import base\n")
    (pkg / "base.py").write_text("")
    monkeypatch.setattr(support, "ROOT", tmp_path)
    monkeypatch.setattr(support, "PACKAGES", ("engine",))
    assert import_graph()["engine.runners.fake"] == {"engine.plan", "engine.runners.base"}


def test_the_engine_and_the_triton_models_import_nothing_else_of_the_project():
    """What a version folder holds must import only what is in it."""
    outside = [
        f"{module} -> {target}"
        for module, targets in import_graph().items()
        for target in sorted(targets)
        if (module.startswith("engine") and not target.startswith("engine"))
        or (module.startswith("serving.triton_models") and not target.startswith("engine"))
    ]
    assert outside == []


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
