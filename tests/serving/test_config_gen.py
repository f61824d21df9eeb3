"""Each section of the one Triton config generator (`serving.config_gen`) against the protobuf,
and the model configs composed of them."""

from __future__ import annotations

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from engine.config import EngineConfig
from serving import config_gen as cg
from serving.builder import BuildOptions
from serving.config_gen import Tensor
from serving.model_versions import gpt2_config, gpt2_parameters, gpt2_tensors


def test_header_names_a_backend_or_a_platform():
    py = cg.model("dcgan", 64, backend="python")
    assert (py.name, py.max_batch_size, py.backend, py.platform) == ("dcgan", 64, "python", "")
    native = cg.model("dcgan", 8, platform="onnxruntime_onnx")
    assert (native.backend, native.platform) == ("", "onnxruntime_onnx")
    for kwargs in ({}, {"backend": "python", "platform": "onnxruntime_onnx"}):
        with pytest.raises(ValueError, match="exactly one of backend and platform"):
            cg.model("x", 1, **kwargs)


def test_tensors_keep_order_dims_and_optional_inputs():
    cfg = cg.model("m", 0, backend="python")
    cg.tensors(
        cfg,
        [Tensor("a", mc.TYPE_FP32, (100,)), Tensor("b", mc.TYPE_BOOL, (1,), optional=True)],
        [Tensor("out", mc.TYPE_UINT8, (32, 32, 1))],
    )
    assert [(i.name, i.data_type, list(i.dims), i.optional) for i in cfg.input] == [
        ("a", mc.TYPE_FP32, [100], False),
        ("b", mc.TYPE_BOOL, [1], True),
    ]
    assert [(o.name, o.data_type, list(o.dims)) for o in cfg.output] == [("out", mc.TYPE_UINT8, [32, 32, 1])]
    with pytest.raises(ValueError, match="output x: only inputs can be optional"):
        cg.tensors(cfg, outputs=[Tensor("x", mc.TYPE_FP32, (1,), optional=True)])


def test_dynamic_batching_prefers_the_sizes_that_fit():
    cfg = cg.model("m", 16, backend="python")
    cg.dynamic_batching(cfg, max_queue_delay_us=250)
    assert list(cfg.dynamic_batching.preferred_batch_size) == [4, 8, 16]
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 250
    assert not cfg.dynamic_batching.HasField("default_queue_policy")
    small = cg.model("m", 2, platform="onnxruntime_onnx")
    cg.dynamic_batching(small)
    assert small.HasField("dynamic_batching") and list(small.dynamic_batching.preferred_batch_size) == []


def test_instances_transaction_policy_and_parameters():
    cfg = cg.model("m", 0, backend="python")
    cg.instances(cfg, gpu=True, count=2)
    cg.instances(cfg, gpu=False)
    assert [(g.kind, g.count) for g in cfg.instance_group] == [
        (mc.ModelInstanceGroup.KIND_GPU, 2),
        (mc.ModelInstanceGroup.KIND_CPU, 1),
    ]
    assert not cfg.model_transaction_policy.decoupled
    cg.decoupled(cfg)
    assert cfg.model_transaction_policy.decoupled
    cg.parameters(cfg, {"n": 8, "rate": 0.5, "on": True, "off": False, "name": "x"})
    assert {k: v.string_value for k, v in cfg.parameters.items()} == {
        "n": "8",
        "rate": "0.5",
        "on": "true",
        "off": "false",
        "name": "x",
    }


def test_zero_warmup_covers_every_input_and_accelerators():
    cfg = cg.model("m", 8, platform="onnxruntime_onnx")
    cg.tensors(cfg, [Tensor("z", mc.TYPE_FP32, (100,)), Tensor("k", mc.TYPE_INT64, (2, 3))])
    cg.zero_warmup(cfg)
    (warm,) = cfg.model_warmup
    assert warm.batch_size == 1 and set(warm.inputs) == {"z", "k"}
    assert list(warm.inputs["k"].dims) == [2, 3] and warm.inputs["k"].zero_data
    cg.gpu_accelerator(cfg, "tensorrt", fp16=False)
    cg.gpu_accelerator(cfg, "cuda")
    trt, cuda = cfg.optimization.execution_accelerators.gpu_execution_accelerator
    assert trt.name == "tensorrt" and trt.parameters["precision_mode"] == "FP32"
    assert trt.parameters["trt_engine_cache_enable"] == "1"
    assert cuda.name == "cuda" and dict(cuda.parameters) == {}


def test_gpt2_config_is_the_composition_and_parses_back():
    info = {"n_positions": 1024}
    opts = BuildOptions(engine=EngineConfig(slots=4, max_len=256, cuda_graph=True), target="gpu")
    cfg = gpt2_config(info, opts)
    again = text_format.Parse(text_format.MessageToString(cfg), mc.ModelConfig())
    assert again == cfg and again.model_transaction_policy.decoupled and again.max_batch_size == 0
    inputs, outputs = gpt2_tensors()
    assert [i.name for i in cfg.input] == [t.name for t in inputs]
    assert [i.name for i in cfg.input if not i.optional] == []  # the prompt: text_input or input_ids
    assert [o.name for o in cfg.output] == [
        "text_output",
        "finish_reason",
        "num_input_tokens",
        "num_output_tokens",
        "logprobs",
        "assets",
    ]
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    assert params["max_tokens_limit"] == "255" and params["slots"] == "4" and params["cuda_graph"] == "true"
    assert (
        gpt2_parameters(info, BuildOptions(engine=EngineConfig(cuda_graph=True)))["cuda_graph"] == "false"
    )  # CPU target
    assert [g.kind for g in cfg.instance_group] == [mc.ModelInstanceGroup.KIND_GPU]
