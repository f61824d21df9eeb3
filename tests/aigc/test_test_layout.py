"""The test tree itself: it mirrors the packages, and live-server tests never share a file with
unit tests (so `make test-fast` is the unit files, and a live file is all live)."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
PACKAGES = {"aigc", "engine", "training", "export", "serving", "benchmarks"}


def _marks(node: ast.AST) -> set[str]:
    """The `pytest.mark.<name>` decorators of a function."""
    out = set()
    for d in getattr(node, "decorator_list", []):
        target = d.func if isinstance(d, ast.Call) else d
        if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Attribute):
            if target.value.attr == "mark":
                out.add(target.attr)
    return out


def _is_live_module(tree: ast.Module) -> bool:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "pytestmark" for t in node.targets):
            return "server" in ast.unparse(node.value)
    return False


def test_every_test_file_sits_in_the_folder_of_its_package():
    files = sorted(TESTS.rglob("test_*.py"))
    assert files
    assert {f.parent.name for f in files} <= PACKAGES, sorted({f.parent.name for f in files} - PACKAGES)


def test_no_file_mixes_live_server_tests_and_unit_tests():
    mixed = []
    for f in sorted(TESTS.rglob("test_*.py")):
        tree = ast.parse(f.read_text())
        tests = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")]
        live = {n.name for n in tests if _is_live_module(tree) or "server" in _marks(n)}
        if live and len(live) != len(tests):
            mixed.append(f"{f.relative_to(TESTS)}: {len(live)} of {len(tests)} live")
    assert mixed == []


def test_cached_artifacts_are_reused_remade_on_change_and_never_left_half_made(tmp_path, monkeypatch):
    import pytest
    import support

    made = []

    def build(out: Path, fail: bool = False) -> None:
        out.mkdir()
        (out / "weights").write_text(str(len(made)))
        made.append(out)
        if fail:
            raise RuntimeError("interrupted")

    first = support.cached_artifact(tmp_path, "model", {"steps": 1}, build)
    assert support.cached_artifact(tmp_path, "model", {"steps": 1}, build) == first
    assert len(made) == 1 and (first / "weights").read_text() == "0"
    other = support.cached_artifact(tmp_path, "model", {"steps": 2}, build)
    assert other != first and not first.exists()  # the older copy of "model" is removed
    monkeypatch.setattr(support, "artifact_digest", lambda: "the code changed")
    changed = support.cached_artifact(tmp_path, "model", {"steps": 2}, build)
    assert changed != other and len(made) == 3
    with pytest.raises(RuntimeError, match="interrupted"):
        support.cached_artifact(tmp_path, "model", {"steps": 3}, lambda out: build(out, fail=True))
    left = sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock"))
    assert left == [changed.name]  # nothing half made, and the complete copy kept


def test_the_cached_test_models_are_keyed_on_what_makes_them_not_on_the_scheduler():
    """Editing the engine's scheduler or the Triton adapter leaves the tiny exports cached;
    editing a runner the export's gates run (or the exporter) makes them again."""
    import support

    sources = {p.relative_to(support.ROOT).as_posix() for p in support.artifact_sources()}
    assert {
        "export/api.py",
        "training/gpt2.py",
        "engine/runners/onnxruntime.py",
        "engine/runners/openvino.py",
    } <= sources
    assert not sources & {"engine/scheduler.py", "engine/core.py", "serving/triton_models/gpt2_model.py"}
