"""The Triton model repository builder.

Writes `<repository>/<model>/config.pbtxt` through Triton's `ModelConfig` protobuf and the
next numbered version folder. A version is assembled in `<repository>.staging/` and moved
into place with one rename when complete, so Triton never sees half a version and a failed
build leaves what is being served untouched.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from aigc.errors import BuildError, ConfigError, ExportError
from serving import config_gen
from serving.config_gen import Tensor
from serving.onnx_io import io_tensors
from serving.variant_choice import Workload, choose_variant, describe, split_pair

logger = logging.getLogger(__name__)

TRITON_MODELS = Path(__file__).parent / "triton_models"
# The runtime modules copied beside gpt2's model.py (they import each other flat).
ENGINE_MODULES = ("gpt2_engine.py", "gpt2_openvino.py", "sampling.py", "llm_metrics.py", "ortsession.py")
RUNTIMES = ("auto", "onnxruntime", "openvino")
IMAGE_COMPONENTS = ("dcgan", "vae_encoder", "vae_decoder")
FLAVOURS = ("python", "onnxruntime")


@dataclass
class BuildOptions:
    flavour: str = "python"
    variant: str = "auto"
    runtime: str = "auto"  # GPT-2 on the CPU: onnxruntime | openvino | auto (the faster, measured)
    target: str = "cpu"  # what `auto` optimises for: cpu or gpu
    instance_count: int = 1
    max_batch_size: int = 64
    # 0: no waiting for a batch to fill; requests queued while the model is busy still batch.
    max_queue_delay_us: int = 0
    intra_op_threads: int = 0  # 0 = ONNX Runtime's default (all cores)
    max_tokens_limit: int = 512
    accelerator: str = "tensorrt"  # onnxruntime flavour on GPUs: tensorrt | cuda | none
    max_request_seconds: float = 300.0  # a GPT-2 request running longer ends with an error
    # GPT-2 engine: the KV cache is `kv_slots` rows of `kv_max_len` positions, allocated once.
    kv_slots: int = 8
    kv_max_len: int = 0  # 0 = the model's context window
    prefill_chunk: int = 64  # at most this many prompt tokens per step while other streams decode
    prefill_budget: float = 1.0  # and a chunk costing at most this many decode steps (0 = fixed)
    max_queue: int = 64  # requests waiting for a slot before new ones are refused
    cuda_graph: bool = True  # GPU instances (--target gpu): decode steps replay captured CUDA graphs
    workload: Workload = field(default_factory=Workload)  # what `auto` optimises GPT-2 for

    def validate(self) -> None:
        if self.flavour not in FLAVOURS:
            raise ConfigError(f"--flavour must be one of {', '.join(FLAVOURS)}, got {self.flavour!r}")
        if self.target not in ("cpu", "gpu"):
            raise ConfigError(f"--target must be cpu or gpu, got {self.target!r}")
        if self.runtime not in RUNTIMES:
            raise ConfigError(f"--runtime must be one of {', '.join(RUNTIMES)}, got {self.runtime!r}")
        if self.runtime == "openvino" and self.target == "gpu":
            raise ConfigError(
                "--runtime openvino serves on the CPU; use --target cpu (or --runtime onnxruntime)"
            )
        if not 1 <= self.instance_count <= 64:
            raise ConfigError(f"--instances must be in 1..64, got {self.instance_count}")
        if not 1 <= self.max_batch_size <= 4096:
            raise ConfigError(f"--max-batch-size must be in 1..4096, got {self.max_batch_size}")
        if not 1 <= self.max_tokens_limit <= 100_000:
            raise ConfigError(f"--max-tokens-limit must be in 1..100000, got {self.max_tokens_limit}")
        if not self.max_request_seconds > 0:
            raise ConfigError(f"--max-request-seconds must be > 0, got {self.max_request_seconds}")
        if not 1 <= self.kv_slots <= 1024:
            raise ConfigError(f"--slots must be in 1..1024, got {self.kv_slots}")
        if self.kv_max_len < 0:
            raise ConfigError(f"--max-len must be >= 1 (0 = the context window), got {self.kv_max_len}")
        if not 1 <= self.prefill_chunk <= 4096:
            raise ConfigError(f"--prefill-chunk must be in 1..4096, got {self.prefill_chunk}")
        if not 0 <= self.prefill_budget <= 100:
            raise ConfigError(
                f"--prefill-budget must be in 0..100 (0 = fixed chunks), got {self.prefill_budget}"
            )
        if not 0 <= self.max_queue <= 100_000:
            raise ConfigError(f"--max-queue must be in 0..100000, got {self.max_queue}")
        self.workload.validate()


@dataclass
class BuiltModel:
    name: str
    version: int
    variant: str
    path: Path
    detail: str = ""  # why this variant; for GPT-2 the KV cache it allocates

    def __str__(self) -> str:
        text = f"{self.name} version {self.version} ({self.variant}) -> {self.path}"
        return f"{text}\n{self.detail}" if self.detail else text


def kv_cache_bytes(model_info: dict, opts: BuildOptions, dtype_bytes: int = 4) -> int:
    """What the gpt2 model allocates for its KV slots: 2 x layers x slots x heads x len x head size."""
    max_len = opts.kv_max_len or int(model_info["n_positions"])
    return (
        2
        * int(model_info["n_layer"])
        * opts.kv_slots
        * int(model_info["n_head"])
        * max_len
        * int(model_info["head_size"])
        * dtype_bytes
    )


def image_config(name: str, onnx_file: Path, opts: BuildOptions) -> mc.ModelConfig:
    """Python-backend config of an image component, tensors read from its ONNX file."""
    inputs, outputs = io_tensors(onnx_file, fixed="inputs")
    cfg = config_gen.model(name, opts.max_batch_size, backend="python")
    config_gen.tensors(cfg, inputs, outputs)
    config_gen.dynamic_batching(cfg, opts.max_queue_delay_us)
    config_gen.instances(cfg, gpu=False, count=opts.instance_count)
    config_gen.zero_warmup(cfg)
    config_gen.parameters(
        cfg, {"max_request_batch": opts.max_batch_size, "intra_op_threads": opts.intra_op_threads}
    )
    return cfg


# The vLLM backend's additional outputs, each asked for by its return_* input flag.
GPT2_EXTRA_OUTPUTS = (
    ("return_finish_reason", Tensor("finish_reason", mc.TYPE_STRING, (-1,))),
    ("return_num_input_tokens", Tensor("num_input_tokens", mc.TYPE_UINT32, (-1,))),
    ("return_num_output_tokens", Tensor("num_output_tokens", mc.TYPE_UINT32, (-1,))),
)


def gpt2_tensors() -> tuple[list[Tensor], list[Tensor]]:
    """The decoupled text-generation interface of Triton's LLM backends: vLLM's inputs,
    TensorRT-LLM's sampling tensors (so genai-perf --backend tensorrtllm and perf_analyzer
    can send any of them; the model maps them onto the same SamplingParams) and `stop`, and
    the vLLM backend's additional outputs."""
    from serving.triton_models.sampling import TENSOR_INPUTS

    flag = mc.TYPE_BOOL
    inputs = [
        Tensor("text_input", mc.TYPE_STRING, (1,)),
        Tensor("stream", flag, (1,), optional=True),
        Tensor("sampling_parameters", mc.TYPE_STRING, (1,), optional=True),
        Tensor("exclude_input_in_output", flag, (1,), optional=True),
    ]
    for name, dtype, dims, _ in TENSOR_INPUTS:
        data_type = mc.TYPE_STRING if dtype == "BYTES" else getattr(mc, f"TYPE_{dtype}")
        inputs.append(Tensor(name, data_type, tuple(dims), optional=True))
    inputs.append(Tensor("stop", flag, (1,), optional=True))  # ends the requests with this id
    inputs += [Tensor(name, flag, (1,), optional=True) for name, _ in GPT2_EXTRA_OUTPUTS]
    outputs = [Tensor("text_output", mc.TYPE_STRING, (-1,))] + [out for _, out in GPT2_EXTRA_OUTPUTS]
    return inputs, outputs


