"""The runtimes that run the engine, one entry each: the only place their names are
written (a test fails on a runtime name compared or listed elsewhere).

An entry says how its exported variants are named (`variant_prefix`), how an exported
graph file is recognised (`export_suffix`), which files a repository version holds
(`version_files`, the graph first), the runner that loads them, the converter that makes
a variant (an `export` function, named as a string: the engine does not import export),
and what it can do: the targets it serves, whether two of its graphs can share the KV
cache (a pair such as int4+int8), and whether its cache is blocks taken by use. Adding a runtime is one entry, its runner and its
converter.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path

AUTO = "auto"  # choose by measurement (`aigc build --runtime auto`)


@dataclass(frozen=True)
class Runtime:
    name: str
    variant_prefix: str
    export_suffix: str
    version_files: tuple[str, ...]
    runner: str  # "module:Class" in engine.runners
    converter: str  # "module:function" in export
    targets: tuple[str, ...]
    pairs: bool
    cache_blocks: bool  # its cache is blocks taken by use (`--kv-cache-mib`), not a row per slot

    @property
    def graph_file(self) -> str:
        return self.version_files[0]

    def runner_class(self):
        module, _, name = self.runner.partition(":")
        return getattr(importlib.import_module(module), name)

    def version_files_of(self, exported: Path) -> dict[str, Path]:
        """The version folder's files (name -> exported file) for an exported graph: the
        graph and the files beside it that share its stem."""
        exported = Path(exported)
        return {name: exported.with_suffix(Path(name).suffix) for name in self.version_files}


ONNXRUNTIME = Runtime(
    name="onnxruntime",
    variant_prefix="",
    export_suffix=".onnx",
    version_files=("model.onnx",),
    runner="engine.runners.onnxruntime:OrtRunner",
    converter="export.quantize:onnxruntime_variant",
    targets=("cpu", "gpu"),
    pairs=True,
    cache_blocks=False,
)
OPENVINO = Runtime(
    name="openvino",
    variant_prefix="ov-",
    export_suffix=".xml",
    version_files=("openvino_model.xml", "openvino_model.bin"),
    runner="engine.runners.openvino:OvRunner",
    converter="export.quantize:openvino_variant",
    targets=("cpu",),
    pairs=False,
    cache_blocks=True,
)
RUNTIMES = (ONNXRUNTIME, OPENVINO)
DEFAULT = ONNXRUNTIME  # what an export report without a runtime field means


def names() -> tuple[str, ...]:
    return tuple(r.name for r in RUNTIMES)


def get(name: str) -> Runtime:
    for r in RUNTIMES:
        if r.name == name:
            return r
    raise ValueError(f"runtime must be one of {', '.join(names())}, got {name!r}")


def of_variant(variant: str) -> Runtime:
    """The runtime of an export variant name (`ov-int4`: OpenVINO; `int4`: ONNX Runtime)."""
    prefixed = [r for r in RUNTIMES if r.variant_prefix and variant.startswith(r.variant_prefix)]
    return prefixed[0] if prefixed else next(r for r in RUNTIMES if not r.variant_prefix)


def weights_of(variant: str) -> str:
    """The weight type of a variant name, without its runtime's prefix (`ov-int4`: `int4`)."""
    return variant.removeprefix(of_variant(variant).variant_prefix)


def of_file(path: str | Path) -> Runtime:
    suffix = Path(path).suffix
    for r in RUNTIMES:
        if r.export_suffix == suffix:
            return r
    raise ValueError(f"{path}: no runtime runs {suffix or 'suffix-less'} files")


def of_version(model_dir: str | Path) -> Runtime:
    """The runtime whose graph a repository version folder holds."""
    for r in RUNTIMES:
        if os.path.isfile(os.path.join(model_dir, r.graph_file)):
            return r
    wanted = " or ".join(r.graph_file for r in RUNTIMES)
    raise ValueError(f"{model_dir} holds no graph ({wanted}); rebuild it with `aigc build`")
