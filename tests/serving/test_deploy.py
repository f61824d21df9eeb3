"""Deployment artefacts: native ONNX Runtime configs and the Docker / Kubernetes files."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from aigc.errors import BuildError
from serving.builder import BuildOptions, build_repository
from serving.native import config_matches_onnx, native_model_config
from serving.repository import read_config

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
    pod = docs["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert pod["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {p["containerPort"] for p in pod["ports"]} == {8000, 8001, 8002}
    assert pod["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert pod["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert pod["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert "--model-repository=$(MODEL_REPOSITORY)" in pod["args"]
    assert docs["Secret"]["stringData"]["MODEL_REPOSITORY"].startswith("s3://")
    assert {p["port"] for p in docs["Service"]["spec"]["ports"]} == {8000, 8001, 8002}
    hpa = docs["HorizontalPodAutoscaler"]["spec"]
    assert hpa["metrics"][0]["pods"]["metric"]["name"] == "triton_queue_time_us_per_request"
    assert "nv_inference_queue_duration_us" in docs["ConfigMap"]["data"]["config.yaml"]


def test_compose_and_dockerfile():
    compose = _docs(DEPLOY / "docker" / "compose.yaml")[0]["services"]["triton"]
    assert set(compose["ports"]) == {"8000:8000", "8001:8001", "8002:8002"}
    assert any(v.endswith(":/models:ro") for v in compose["volumes"])
    assert compose["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    text = (DEPLOY / "docker" / "Dockerfile").read_text()
    assert "FROM nvcr.io/nvidia/tritonserver:" in text
    assert "onnxruntime-gpu" in text and "tokenizers" in text
