"""The one Triton `config.pbtxt` generator: each section of a `ModelConfig` is one small
function, and the model configs (`model_versions.image_config`, `model_versions.gpt2_config`,
`native.native_model_config`) are compositions of them. `tests/serving/test_config_gen.py` checks
each section against the protobuf.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from tritonclient.grpc import model_config_pb2 as mc

# Preferred batch sizes offered to Triton's dynamic batcher, up to the model's max batch.
PREFERRED_BATCHES = (4, 8, 16, 32)


@dataclass(frozen=True)
class Tensor:
    name: str
    data_type: int  # mc.TYPE_*
    dims: tuple[int, ...]  # without the batch axis; -1 for a variable one
    optional: bool = False


def model(
    name: str, max_batch_size: int, backend: str | None = None, platform: str | None = None
) -> mc.ModelConfig:
    """The header: a Python-backend model (`backend`) or a native one (`platform`)."""
    if (backend is None) == (platform is None):
        raise ValueError("a model config names exactly one of backend and platform")
    cfg = mc.ModelConfig(name=name, max_batch_size=max_batch_size)
    if backend is not None:
        cfg.backend = backend
    else:
        cfg.platform = platform
    return cfg


def tensors(cfg: mc.ModelConfig, inputs: Iterable[Tensor] = (), outputs: Iterable[Tensor] = ()) -> None:
    """Inputs and outputs, in the order given; `optional` only on inputs (Triton's rule)."""
    for t in inputs:
        cfg.input.add(name=t.name, data_type=t.data_type, dims=list(t.dims), optional=t.optional)
    for t in outputs:
        if t.optional:
            raise ValueError(f"output {t.name}: only inputs can be optional")
        cfg.output.add(name=t.name, data_type=t.data_type, dims=list(t.dims))


def dynamic_batching(cfg: mc.ModelConfig, max_queue_delay_us: int | None = None) -> None:
    """Triton's dynamic batcher, preferring the sizes of PREFERRED_BATCHES that fit. No
    default_queue_policy: with a queue timeout, Triton 2.x's batcher held requests ~500 ms
    under concurrency (measured: p99 505-513 ms at 2-8 clients, 4-10 ms without); callers bound
    their wait with the client deadline instead."""
    cfg.dynamic_batching.preferred_batch_size.extend(
        [b for b in PREFERRED_BATCHES if b <= cfg.max_batch_size]
    )
    if max_queue_delay_us is not None:
        cfg.dynamic_batching.max_queue_delay_microseconds = max_queue_delay_us


def decoupled(cfg: mc.ModelConfig) -> None:
    """Model transaction policy: any number of responses per request (streaming)."""
    cfg.model_transaction_policy.decoupled = True


def instances(cfg: mc.ModelConfig, gpu: bool, count: int = 1) -> None:
    kind = mc.ModelInstanceGroup.KIND_GPU if gpu else mc.ModelInstanceGroup.KIND_CPU
    cfg.instance_group.add(kind=kind, count=count)


def parameters(cfg: mc.ModelConfig, values: Mapping[str, object]) -> None:
    """String parameters (what `model.py` reads): booleans as "true" / "false"."""
    for key, value in values.items():
        text = ("true" if value else "false") if isinstance(value, bool) else str(value)
        cfg.parameters[key].string_value = text


def zero_warmup(cfg: mc.ModelConfig) -> None:
    """One batch-1 request of zeros for every input, run by Triton before the model is ready."""
    warm = cfg.model_warmup.add(name="zeros", batch_size=1)
    for inp in cfg.input:
        warm.inputs[inp.name].data_type = inp.data_type
        warm.inputs[inp.name].dims.extend(inp.dims)
        warm.inputs[inp.name].zero_data = True


def gpu_accelerator(cfg: mc.ModelConfig, accelerator: str, fp16: bool = True) -> None:
    """ONNX Runtime's TensorRT or CUDA execution accelerator on GPU instances; TensorRT's
    engines are cached so a restart does not rebuild them."""
    acc = cfg.optimization.execution_accelerators.gpu_execution_accelerator.add(name=accelerator)
    if accelerator == "tensorrt":
        acc.parameters["precision_mode"] = "FP16" if fp16 else "FP32"
        acc.parameters["max_workspace_size_bytes"] = str(1 << 30)
        acc.parameters["trt_engine_cache_enable"] = "1"
        acc.parameters["trt_engine_cache_path"] = "/tmp/trt_cache"
