"""Shared fixtures: tiny trained checkpoints, their exports, and the real Triton server.

The models are made once and kept in pytest's cache folder until the code or a library they
depend on changes (`support.cached_artifact`); repositories and servers are made once per
session in a temporary folder. The server is the real `tritonserver` binary from the
nvidia-pytriton wheel on free loopback ports.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support import exported, start_server, trained

from serving.builder import BuildOptions, build_repository

TINY_STEPS = {"dcgan": 30, "vae": 30, "gpt2": 200}
# ov-fp32: the OpenVINO runtime's f32 IR, so the engine tests run on both runtimes
EXPORT_VARIANTS = {"dcgan": "fp32,int8", "vae": "fp32,int8", "gpt2": "fp32,int8,ov-fp32"}


@pytest.fixture(scope="session")
def artifacts(request, tmp_path_factory) -> Path:
    """Where the test models are kept: pytest's cache folder, so that the next session reuses
    what the same code made (`support.cached_artifact`); a fresh folder with `-p
    no:cacheprovider`, or with AIGC_TEST_CACHE=0."""
    cache = getattr(request.config, "cache", None)
    if cache is None or os.environ.get("AIGC_TEST_CACHE") == "0":
        return tmp_path_factory.mktemp("artifacts")
    return Path(cache.mkdir("aigc-artifacts"))


@pytest.fixture(scope="session")
def checkpoints(artifacts):
    return {m: trained(artifacts, m, steps) for m, steps in TINY_STEPS.items()}


@pytest.fixture(scope="session")
def exports(checkpoints, artifacts):
    return {m: exported(artifacts, m, ckpt, EXPORT_VARIANTS[m]) for m, ckpt in checkpoints.items()}


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
