"""A quantized variant served through Triton stays within the fidelity its report claims."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from support import start_server

from engine.config import EngineConfig
from engine.loader import load_engine
from engine.request_schema import SamplingParams
from export.api import read_report
from export.ortutil import make_session
from export.quantize import GATES, psnr_db
from serving.builder import BuildOptions, build_repository

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def int8_server(exports, tmp_path_factory):
    repo = tmp_path_factory.mktemp("int8") / "model_repository"
    build_repository(
        [exports["dcgan"], exports["gpt2"]], repo, BuildOptions(variant="int8", intra_op_threads=1)
    )
    srv = start_server(repo)
    yield srv, repo
    srv.stop()


def test_served_int8_dcgan_keeps_its_reported_psnr(int8_server, exports):
    from serving.client import AigcClient

    srv, _ = int8_server
    report = read_report(exports["dcgan"])
    claimed = report["variants"]["int8"]["fidelity"]["dcgan"]["psnr_db"]
    z = np.random.default_rng().standard_normal((64, 100)).astype(np.float32)
    with AigcClient(srv.grpc_url) as c:
        served = c.generate_images("dcgan", z=z)
    int8 = make_session(exports["dcgan"] / "int8" / "dcgan.onnx").run(["image"], {"z": z})[0]
    fp32 = make_session(exports["dcgan"] / "fp32" / "dcgan.onnx").run(["image"], {"z": z})[0]
    np.testing.assert_array_equal(served, int8)  # the server runs exactly the gated variant
    value = psnr_db(fp32, served)
    assert value >= GATES.image_psnr_db
    assert value >= claimed - 3.0  # fresh latents: within a few dB of the figure in the report


def test_served_int8_gpt2_generates_what_the_gated_variant_generates(int8_server, exports, tmp_path):
    from serving.client import AigcClient

    srv, repo = int8_server
    assert read_report(exports["gpt2"])["variants"]["int8"]["passed"] is True
    offline_dir = tmp_path / "engine"
    shutil.copytree(repo / "gpt2" / "1", offline_dir)
    engine = load_engine(str(offline_dir), EngineConfig(slots=1), intra_op_threads=1)
    params = SamplingParams(max_tokens=20, ignore_eos=True)
    for prompt in ("The class", "import os"):
        offline = engine.tokenizer.decode(engine.generate_ids(engine.encode_prompt(prompt, params), params))
        with AigcClient(srv.grpc_url) as c:
            assert c.generate_text(prompt, max_tokens=20, ignore_eos=True, stream=False) == offline


@pytest.fixture(scope="module")
def int8_cache_server(exports, tmp_path_factory):
    repo = tmp_path_factory.mktemp("int8-cache") / "model_repository"
    options = BuildOptions(variant="int8", intra_op_threads=1, engine=EngineConfig(kv_cache_precision="i8"))
    build_repository([exports["gpt2"]], repo, options)
    srv = start_server(repo)
    yield srv, repo
    srv.stop()


def test_served_int8_cache_generates_what_its_graph_generates(int8_cache_server, exports, tmp_path):
    """ONNX Runtime's int8 KV cache through Triton: the greedy text of the graph's own session
    path (its int8 cache handed back each call), streamed and not; the report's gate passed."""
    from export import gpt2_eval as ev
    from serving.client import AigcClient

    srv, repo = int8_cache_server
    assert read_report(exports["gpt2"])["variants"]["int8"]["kv_cache"]["i8"]["passed"] is True
    session = make_session(repo / "gpt2" / "1" / "model.onnx")
    assert {i.name: i.type for i in session.get_inputs()}["past_key_0"] == "tensor(int8)"
    offline_dir = tmp_path / "engine"
    shutil.copytree(repo / "gpt2" / "1", offline_dir)
    engine = load_engine(str(offline_dir), EngineConfig(slots=1, kv_cache_precision="i8"), intra_op_threads=1)
    params = SamplingParams(max_tokens=20, ignore_eos=True)
    with AigcClient(srv.grpc_url) as c:
        for prompt, stream in (("The class", False), ("import os", True), ("def f(x):", True)):
            ids = engine.encode_prompt(prompt, params)
            expected = engine.tokenizer.decode(ev.greedy(session, ids, 20))
            served = c.generate_text(prompt, max_tokens=20, ignore_eos=True, stream=stream)
            assert (served if isinstance(served, str) else "".join(served)) == expected
