"""The machine and library versions a benchmark ran on (recorded beside its figures)."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

from aigc import provenance

PACKAGES = (
    "torch",
    "onnxruntime",
    "onnxruntime-gpu",
    "transformers",
    "optimum",
    "optimum-onnx",
    "tritonclient",
    "nvidia-pytriton",
    "numpy",
)


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except (OSError, ValueError):
        pass
    return None


def _gpus() -> list[str]:
    """GPU names from nvidia-smi where it is installed (empty list otherwise)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        res = subprocess.run(
            [smi, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in res.stdout.splitlines() if line.strip()] if res.returncode == 0 else []


def environment(threads: int) -> dict:
    versions = {}
    for p in PACKAGES:
        try:
            versions[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            continue
    try:
        import onnxruntime as ort

        providers = ort.get_available_providers()
    except ImportError:
        providers = []
    gpus = _gpus()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "cpu": provenance.cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "memory_gib": _memory_gib(),
        "threads": threads,
        "gpu": bool(gpus) or "CUDAExecutionProvider" in providers,
        "gpus": gpus,
        "onnxruntime_providers": providers,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
        "commit": provenance.source_commit(),  # the code that measured
        "date": provenance.now(),
    }
