"""Shared fixtures: tiny trained checkpoints, their exports, and the real Triton server.

Everything is built once per test session in a temporary folder; the server is the real
`tritonserver` binary from the nvidia-pytriton wheel on free loopback ports.
"""

from __future__ import annotations

import pytest
from support import start_server

from export.api import export_model
from serving.builder import BuildOptions, build_repository
from training.api import TrainOptions, train

TINY_STEPS = {"dcgan": 30, "vae": 30, "gpt2": 200}
# ov-fp32: the OpenVINO runtime's f32 IR, so the engine tests run on both runtimes
EXPORT_VARIANTS = {"dcgan": "fp32,int8", "vae": "fp32,int8", "gpt2": "fp32,int8,ov-fp32"}


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("checkpoints")
    return {
        m: train(TrainOptions(model=m, out=root / m, steps=steps, progress=False))
        for m, steps in TINY_STEPS.items()
    }


@pytest.fixture(scope="session")
def exports(checkpoints, tmp_path_factory):
    root = tmp_path_factory.mktemp("exports")
    for m, ckpt in checkpoints.items():
        export_model(m, ckpt, root / m, variants=EXPORT_VARIANTS[m])
    return {m: root / m for m in checkpoints}


@pytest.fixture(scope="session")
def fp32_repository(exports, tmp_path_factory):
    repo = tmp_path_factory.mktemp("served") / "model_repository"
    build_repository(list(exports.values()), repo, BuildOptions(variant="fp32", intra_op_threads=1))
    return repo


@pytest.fixture(scope="session")
def server(fp32_repository):
    srv = start_server(fp32_repository)
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def ov_server(exports, tmp_path_factory):
    """GPT-2's f32 weights served on the OpenVINO runtime."""
    repo = tmp_path_factory.mktemp("served-ov") / "model_repository"
    build_repository(
        [exports["gpt2"]], repo, BuildOptions(variant="ov-fp32", runtime="openvino", intra_op_threads=1)
    )
    srv = start_server(repo)
    yield srv
    srv.stop()


@pytest.fixture(params=["onnxruntime", "openvino"])
def gpt2_server(request):
    """The served GPT-2 on each runtime of its engine."""
    return request.getfixturevalue("server" if request.param == "onnxruntime" else "ov_server")


@pytest.fixture()
def gpt2_client(gpt2_server):
    from serving.client import AigcClient

    with AigcClient(gpt2_server.grpc_url, timeout_s=60) as c:
        yield c


@pytest.fixture()
def client(server):
    from serving.client import AigcClient

    with AigcClient(server.grpc_url, timeout_s=60) as c:
        yield c
