"""What one repository version of each served role holds: its `config.pbtxt` and files.

The registry names these functions as the roles' `build` hooks (`aigc.registry`): an image
generator or encoder is a batched Python-backend model (or, in the `onnxruntime` flavour,
Triton's native ONNX Runtime backend); the text generator is the decoupled `gpt2` model with
the generation engine and its tokenizer beside it.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tritonclient.grpc import model_config_pb2 as mc

import engine
from aigc.errors import BuildError, ConfigError
from engine import runtimes
from engine.kv import page_positions
from engine.request_schema import TENSOR_INPUTS
from engine.runners.openvino import BLOCK_SIZE
from export.latency_model import routed_profile
from serving import config_gen
from serving.config_gen import Tensor
from serving.flavours import NATIVE_FLAVOUR
from serving.onnx_io import io_tensors

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from serving.builder import BuildOptions
    from serving.repository import VersionPlan

TRITON_MODELS = Path(__file__).parent / "triton_models"
ENGINE_PACKAGE = Path(engine.__file__).parent
# The ONNX Runtime session options the image model imports from beside its model.py.
ORT_SESSION = ENGINE_PACKAGE / "runners" / "ortsession.py"


def engine_files() -> dict[str, Path]:
    """The engine package, whole (every module, found by walking it), as version files."""
    return {
        f"engine/{f.relative_to(ENGINE_PACKAGE).as_posix()}": f
        for f in sorted(ENGINE_PACKAGE.rglob("*.py"))
        if "__pycache__" not in f.parts
    }


def kv_cache_bytes(
    model_info: dict, opts: BuildOptions | None, dtype_bytes: int = 4, positions: int = 0
) -> int:
    """What the gpt2 model allocates for its KV slots: 2 x layers x slots x heads x len x head
    size (`positions`: that many positions of one sequence instead)."""
    max_len = positions or opts.engine.max_len or int(model_info["n_positions"])
    return (
        2
        * int(model_info["n_layer"])
        * (1 if positions else opts.engine.slots)
        * int(model_info["n_head"])
        * max_len
        * int(model_info["head_size"])
        * dtype_bytes
    )


def kv_cache_precision(entry: dict, model_info: dict, variant: str, asked: str) -> tuple[str, int]:
    """(precision, bytes per cached position) a block runner's cache gets: `asked`, or with
    `auto` the export's choice (its report's `kv_cache`, judged by the fidelity gate and
    measured; f32 where the report predates it)."""
    kv = entry.get("kv_cache") or {}
    precision = kv.get("choice", "f32") if asked == "auto" else asked
    if asked == "u8" and kv.get("u8", {}).get("passed") is False:
        logger.warning(
            "%s: the export's gate failed the u8 KV cache (%s); serving it as asked", variant, kv["why"]
        )
    per_token = (kv.get(precision) or {}).get("bytes_per_token")
    if not per_token:  # f16 (not measured by the export) or a report that predates `kv_cache`
        per_token = (
            kv_cache_bytes(model_info, None, 4, positions=1) // {"f32": 1, "f16": 2, "u8": 4}[precision]
        )
    return precision, int(per_token)


def cache_choice(variants: dict, members: list[str], route: dict | None) -> dict:
    """The export's int8-cache choice for what is served: the variant's (`kv_cache`), or for
    a pair, `export.kv_cache.choose` on the two graphs' profiles as the build routes them
    (a pair serves its batched steps and prefills on the companion)."""
    own = variants[members[0]].get("kv_cache") or {}
    if len(members) < 2 or not route:
        return own
    profiles = []
    for cache in ("f32", "i8"):
        pair = [
            variants[m].get("decode_profile") if cache == "f32" else variants[m]["kv_cache"]["i8"].get("decode_profile")
            for m in members
        ]
        profiles.append(routed_profile(*pair, route) if all(pair) else None)
    if not all(profiles):
        return own
    from export.kv_cache import choose

    chosen = choose(*profiles)
    return {**chosen, "why": f"{chosen['why']} (the pair as routed)"}


def int8_cache_files(
    variants: dict,
    members: list[str],
    asked: str = "auto",
    target: str = "cpu",
    name: str = "gpt2",
    route: dict | None = None,
) -> tuple[list[str] | None, str]:
    """(the export's int8-cache graphs (paths in the export) that an ONNX Runtime text
    generator of `members` (the variant and the pair's companion) serves in place of theirs,
    why): with `--kv-cache-precision i8`, or `auto` where the export chose it
    (`cache_choice`); None where the graphs' own caches are served. ConfigError where the
    asked cache cannot be."""
    own = variants[members[0]].get("kv_dtype", "float32")
    if asked in ("f16", "u8"):
        raise ConfigError(
            f"--kv-cache-precision {asked} applies to OpenVINO's cache; {members[0]} runs on ONNX Runtime, "
            f"whose cache is its graph's ({own}) or the export's int8 one (i8)"
        )
    if asked == "f32" and own != "float32":
        raise ConfigError(f"--kv-cache-precision f32: {members[0]}'s graph caches {own}; use auto")
    if asked == "i8" and target == "gpu":
        raise ConfigError("--kv-cache-precision i8: the int8 cache is made and measured for the CPU; use auto on a GPU")
    caches = [(variants[m].get("kv_cache") or {}) for m in members]
    if asked == "f32":
        return None, "f32: --kv-cache-precision f32"
    if target == "gpu":
        return None, "the graph's own: the int8 cache is made for the CPU"
    missing = [m for m, c in zip(members, caches, strict=True) if not c.get("i8", {}).get("passed")]
    granularities = {c.get("i8", {}).get("granularity") for c in caches}
    why = (
        f"the export has no int8-cache graph of {', '.join(missing)} (it makes one for each quantized ONNX "
        "Runtime variant on the CPU whose gate it passes; exports of exporter version 5 and before made none)"
        if missing
        else "the pair's int8 caches have different scales (one per layer and one per channel)"
        if len(granularities) > 1
        else ""
    )
    if why:
        if asked == "i8":
            raise ConfigError(f"--kv-cache-precision i8: {why}; re-run `aigc export` or use auto")
        if caches[0].get("choice") == "i8":
            logger.warning("%s: serving the f32 cache: %s", name, why)
        return None, f"f32: {why}"
    chosen = cache_choice(variants, members, route)
    files = [c["i8"]["file"] for c in caches]
    if asked == "i8":
        return files, f"i8: --kv-cache-precision i8 (the export measured {chosen.get('why', 'nothing')})"
    if chosen.get("choice") != "i8":
        return None, chosen.get("why") or "f32: the export measured no int8 cache"
    return files, chosen["why"]


def graph_cache(plan: VersionPlan, opts: BuildOptions) -> str:
    """The cache an ONNX Runtime text generator serves (a numpy dtype name): the graph's own,
    or the export's int8-cache graphs (`int8_cache_files`) in place of the variant's and the
    companion's (`plan.files`)."""
    variants, asked = plan.report["variants"], opts.engine.kv_cache_precision
    members = [plan.variant, *([plan.companion] if plan.companion else [])]
    files, why = int8_cache_files(variants, members, asked, opts.target, plan.name, plan.why.get("routing"))
    plan.why["kv_cache"] = why
    if files is None:
        return variants[plan.variant].get("kv_dtype", "float32")
    from engine.runners.onnxruntime import COMPANION_FILE, GRAPH_FILE

    for name, file in zip((GRAPH_FILE, COMPANION_FILE), files, strict=False):
        plan.files[name] = plan.export_dir / file
    return "int8"


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
    # JSON: the log-probability entries (`engine.logprobs`) of the tokens since the previous
    # response, and the prompt's in the first (with the logprobs / prompt_logprobs fields)
    ("return_logprobs", Tensor("logprobs", mc.TYPE_STRING, (-1,))),
)


