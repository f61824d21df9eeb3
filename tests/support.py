"""Helpers the tests import (fixtures live in conftest.py)."""

from __future__ import annotations

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
# What a trained checkpoint or an export is made of: the code that makes it, which is every
# layer up to `export` (tests/aigc/test_imports.py keeps export from importing higher; the
# engine judges the GPT-2 variants), and the libraries that run it.
ARTIFACT_SOURCES = (
    "aigc/errors.py",
    "aigc/fsutil.py",
    "aigc/registry.py",
    "aigc/imagegrid.py",
    "training",
    "serving/triton_models",
    "export",
)
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


@functools.cache
def artifact_digest() -> str:
    """A digest of every source file and library version that a test model depends on."""
    h = hashlib.sha256()
    for source in ARTIFACT_SOURCES:
        path = ROOT / source
        for f in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
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
