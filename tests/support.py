"""Helpers the tests import (fixtures live in conftest.py)."""

from __future__ import annotations

import ast
import fcntl
import functools
import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import numpy as np

from export.api import export_model
from serving.server import EmbeddedTritonServer
from training.api import TrainOptions, train

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("aigc", "engine", "training", "export", "serving", "benchmarks")
# What a trained checkpoint or an export is made of: the code of these packages and every
# project module they import, found by reading the imports (`artifact_sources`): the engine's
# runners judge the GPT-2 variants, but its scheduler makes nothing and is not part of it.
ARTIFACT_ROOTS = ("training", "export")
ARTIFACT_LIBRARIES = (
    "torch",
    "onnx",
    "onnxruntime",
    "transformers",
    "tokenizers",
    "optimum",
    "optimum-intel",
    "openvino",
    "nncf",
    "numpy",
    "safetensors",
)


def project_modules() -> dict[str, Path]:
    """Every module of the project's packages: dotted name -> file."""
    mods = {}
    for pkg in PACKAGES:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            parts = f.relative_to(ROOT).with_suffix("").parts
            mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return mods


def _imported_names(module: str, path: Path, is_package: bool, mods: dict) -> list[str]:
    """The dotted names `module` imports, at module level or in a function; relative imports
    resolved against its package; `from pkg import module` names the module, `from pkg
    import name` the package."""
    names = []
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            subs = [f"{base}.{a.name}" for a in node.names]
            names += [n for n in subs if n in mods] or [base]
    return names


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports (the longest module prefix of each name)."""
    mods = project_modules()

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in mods}
    for module, path in mods.items():
        for name in _imported_names(module, path, path.name == "__init__.py", mods):
            target = resolve(name)
            if target is not None and target != module:
                graph[module].add(target)
    return graph


def name_branches(
    source: str, names: frozenset, what: str, filename: str = "<source>", exempt=lambda node: False
) -> list[str]:
    """Where `source` compares with one of `names` or enumerates them (a lint: code reads the
    table that owns the names instead): `x == "a"`, `x in ("a", "b")`, `case "a":`, a literal
    tuple, list, set or dict (its keys) of two or more. `exempt(operand)`: comparisons with
    such an operand are allowed."""

    def is_name(node) -> bool:
        return isinstance(node, ast.Constant) and node.value in names

    def listed(node) -> list[str]:
        items = node.keys if isinstance(node, ast.Dict) else getattr(node, "elts", None)
        if not isinstance(node, (ast.Dict, ast.Tuple, ast.List, ast.Set)) or items is None:
            return []
        return [n.value for n in items if n is not None and is_name(n)]

    found = []
    for node in ast.walk(ast.parse(source, filename)):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            if not any(exempt(o) for o in operands) and any(is_name(o) or listed(o) for o in operands):
                found.append(f"{where}: compares with a {what}'s name")
        elif isinstance(node, ast.MatchValue) and is_name(node.value):
            found.append(f"{where}: matches a {what}'s name")
        elif len(set(listed(node))) >= 2:
            found.append(f"{where}: lists {what}s {sorted(set(listed(node)))}")
    return found


def artifact_sources() -> list[Path]:
    """The files a test model is made from: `ARTIFACT_ROOTS` and every project module they
    import, with the `__init__.py` of each package on the way (importing runs it). The
    runners are loaded by name from the runtime table: each runtime's runner module counts."""
    from engine import runtimes

    mods, graph = project_modules(), import_graph()
    todo = [m for m in mods if m.split(".")[0] in ARTIFACT_ROOTS]
    todo += [r.runner.partition(":")[0] for r in runtimes.RUNTIMES]
    seen: set[str] = set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        parts = module.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts)) if ".".join(parts[:i]) in mods]
        todo += sorted(graph[module])
    return sorted(mods[m] for m in seen)