def gpt2_tensors() -> tuple[list[Tensor], list[Tensor]]:
    """The decoupled text-generation interface of Triton's LLM backends: vLLM's inputs,
    TensorRT-LLM's sampling tensors (so genai-perf --backend tensorrtllm and perf_analyzer
    can send any of them; the model maps them onto the same SamplingParams) and `stop`, and
    the vLLM backend's additional outputs."""
    flag = mc.TYPE_BOOL
    inputs = [
        Tensor("text_input", mc.TYPE_STRING, (1,), optional=True),  # or the ids in input_ids
        Tensor("input_ids", mc.TYPE_INT64, (-1,), optional=True),  # a prompt as token ids
        Tensor("stream", flag, (1,), optional=True),
        Tensor("sampling_parameters", mc.TYPE_STRING, (1,), optional=True),
        Tensor("exclude_input_in_output", flag, (1,), optional=True),
    ]
    for name, dtype, dims, _ in TENSOR_INPUTS:
        data_type = mc.TYPE_STRING if dtype == "BYTES" else getattr(mc, f"TYPE_{dtype}")
        inputs.append(Tensor(name, data_type, tuple(dims), optional=True))
    inputs.append(Tensor("stop", flag, (1,), optional=True))  # ends the requests with this id
    # asks for the version's tokenizer and model info (the OpenAI frontend reads them through
    # Triton, so it needs no access to the repository's storage, S3 included)
    inputs.append(Tensor("return_assets", flag, (1,), optional=True))
    inputs += [Tensor(name, flag, (1,), optional=True) for name, _ in GPT2_EXTRA_OUTPUTS]
    outputs = [Tensor("text_output", mc.TYPE_STRING, (-1,))] + [out for _, out in GPT2_EXTRA_OUTPUTS]
    outputs.append(Tensor("assets", mc.TYPE_STRING, (-1,)))
    return inputs, outputs


