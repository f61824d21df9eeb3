"""A Triton model repository on disk: `<model>/config.pbtxt` and numbered version folders.

Writes are all-or-nothing: config.pbtxt is replaced by a rename, and a version folder is
staged under a temporary name beside the repository and renamed into place when complete,
so Triton never sees half a version.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from aigc.errors import BuildError


@dataclass
class VersionPlan:
    """One version to build: the component, the export it comes from, the variant chosen (and
    the pair's companion graph) with the reasons, and the files it will hold (name in the
    version folder -> source), which the component's role adds to."""

    name: str
    export_dir: Path
    report: dict
    variant: str
    companion: str | None
    why: dict
    files: dict[str, Path] = field(default_factory=dict)
    # files the build writes into the version (name -> a function writing it at the path
    # given), once `files` are in place
    generated: dict[str, Callable[[Path], None]] = field(default_factory=dict)


def write_config(model_dir: Path, cfg: mc.ModelConfig) -> None:
    """config.pbtxt through the protobuf text format, replaced atomically."""
    text = text_format.MessageToString(cfg)
    fd, tmp = tempfile.mkstemp(prefix=".config.", suffix=".pbtxt", dir=model_dir)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, model_dir / "config.pbtxt")


def read_config(model_dir: Path) -> mc.ModelConfig:
    return text_format.Parse((Path(model_dir) / "config.pbtxt").read_text(), mc.ModelConfig())


def versions(model_dir: Path) -> list[int]:
    """The numbered version folders of a model, oldest first."""
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def stage_version(
    name: str,
    files: dict[str, Path],
    meta: dict,
    staging: Path,
    generated: dict[str, Callable[[Path], None]] | None = None,
) -> Path:
    """A complete version folder under `staging`: `files` (name in the version -> source),
    the `generated` ones (name -> a function writing it) and `aigc_version.json` (`meta`:
    what was built from what, and why)."""
    stage = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=staging))
    try:
        for dst, src in files.items():
            if not Path(src).is_file():
                raise BuildError(f"{name}: {src} is missing (re-run `aigc export`)")
            (stage / dst).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, stage / dst)
        for dst, write in (generated or {}).items():
            write(stage / dst)
        (stage / "aigc_version.json").write_text(json.dumps(meta, indent=2) + "\n")
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return stage


def install_version(model_dir: Path, cfg: mc.ModelConfig, stage: Path) -> int:
    """Write the model's config and rename the staged folder into the next version number."""
    model_dir.mkdir(exist_ok=True)
    version = (versions(model_dir) or [0])[-1] + 1
    write_config(model_dir, cfg)
    os.rename(stage, model_dir / str(version))
    return version
