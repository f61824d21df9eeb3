"""The client install, in a fresh virtual environment: the base package (`pip install
aigc-serve[client]`) brings no torch, no runtime, no server, and its client imports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_client_install_has_no_torch_and_its_client_imports(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = str(venv / "bin" / "python")
    install = [python, "-m", "pip", "install", "-q", "-c", str(ROOT / "constraints.txt"), f"{ROOT}[client]"]
    done = subprocess.run(install, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    listed = subprocess.run(
        [python, "-m", "pip", "list", "--format=json"], capture_output=True, text=True, timeout=120
    )
    names = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert {"aigc-serve", "tritonclient", "numpy", "openai"} <= names
    assert not names & {
        "torch",
        "transformers",
        "onnxruntime",
        "onnxruntime-gpu",
        "openvino",
        "nvidia-pytriton",
    }
    code = (
        "from serving.client import AigcClient, sampling_parameters; print(sampling_parameters(max_tokens=4))"
    )
    run = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert run.returncode == 0 and "'max_tokens': 4" in run.stdout, run.stderr


@pytest.mark.slow
def test_the_gpu_server_install_resolves_to_one_onnxruntime(tmp_path):
    """`pip install .[server,gpu]` as pip resolves it for a fresh environment: onnxruntime-gpu
    and no CPU onnxruntime beside it (they share an import name), no torch."""
    report = tmp_path / "report.json"
    resolve = [
        sys.executable, "-m", "pip", "install", "-q", "--dry-run", "--ignore-installed",
        "--report", str(report), "-c", str(ROOT / "constraints.txt"), f"{ROOT}[server,gpu]",
    ]  # fmt: skip
    done = subprocess.run(resolve, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    names = {i["metadata"]["name"].lower() for i in json.loads(report.read_text())["install"]}
    assert {"aigc-serve", "onnxruntime-gpu", "nvidia-pytriton"} <= names
    assert not names & {"onnxruntime", "torch"}
