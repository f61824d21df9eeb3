"""The runtime table: the one place runtime names are written, and what each entry says."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import PACKAGES, ROOT, name_branches

from engine import runtimes
from engine.runners.base import Runner

NAMES = frozenset(runtimes.names())


def runtime_branches(source: str, filename: str = "<source>") -> list[str]:
    """Where `source` compares with a runtime's name or lists runtimes: `r == "openvino"`,
    `r in ("auto", "onnxruntime")`, `case "openvino":`, `("onnxruntime", "openvino")`."""
    return name_branches(source, NAMES, "runtime", filename)


def test_no_code_outside_the_runtime_table_branches_on_a_runtime_name():
    found = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            if path == ROOT / "engine" / "runtimes.py":
                continue
            found += runtime_branches(path.read_text(), str(path.relative_to(ROOT)))
    assert not found, "read engine.runtimes instead:\n" + "\n".join(found)


@pytest.mark.parametrize(
    "source",
    [
        'if runtime == "openvino":\n    pass',
        'ok = r != "onnxruntime"',
        'ok = r in ("auto", "onnxruntime")',
        'match r:\n    case "openvino":\n        pass',
        'RUNTIMES = ("auto", "onnxruntime", "openvino")',
    ],
)
def test_the_rule_catches_each_form_of_runtime_branch(source):
    assert runtime_branches(source)


def test_the_rule_leaves_library_names_and_keyword_values_alone():
    assert not runtime_branches('PACKAGES = ("torch", "onnxruntime", "numpy")\nPeer(family="openvino")')


def test_variant_names_files_and_version_folders_map_to_their_runtime(tmp_path):
    assert runtimes.of_variant("ov-int4") is runtimes.OPENVINO and runtimes.weights_of("ov-int4") == "int4"
    assert runtimes.of_variant("int4") is runtimes.ONNXRUNTIME and runtimes.weights_of("fp16") == "fp16"
    assert runtimes.of_file(Path("x/openvino_model.xml")) is runtimes.OPENVINO
    assert runtimes.of_file("int8/gpt2.onnx") is runtimes.ONNXRUNTIME
    with pytest.raises(ValueError, match="no runtime runs .bin files"):
        runtimes.of_file("weights.bin")
    with pytest.raises(ValueError, match="holds no graph"):
        runtimes.of_version(tmp_path)
    (tmp_path / "openvino_model.xml").write_text("")
    assert runtimes.of_version(tmp_path) is runtimes.OPENVINO
    files = runtimes.OPENVINO.version_files_of(Path("e/ov-int4/openvino_model.xml"))
    assert files == {
        "openvino_model.xml": Path("e/ov-int4/openvino_model.xml"),
        "openvino_model.bin": Path("e/ov-int4/openvino_model.bin"),
    }
    with pytest.raises(ValueError, match="runtime must be one of onnxruntime, openvino, got 'tvm'"):
        runtimes.get("tvm")


@pytest.mark.parametrize("runtime", runtimes.RUNTIMES, ids=lambda r: r.name)
def test_each_entry_names_a_runner_of_the_protocol_and_a_converter_in_export(runtime):
    cls = runtime.runner_class()
    for member in ("execute", "describe", "from_version"):
        assert callable(getattr(cls, member, None)), f"{cls.__name__} has no {member}"
    assert set(Runner.__annotations__) <= {"info", "caps"}
    assert runtime.runner.startswith("engine.runners.")
    module, _, name = runtime.converter.partition(":")
    assert module.startswith("export.")
    from aigc import registry

    assert callable(registry.hook(runtime.converter))
    assert set(runtime.targets) <= {"cpu", "gpu"} and runtime.graph_file == runtime.version_files[0]