def gpt2_parameters(model_info: dict, opts: BuildOptions) -> dict[str, object]:
    """What the engine reads from config.pbtxt: every `EngineConfig` setting (the engine's
    own spelling) and the runtime's threads. `max_tokens_limit` is capped by the window."""
    n_positions = int(model_info["n_positions"])
    try:
        opts.engine.check(n_positions, flags=True)
    except ValueError as exc:
        raise ConfigError(f"{exc} (the model's context window is {n_positions})") from None
    window = opts.engine.max_len or n_positions
    engine_config = replace(
        opts.engine,
        max_tokens_limit=min(opts.engine.max_tokens_limit, window - 1),
        cuda_graph=opts.engine.cuda_graph and opts.target == "gpu",
    )
    return {**engine_config.to_parameters(), "intra_op_threads": opts.intra_op_threads}


def gpt2_config(model_info: dict, opts: BuildOptions, name: str = "gpt2") -> mc.ModelConfig:
    """Decoupled Python-backend `gpt2`; one instance: its generation loop batches every
    concurrent request itself."""
    cfg = config_gen.model(name, 0, backend="python")
    config_gen.decoupled(cfg)
    config_gen.tensors(cfg, *gpt2_tensors())
    config_gen.instances(cfg, gpu=opts.target == "gpu", count=1)
    config_gen.parameters(cfg, gpt2_parameters(model_info, opts))
    return cfg


def image_version(plan: VersionPlan, opts: BuildOptions) -> tuple[mc.ModelConfig, str]:
    """An image component's config (adds its model code to the plan's files); (config, detail)."""
    name, files = plan.name, plan.files
    onnx_file = files["model.onnx"]
    if opts.flavour == NATIVE_FLAVOUR:
        from serving.native import native_model_config

        cfg = native_model_config(
            name,
            onnx_file,
            max_batch_size=opts.max_batch_size,
            instance_count=opts.instance_count,
            gpu=opts.target == "gpu",
            accelerator=opts.accelerator,
        )
        return cfg, ""
    files["model.py"] = TRITON_MODELS / "image_model.py"
    files["ortsession.py"] = ORT_SESSION
    return image_config(name, onnx_file, opts), ""


