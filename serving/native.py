"""The `onnxruntime` flavour: image models on Triton's native ONNX Runtime backend.

For NVIDIA's Triton container on GPU hosts: platform `onnxruntime_onnx`, GPU instances,
the TensorRT (fp16) or CUDA execution accelerator, dynamic batching and a warm-up. The
tensors are read from the ONNX file itself, as Triton checks them at load time.
"""

from __future__ import annotations

from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from aigc.errors import ConfigError
from serving import config_gen
from serving.onnx_io import graph_inputs, io_tensors, triton_tensors

ACCELERATORS = ("tensorrt", "cuda", "none")


def native_model_config(
    name: str,
    onnx_path: Path,
    max_batch_size: int = 64,
    gpu: bool = True,
    accelerator: str = "tensorrt",
    fp16: bool = True,
    instance_count: int = 1,
) -> mc.ModelConfig:
    """Native ONNX Runtime backend config of an image component, tensors from its ONNX file."""
    if accelerator not in ACCELERATORS:
        raise ConfigError(f"--accelerator must be one of {', '.join(ACCELERATORS)}, got {accelerator!r}")
    inputs, outputs = io_tensors(onnx_path, fixed="all")
    cfg = config_gen.model(name, max_batch_size, platform="onnxruntime_onnx")
    config_gen.tensors(cfg, inputs, outputs)
    config_gen.dynamic_batching(cfg)
    config_gen.instances(cfg, gpu=gpu, count=instance_count)
    if gpu and accelerator != "none":
        config_gen.gpu_accelerator(cfg, accelerator, fp16)
    config_gen.zero_warmup(cfg)
    return cfg


def config_matches_onnx(config: mc.ModelConfig, onnx_path: Path) -> list[str]:
    """What Triton would reject at load time: tensor names, types or dims that differ."""

    tensors = triton_tensors(onnx_path)
    inputs = graph_inputs(onnx_path)
    problems = []
    declared = {t.name: (t.data_type, list(t.dims), "input") for t in config.input}
    declared.update({t.name: (t.data_type, list(t.dims), "output") for t in config.output})
    for name, (dtype, dims) in tensors.items():
        role = "input" if name in inputs else "output"
        if name not in declared:
            problems.append(f"{role} {name} of the ONNX file is not in config.pbtxt")
            continue
        d_type, d_dims, d_role = declared.pop(name)
        if d_role != role:
            problems.append(f"{name} is an {role} in the ONNX file but an {d_role} in config.pbtxt")
        if d_type != dtype:
            problems.append(f"{name}: config type {mc.DataType.Name(d_type)}, ONNX {mc.DataType.Name(dtype)}")
        if d_dims != dims:
            problems.append(f"{name}: config dims {d_dims}, ONNX {dims}")
    problems += [
        f"{role} {name} of config.pbtxt is not in the ONNX file" for name, (_, _, role) in declared.items()
    ]
    return problems