def gpt2_parameters(model_info: dict, opts: BuildOptions) -> dict[str, object]:
    """What the engine reads from config.pbtxt: limits, KV cache, scheduling, threads."""
    if opts.kv_max_len > int(model_info["n_positions"]):
        raise ConfigError(
            f"--max-len must be <= the context window {model_info['n_positions']}, got {opts.kv_max_len}"
        )
    window = opts.kv_max_len or int(model_info["n_positions"])
    return {
        "max_tokens_limit": min(opts.max_tokens_limit, window - 1),
        "max_prompt_tokens": window - 1,
        # how often the engine's TTFT, ITL, token and slot figures reach the metrics endpoint (0 = off)
        "metrics_interval_s": 1,
        "kv_slots": opts.kv_slots,
        "kv_max_len": opts.kv_max_len,
        "prefill_chunk": opts.prefill_chunk,
        "prefill_budget": opts.prefill_budget,
        "max_queue_size": opts.max_queue,
        "cuda_graph": bool(opts.cuda_graph and opts.target == "gpu"),
        "max_request_seconds": opts.max_request_seconds,
        "intra_op_threads": opts.intra_op_threads,
    }


def gpt2_config(model_info: dict, opts: BuildOptions) -> mc.ModelConfig:
    """Decoupled Python-backend `gpt2`; one instance: its generation loop batches every
    concurrent request itself."""
    cfg = config_gen.model("gpt2", 0, backend="python")
    config_gen.decoupled(cfg)
    config_gen.tensors(cfg, *gpt2_tensors())
    config_gen.instances(cfg, gpu=opts.target == "gpu", count=1)
    config_gen.parameters(cfg, gpt2_parameters(model_info, opts))
    return cfg


def write_config(model_dir: Path, cfg: mc.ModelConfig) -> None:
    """config.pbtxt through the protobuf text format, replaced atomically."""
    text = text_format.MessageToString(cfg)
    fd, tmp = tempfile.mkstemp(prefix=".config.", suffix=".pbtxt", dir=model_dir)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, model_dir / "config.pbtxt")


