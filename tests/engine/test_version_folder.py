"""A built gpt2 version folder holds the whole engine package and runs on its own: imported
in a fresh interpreter that can reach no other module of the project, it loads the version
and generates the tokens the project's engine generates."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from support import PACKAGES, ROOT

from engine.config import EngineConfig
from engine.loader import load_engine
from engine.request_schema import SamplingParams
from serving.builder import BuildOptions, build_repository

ALONE = textwrap.dedent(
    """
    import importlib.util, json, sys

    version, root, packages = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
    # no way back to the project: its folder off the path, its editable-install finder gone
    sys.path[:] = [p for p in sys.path if p and p.rstrip("/") != root.rstrip("/")]
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__module__.lower()
                        and "editable" not in getattr(f, "__name__", "").lower()]
    reachable = [p for p in packages if importlib.util.find_spec(p) is not None]
    sys.path.insert(0, version)
    from engine.config import EngineConfig
    from engine.loader import load_engine
    from engine.request_schema import SamplingParams

    eng = load_engine(version, EngineConfig(slots=2), intra_op_threads=1)
    ids = eng.tokenizer.encode("The class of").ids
    tokens = eng.generate_ids(ids, SamplingParams(max_tokens=12, ignore_eos=True))
    outside = sorted(
        name for name, m in list(sys.modules.items())
        if name.split(".")[0] in packages and not (getattr(m, "__file__", "") or "").startswith(version)
    )
    print(json.dumps({"reachable": reachable, "tokens": tokens, "outside": outside}))
    """
)


def test_the_version_folder_holds_the_engine_whole_and_runs_without_the_project(exports, tmp_path):
    repo = tmp_path / "model_repository"
    (built,) = build_repository([exports["gpt2"]], repo, BuildOptions(variant="fp32", intra_op_threads=1))
    shipped = sorted(p.relative_to(built.path).as_posix() for p in (built.path / "engine").rglob("*.py"))
    package = sorted(
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "engine").rglob("*.py")
        if "__pycache__" not in p.parts
    )
    assert shipped == package  # walked, not listed: a new module travels too
    run = subprocess.run(
        [sys.executable, "-I", "-c", ALONE, str(built.path), str(ROOT), ",".join(PACKAGES)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["reachable"] == [] and got["outside"] == []
    here = load_engine(str(built.path), EngineConfig(slots=2), intra_op_threads=1)
    ids = here.tokenizer.encode("The class of").ids
    assert got["tokens"] == here.generate_ids(ids, SamplingParams(max_tokens=12, ignore_eos=True))