def text_generator_version(plan: VersionPlan, opts: BuildOptions) -> tuple[mc.ModelConfig, str]:
    """The text generator's config, engine, tokenizer and the pair's companion graph (added to
    the plan's files); (config, the KV cache it allocates)."""
    name, export_dir, report, files = plan.name, plan.export_dir, plan.report, plan.files
    variant, companion, why = plan.variant, plan.companion, plan.why
    info = report["model_info"]
    cfg = gpt2_config(info, opts, name)
    if companion:
        from engine.runners.onnxruntime import COMPANION_FILE

        files[COMPANION_FILE] = export_dir / report["variants"][companion]["files"][name]
        cfg.parameters["companion_prefill"].string_value = str(why["routing"]["companion_prefill"]).lower()
        cfg.parameters["companion_from_rows"].string_value = str(why["routing"]["companion_from_rows"])
    files["model.py"] = TRITON_MODELS / "gpt2_model.py"
    files.update(engine_files())
    for asset in ("tokenizer.json", "model_info.json"):
        files[asset] = export_dir / "assets" / asset
    window = opts.engine.max_len or info["n_positions"]
    entry = report["variants"][variant]
    sequences = opts.engine.sequences
    if runtimes.of_variant(variant).cache_blocks:
        if opts.engine.kv_cache_precision == "i8":
            raise ConfigError(
                f"--kv-cache-precision i8 is ONNX Runtime's 8-bit cache; {variant} runs on "
                f"{runtimes.of_variant(variant).name}, whose 8-bit cache is u8"
            )
        precision, per_token = kv_cache_precision(entry, info, variant, opts.engine.kv_cache_precision)
        cfg.parameters["kv_cache_precision"].string_value = precision
        kv = opts.engine.kv_cache_mib * 2**20 or opts.engine.slots * window * per_token
        what = (
            f"{precision} blocks of {BLOCK_SIZE} positions taken by use, allocated once when the model loads"
        )
    else:
        # the cache's dtype as the export read it from the graph (float32 where a report predates
        # it), or the int8-cache graph the export made beside it
        dtype = graph_cache(plan, opts)
        mixed = mixed_calls(plan, opts)
        cfg.parameters["kv_cache_precision"].string_value = {"float32": "f32", "float16": "f16", "int8": "i8"}[dtype]
        itemsize = np.dtype(dtype).itemsize
        cache = {"float32": "f32", "float16": "f16", "int8": "int8 (scales calibrated at export)"}[dtype]
        per_token = kv_cache_bytes(info, opts, itemsize, positions=1)
        kv = opts.engine.kv_cache_mib * 2**20 or opts.engine.slots * window * per_token
        if opts.target == "gpu":
            sequences = opts.engine.slots
            kv = opts.engine.slots * window * per_token
            what = f"{cache} slots of the whole window on the device, allocated once when the model loads"
        else:
            page = page_positions(int(info["head_size"]), itemsize)
            what = (
                f"{cache}, each sequence's rows committed by use as it grows (pages of {page} positions), "
                "given back when it ends"
            )
    detail = (
        f"  KV cache: {kv / 2**20:.0f} MiB ({kv / per_token:.0f} positions), {what}; "
        f"up to {sequences} sequences of up to {window} positions at once"
    )
    if plan.why.get("kv_cache"):
        detail += f"\n  KV cache precision: {plan.why['kv_cache']}"
    if not runtimes.of_variant(variant).cache_blocks:
        detail += f"\n  Mixed calls: {mixed}"
    return cfg, detail


def mixed_calls(plan: VersionPlan, opts: BuildOptions) -> str:
    """Where ONNX Runtime runs on the CPU with `mixed_calls`: the version's `mixed.onnx`
    (`plan.generated`), rewritten from the graph that runs the prefills (the companion of a
    pair that routes them there); what the build says of it."""
    from engine.runners.mixed_graph import write_mixed_graph
    from engine.runners.onnxruntime import COMPANION_FILE, GRAPH_FILE, MIXED_FILE

    if opts.target == "gpu":
        return "off (a GPU runs a step's prefill and decode rows in two calls)"
    if not opts.engine.mixed_calls:
        return "off (--no-mixed-calls): a prefill call and a decode call a step"
    routing = plan.why.get("routing") or {}
    source = COMPANION_FILE if plan.companion and routing.get("companion_prefill") else GRAPH_FILE

    def write(dst: Path) -> None:
        try:
            write_mixed_graph(plan.files[source], dst)
        except ValueError as exc:
            raise BuildError(f"{plan.name}: {plan.files[source]}: {exc}; or build with --no-mixed-calls") from None

    plan.generated[MIXED_FILE] = write
    return f"{MIXED_FILE}: a step's decode rows and prompt chunk in one call, on {source}'s weights"