def read_config(model_dir: Path) -> mc.ModelConfig:
    return text_format.Parse((Path(model_dir) / "config.pbtxt").read_text(), mc.ModelConfig())


def versions(model_dir: Path) -> list[int]:
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def _stage_version(name, files: dict[str, Path], meta: dict, staging: Path) -> Path:
    stage = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=staging))
    try:
        for dst, src in files.items():
            if not Path(src).is_file():
                raise BuildError(f"{name}: {src} is missing (re-run `aigc export`)")
            shutil.copyfile(src, stage / dst)
        (stage / "aigc_version.json").write_text(json.dumps(meta, indent=2) + "\n")
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return stage


def build_repository(
    exports: list[Path], repository: Path, options: BuildOptions | None = None
) -> list[BuiltModel]:
    """Add a version of every component of every export folder to `repository`."""
    from export.api import read_report

    opts = options or BuildOptions()
    opts.validate()
    repository = Path(repository).absolute()
    staging = repository.parent / f"{repository.name}.staging"
    try:
        repository.mkdir(parents=True, exist_ok=True)
        staging.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--repository {repository}: cannot write there ({exc.strerror or exc})") from exc
    # Stage every version first: nothing becomes visible unless all of them could be built.
    plans = []
    try:
        for export_dir in exports:
            export_dir = Path(export_dir).absolute()
            try:
                report = read_report(export_dir)
            except ExportError as exc:
                raise BuildError(str(exc)) from None
            for comp in report["components"]:
                variant, why = choose_variant(
                    report, comp, opts.variant, opts.target, opts.workload, opts.runtime
                )
                detail = describe(comp, variant, why)
                variant, companion = split_pair(variant)
                onnx_file = export_dir / report["variants"][variant]["files"][comp]
                if not onnx_file.is_file():
                    raise BuildError(f"{comp}: {onnx_file} is missing (re-run `aigc export`)")
                files: dict[str, Path] = {"model.onnx": onnx_file}
                if onnx_file.suffix == ".xml":  # an OpenVINO IR: the graph and its weights
                    files = {
                        "openvino_model.xml": onnx_file,
                        "openvino_model.bin": onnx_file.with_suffix(".bin"),
                    }
                if comp == "gpt2":
                    cfg = gpt2_config(report["model_info"], opts)
                    if companion:
                        files["companion.onnx"] = export_dir / report["variants"][companion]["files"][comp]
                        cfg.parameters["companion_prefill"].string_value = str(
                            why["routing"]["companion_prefill"]
                        ).lower()
                        cfg.parameters["companion_from_rows"].string_value = str(
                            why["routing"]["companion_from_rows"]
                        )
                    files["model.py"] = TRITON_MODELS / "gpt2_model.py"
                    for module in ENGINE_MODULES:
                        files[module] = TRITON_MODELS / module
                    kv_dtype = 2 if variant == "fp16" else 4
                    kv = kv_cache_bytes(report["model_info"], opts, kv_dtype)
                    detail += (
                        f"\n  KV cache: {opts.kv_slots} slots x "
                        f"{opts.kv_max_len or report['model_info']['n_positions']} positions = "
                        f"{kv / 2**20:.0f} MiB, allocated once when the model loads"
                    )
                    for asset in ("tokenizer.json", "model_info.json"):
                        files[asset] = export_dir / "assets" / asset
                elif opts.flavour == "onnxruntime":
                    from serving.native import native_model_config

                    cfg = native_model_config(
                        comp,
                        onnx_file,
                        max_batch_size=opts.max_batch_size,
                        instance_count=opts.instance_count,
                        gpu=opts.target == "gpu",
                        accelerator=opts.accelerator,
                    )
                else:
                    cfg = image_config(comp, onnx_file, opts)
                    files["model.py"] = TRITON_MODELS / "image_model.py"
                    files["ortsession.py"] = TRITON_MODELS / "ortsession.py"
                meta = {
                    "model": comp,
                    "variant": variant,
                    "companion": companion,
                    "runtime": report["variants"][variant].get("runtime", "onnxruntime"),
                    "export": str(export_dir),
                    "flavour": opts.flavour,
                    "fidelity": report["variants"][variant].get("fidelity", {}).get(comp),
                    "export_created": report.get("created"),
                    "choice": why,
                }
                if companion:
                    meta["companion_fidelity"] = report["variants"][companion].get("fidelity", {}).get(comp)
                    variant = f"{variant}+{companion}"
                plans.append((comp, variant, cfg, _stage_version(comp, files, meta, staging), detail))
        built = []
        for comp, variant, cfg, stage, detail in plans:
            model_dir = repository / comp
            model_dir.mkdir(exist_ok=True)
            version = (versions(model_dir) or [0])[-1] + 1
            write_config(model_dir, cfg)
            os.rename(stage, model_dir / str(version))
            built.append(BuiltModel(comp, version, variant, model_dir / str(version), detail))
            logger.info("built %s version %d from %s", comp, version, variant)
        return built
    finally:
        for *_, stage, _detail in plans:
            shutil.rmtree(stage, ignore_errors=True)
        shutil.rmtree(staging, ignore_errors=True)