@functools.cache
def artifact_digest() -> str:
    """A digest of every source file and library version that a test model depends on."""
    h = hashlib.sha256()
    for f in artifact_sources():
        h.update(f.relative_to(ROOT).as_posix().encode() + b"\0" + f.read_bytes())
    for lib in ARTIFACT_LIBRARIES:
        try:
            h.update(f"{lib}={metadata.version(lib)}".encode())
        except metadata.PackageNotFoundError:
            h.update(f"{lib}=none".encode())
    return h.hexdigest()


def cached_artifact(root: Path, name: str, params: dict, build: Callable[[Path], object]) -> Path:
    """The folder `build(folder)` makes for `params`, made once and kept in `root` until the
    code or a library it depends on changes (`artifact_digest`).

    `build` writes a folder that does not exist yet (the trainers and the exporter write
    theirs atomically). The result is renamed into place when complete, so an interrupted
    session leaves nothing half made; a lock makes other sessions and pytest-xdist workers
    wait for it instead of making it again. Older copies of `name` are removed. Tests must
    not write into it: copy it to `tmp_path` first.
    """
    spec = json.dumps({"params": params, "code": artifact_digest()}, sort_keys=True, default=str)
    key = hashlib.sha256(spec.encode()).hexdigest()[:16]
    dst = root / f"{name}-{key}"
    if (dst / ".complete").is_file():
        return dst
    root.mkdir(parents=True, exist_ok=True)
    # One maker at a time (pytest-xdist workers, parallel sessions): the others wait for it.
    with open(root / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (dst / ".complete").is_file():
            tmp = root / f".{name}-{key}.{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                build(tmp)
                (tmp / ".complete").write_text(spec + "\n")
                shutil.rmtree(dst, ignore_errors=True)  # an incomplete copy
                os.rename(tmp, dst)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    for old in root.glob(f"{name}-*"):
        if old != dst and re.fullmatch(rf"{re.escape(name)}-[0-9a-f]{{16}}", old.name):
            shutil.rmtree(old, ignore_errors=True)
    return dst


def newest_version(repository: Path, model: str = "gpt2") -> Path:
    """The folder of `model`'s newest version in a built repository."""
    from serving.repository import versions

    return Path(repository) / model / str(versions(Path(repository) / model)[-1])


def metric_total(url: str, name: str, label: str = "") -> float:
    """The sum of the series of `name` a Prometheus endpoint shows (those with `label` among
    their labels)."""
    import urllib.request

    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") and label in line.split("}")[0]
    )


def start_server(repository, **kwargs) -> EmbeddedTritonServer:
    return EmbeddedTritonServer(
        repository,
        grpc_port=0,
        http_port=0,
        metrics_port=0,
        log_file=repository.parent / "triton.log",
        **kwargs,
    ).start()


# TensorRT-LLM-style request tensors of one value (or words), in the shape given.
def i32(v, shape=(1,)):
    return np.full(shape, v, np.int32)


def f32(v, shape=(1,)):
    return np.full(shape, v, np.float32)


def flag(v, shape=(1,)):
    return np.full(shape, v, np.bool_)


def words(*items):
    return np.array([w.encode() for w in items], dtype=np.object_)


def trained(artifacts: Path, model: str, steps: int) -> Path:
    """A tiny checkpoint of `model` trained for `steps` (seed 0)."""
    return cached_artifact(
        artifacts,
        f"checkpoint-{model}-{steps}steps",
        {"model": model, "steps": steps},
        lambda out: train(TrainOptions(model=model, out=out, steps=steps, progress=False)),
    )


def exported(artifacts: Path, model: str, checkpoint: Path, variants: str) -> Path:
    """An export of `checkpoint` with `variants` (validated on fresh random inputs when made)."""
    return cached_artifact(
        artifacts,
        f"export-{model}-{checkpoint.name}",
        {"model": model, "checkpoint": str(checkpoint), "variants": variants},
        lambda out: export_model(model, checkpoint, out, variants=variants),
    )
