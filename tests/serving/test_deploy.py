"""Deployment artefacts: native ONNX Runtime configs and the Docker / Kubernetes files."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from aigc.errors import BuildError
from serving.builder import BuildOptions, build_repository
from serving.native import config_matches_onnx, native_model_config
from serving.repository import read_config

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


@pytest.fixture(scope="module")
def native_repository(exports, tmp_path_factory):
    repo = tmp_path_factory.mktemp("native") / "model_repository"
    build_repository(
        [exports["dcgan"], exports["vae"]],
        repo,
        BuildOptions(flavour="onnxruntime", target="gpu", variant="fp32"),
    )
    return repo


@pytest.mark.parametrize("model", ["dcgan", "vae_encoder", "vae_decoder"])
def test_native_config_matches_its_onnx_file(native_repository, model):
    cfg = read_config(native_repository / model)
    assert cfg.platform == "onnxruntime_onnx" and not cfg.backend
    assert cfg.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
    acc = cfg.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert acc.name == "tensorrt" and acc.parameters["precision_mode"] == "FP16"
    assert cfg.dynamic_batching.preferred_batch_size and cfg.model_warmup
    assert config_matches_onnx(cfg, native_repository / model / "1" / "model.onnx") == []
    assert not (native_repository / model / "1" / "model.py").exists()


def test_mismatch_is_reported(native_repository):
    onnx_file = native_repository / "dcgan" / "1" / "model.onnx"
    cfg = text_format.Parse((native_repository / "dcgan" / "config.pbtxt").read_text(), mc.ModelConfig())
    cfg.input[0].dims[0] = 99
    cfg.output[0].data_type = mc.TYPE_FP32
    problems = config_matches_onnx(cfg, onnx_file)
    assert any("z: config dims [99]" in p for p in problems)
    assert any("image: config type TYPE_FP32" in p for p in problems)


def test_cpu_native_config_and_no_accelerator(exports):
    cfg = native_model_config("dcgan", exports["dcgan"] / "fp32" / "dcgan.onnx", gpu=False)
    assert cfg.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
    assert not cfg.optimization.execution_accelerators.gpu_execution_accelerator


def test_gpt2_onnx_has_dynamic_axes_native_flavour_refuses(exports):
    with pytest.raises(BuildError, match="dynamic"):
        native_model_config("gpt2", exports["gpt2"] / "fp32" / "gpt2.onnx")


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_kubernetes_manifests():
    docs = {d["kind"]: d for f in sorted((DEPLOY / "k8s").glob("*.yaml")) for d in _docs(f)}
    kust = docs["Kustomization"]
    for res in kust["resources"]:
        assert (DEPLOY / "k8s" / res).is_file(), res
    spec = docs["Deployment"]["spec"]["template"]["spec"]
    triton, openai = spec["containers"]
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {p["containerPort"] for p in triton["ports"]} == {8000, 8001, 8002}
    assert triton["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert triton["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert triton["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert "--model-repository=$(MODEL_REPOSITORY)" in triton["args"]
    # Triton's control APIs behind the key; the frontend beside it, the only port clients reach
    restricted = [a for a in triton["args"] if "restricted" in a]
    assert len(restricted) == 2 and all(
        a.endswith(":aigc-triton-key=$(TRITON_CONTROL_KEY)") for a in restricted
    )
    assert (
        openai["command"] == ["python3", "-m", "serving.openai_api"]
        and "--triton-url=127.0.0.1:8001" in openai["args"]
    )
    # non-root, read-only, no capabilities, no image tag `latest`
    assert spec["securityContext"]["runAsNonRoot"] and spec["securityContext"]["runAsUser"] == 1000
    for c in spec["containers"]:
        sc = c["securityContext"]
        assert (
            sc["readOnlyRootFilesystem"]
            and not sc["allowPrivilegeEscalation"]
            and sc["capabilities"]["drop"] == ["ALL"]
        )
        assert (
            not c["image"].endswith(":latest") and c["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep"
        )
    assert docs["Secret"]["stringData"]  # the example secrets
    secrets = {d["metadata"]["name"]: d for f in (DEPLOY / "k8s").glob("secret*.yaml") for d in _docs(f)}
    assert secrets["model-repository-s3"]["stringData"]["MODEL_REPOSITORY"].startswith("s3://")
    assert set(secrets["aigc-keys"]["stringData"]) == {"TRITON_CONTROL_KEY", "OPENAI_API_KEY"}
    assert {p["port"] for p in docs["Service"]["spec"]["ports"]} == {9000, 8002}
    ingress = docs["NetworkPolicy"]["spec"]["ingress"]
    assert sorted(p["port"] for rule in ingress for p in rule["ports"]) == [8002, 9000]
    assert docs["PodDisruptionBudget"]["spec"]["maxUnavailable"] == 1
    hpa = docs["HorizontalPodAutoscaler"]["spec"]
    assert hpa["metrics"][0]["pods"]["metric"]["name"] == "triton_queue_time_us_per_request"
    assert "nv_inference_queue_duration_us" in docs["ConfigMap"]["data"]["config.yaml"]


def test_compose_and_dockerfile():
    services = _docs(DEPLOY / "docker" / "compose.yaml")[0]["services"]
    triton, openai = services["triton"], services["openai"]
    assert set(triton["ports"]) == {"127.0.0.1:8000:8000", "127.0.0.1:8001:8001", "127.0.0.1:8002:8002"}
    assert openai["ports"] == ["9000:9000"] and openai["entrypoint"] == [
        "python3",
        "-m",
        "serving.openai_api",
    ]
    assert any(v.endswith(":/models:ro") for v in triton["volumes"])
    assert triton["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert all(s["read_only"] and s["cap_drop"] == ["ALL"] for s in services.values())
    text = (DEPLOY / "docker" / "Dockerfile").read_text()
    assert "FROM nvcr.io/nvidia/tritonserver:" in text and "USER 1000:1000" in text
    # every package the image installs has its version: pinned in its requirements or by the
    # project's constraints.txt, which the image installs under
    assert "-r /tmp/aigc-install/requirements.txt -c /tmp/aigc-install/constraints.txt" in text
    constraints = _pins(ROOT / "constraints.txt")
    wanted = [
        r
        for r in (DEPLOY / "docker" / "requirements.txt").read_text().splitlines()
        if r and not r.startswith("#")
    ]
    for req in wanted:
        name = re.split(r"[\[=<>]", req)[0].lower()
        assert "==" in req or name in constraints, f"{req}: no version in requirements.txt or constraints.txt"
    assert {"onnxruntime-gpu", "tokenizers", "llguidance", "fastapi", "uvicorn", "tritonclient"} <= {
        re.split(r"[\[=]", r)[0] for r in wanted
    }
    assert "COPY serving/ serving/" in text


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    return pins


def test_constraints_pin_every_dependency_the_installs_resolve():
    """CI and make install install under constraints.txt: every dependency of the project
    (core, dev and peers extras) has its version there."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = (
        project["dependencies"]
        + project["optional-dependencies"]["dev"]
        + project["optional-dependencies"]["peers"]
    )
    pins = _pins(ROOT / "constraints.txt")
    names = {re.split(r"[\[=<>!~; ]", d)[0].lower().replace("_", "-") for d in deps}
    assert sorted(n for n in names if n not in pins) == []
    assert pins["numpy"].startswith("1.") and "+" not in pins["torch"]  # a torch pin GPU builds satisfy too


def test_roles_install_one_onnxruntime_and_the_client_no_torch():
    """The client is the base install; ONNX Runtime's CPU and GPU wheels (one import name)
    are the `cpu` and `gpu` extras only, and `all` takes the CPU one."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]

    def names(deps):
        return {re.split(r"[\[=<>!~; ]", d)[0].lower() for d in deps}

    assert not names(project["dependencies"] + extras["client"]) & {
        "torch",
        "transformers",
        "onnxruntime",
        "openvino",
    }
    holders = {role for role, deps in extras.items() if names(deps) & {"onnxruntime", "onnxruntime-gpu"}}
    assert holders == {"cpu", "gpu"} and names(extras["gpu"]) == {"onnxruntime-gpu"}
    assert extras["all"] == ["aigc-serve[server,cpu,export,bench,client]"]


def test_the_image_copies_what_the_frontend_imports():
    """The image carries aigc/, engine/ and serving/ only: the frontend must import nothing else
    of the project (and no torch)."""
    code = (
        "import sys, serving.openai_api.__main__; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'export', 'training', 'benchmarks', 'torch', 'transformers'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr
