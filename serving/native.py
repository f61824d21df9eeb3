"""The `onnxruntime` flavour: image models on Triton's native ONNX Runtime backend.

For NVIDIA's Triton container on GPU hosts: platform `onnxruntime_onnx`, GPU instances,
the TensorRT (fp16) or CUDA execution accelerator, dynamic batching and a warm-up. The
tensors are read from the ONNX file itself, as Triton checks them at load time.
"""

from __future__ import annotations

from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from aigc.errors import BuildError, ConfigError
from serving.onnx_io import graph_inputs, triton_tensors

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

    if accelerator not in ACCELERATORS:
        raise ConfigError(f"--accelerator must be one of {', '.join(ACCELERATORS)}, got {accelerator!r}")
    tensors = triton_tensors(onnx_path)
    inputs = graph_inputs(onnx_path)
    cfg = mc.ModelConfig(name=name, platform="onnxruntime_onnx", max_batch_size=max_batch_size)
    for n, (dtype, dims) in tensors.items():
        if any(d < 0 for d in dims):
            raise BuildError(
                f"{onnx_path}: tensor {n} has a dynamic non-batch axis {dims}; Triton needs fixed dims"
            )
        (cfg.input if n in inputs else cfg.output).add(name=n, data_type=dtype, dims=dims)
    cfg.dynamic_batching.preferred_batch_size.extend([b for b in (4, 8, 16, 32) if b <= max_batch_size])
    kind = mc.ModelInstanceGroup.KIND_GPU if gpu else mc.ModelInstanceGroup.KIND_CPU
    cfg.instance_group.add(kind=kind, count=instance_count)
    if gpu and accelerator != "none":
        acc = cfg.optimization.execution_accelerators.gpu_execution_accelerator.add(name=accelerator)
        if accelerator == "tensorrt":
            acc.parameters["precision_mode"] = "FP16" if fp16 else "FP32"
            acc.parameters["max_workspace_size_bytes"] = str(1 << 30)
            acc.parameters["trt_engine_cache_enable"] = "1"
            acc.parameters["trt_engine_cache_path"] = "/tmp/trt_cache"
    warm = cfg.model_warmup.add(name="zeros", batch_size=1)
    for inp in cfg.input:
        warm.inputs[inp.name].data_type = inp.data_type
        warm.inputs[inp.name].dims.extend(inp.dims)
        warm.inputs[inp.name].zero_data = True
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
