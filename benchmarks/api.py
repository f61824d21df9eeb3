"""`aigc bench`: served models vs the baselines a user would pick instead, in one run.

Without `--url` it prepares everything itself on this machine (nothing downloaded): the
GPT-2 124M architecture with random weights, its export and quantized variants, a tiny
DCGAN, a repository and the embedded Triton server. With `--url` it measures a running
server; the baselines then need the same checkpoints (`--gpt2`, `--exports`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from aigc.errors import BenchmarkError, ConfigError

logger = logging.getLogger(__name__)

MODELS = ("gpt2", "dcgan", "vae_decoder")
MODEL_ALIASES = {"vae": "vae_decoder"}
BASELINES = ("eager", "optimum")
# export report "model" -> the served component a benchmark measures
COMPONENT_OF = {"gpt2": "gpt2", "dcgan": "dcgan", "vae": "vae_decoder"}
KIND_OF = {v: k for k, v in COMPONENT_OF.items()}
# `auto` serves the fastest that passes its gate, on either runtime, or a pair of ONNX graphs
GPT2_VARIANTS = "fp32,int8,int4,ov-int8,ov-int4"
IMAGE_VARIANTS = "fp32,int8"
TINY_IMAGE_STEPS = 20  # speed does not depend on how well the generator was trained


@dataclass
class BenchOptions:
    out: Path = Path("runs/bench")
    cache: Path = Path("runs/bench-cache")
    url: str | None = None  # a running server's gRPC address; None = start the embedded one
    exports: tuple[Path, ...] = ()  # export folders to serve / compare (checkpoint from their report)
    gpt2: Path | None = None  # a GPT-2 checkpoint folder; None = the 124M random-weight one
    gpt2_variant: str = "auto"
    dcgan: Path | None = None  # a DCGAN checkpoint; None = a tiny one trained here
    vae: Path | None = None  # a VAE checkpoint; its decoder is measured when given or served
    image_variant: str = "auto"
    models: tuple[str, ...] | None = None  # None: gpt2, dcgan, and vae_decoder when available
    baselines: tuple[str, ...] = BASELINES
    # peer runtimes (benchmarks.peers): names, engine families, "all" or "none"; None: all
    # of them (--quick: the 4-bit ones and CTranslate2's int8)
    peers: tuple[str, ...] | None = None
    prompt_tokens: int = 16
    new_tokens: int = 64
    concurrency: tuple[int, ...] = (1, 2, 4, 8)
    # The long workload: a document-sized prompt; 0 prompt tokens: no long or mixed workload.
    long_prompt_tokens: int = 512
    long_new_tokens: int = 128
    long_concurrency: tuple[int, ...] = (1, 8)
    # The mixed workload: `mixed_streams` short streams (prompt_tokens -> mixed_new_tokens, back
    # to back) while `mixed_arrivals` long prompts (-> mixed_long_new_tokens) arrive every
    # `mixed_period_s`; 0 streams: not run.
    mixed_streams: int = 4
    mixed_new_tokens: int = 128
    mixed_long_new_tokens: int = 4
    mixed_arrivals: int = 5
    mixed_period_s: float = 3.0
    batch_sizes: tuple[int, ...] = (1, 8, 32)
    threads: int = 2
    repeats: int = 5
    image_requests: int = 200
    throughput_seconds: float = 3.0
    quick: bool = False
    progress: bool = True
    # genai-perf beside the bench's own client (benchmarks.genai_perf): auto (when on PATH),
    # off, or the path of its executable
    genai_perf: str = "auto"
    extra: dict = field(default_factory=dict)

    def validate(self) -> None:
        if not 1 <= self.prompt_tokens <= 512:
            raise ConfigError(f"--prompt-tokens must be in 1..512, got {self.prompt_tokens}")
        if not 1 <= self.new_tokens <= 512:
            raise ConfigError(f"--new-tokens must be in 1..512, got {self.new_tokens}")
        if not 0 <= self.long_prompt_tokens <= 100_000:
            raise ConfigError(f"--long-prompt-tokens must be in 0..100000, got {self.long_prompt_tokens}")
        if not 1 <= self.long_new_tokens <= 512:
            raise ConfigError(f"--long-new-tokens must be in 1..512, got {self.long_new_tokens}")
        if not self.long_concurrency or any(not 1 <= c <= 64 for c in self.long_concurrency):
            raise ConfigError(
                f"--long-concurrency values must be in 1..64, got {list(self.long_concurrency)}"
            )
        if not 0 <= self.mixed_streams <= 64:
            raise ConfigError(f"--mixed-streams must be in 0..64, got {self.mixed_streams}")
        if not 1 <= self.mixed_new_tokens <= 512 or not 1 <= self.mixed_long_new_tokens <= 512:
            raise ConfigError(
                f"--mixed-new-tokens must be in 1..512, got {self.mixed_new_tokens} "
                f"(long: {self.mixed_long_new_tokens})"
            )
        if not 1 <= self.mixed_arrivals <= 1000:
            raise ConfigError(f"--mixed-arrivals must be in 1..1000, got {self.mixed_arrivals}")
        if not 0.01 <= self.mixed_period_s <= 600:
            raise ConfigError(f"--mixed-period must be in 0.01..600 seconds, got {self.mixed_period_s}")
        if not self.concurrency or any(not 1 <= c <= 64 for c in self.concurrency):
            raise ConfigError(f"--concurrency values must be in 1..64, got {list(self.concurrency)}")
        if not self.batch_sizes or any(not 1 <= b <= 64 for b in self.batch_sizes):
            raise ConfigError(f"--batch-sizes values must be in 1..64, got {list(self.batch_sizes)}")
        if not 1 <= self.threads <= 256:
            raise ConfigError(f"--threads must be in 1..256, got {self.threads}")
        if not 1 <= self.repeats <= 1000:
            raise ConfigError(f"--repeats must be in 1..1000, got {self.repeats}")
        if not 1 <= self.image_requests <= 100_000:
            raise ConfigError(f"--image-requests must be in 1..100000, got {self.image_requests}")
        if not 0.1 <= self.throughput_seconds <= 600:
            raise ConfigError(f"--throughput-seconds must be in 0.1..600, got {self.throughput_seconds}")
        for b in self.baselines:
            if b not in BASELINES:
                raise ConfigError(f"--baselines: unknown baseline {b!r}; allowed: {', '.join(BASELINES)}")
        self.peer_names()
        if self.genai_perf not in ("auto", "off"):
            from benchmarks.genai_perf import locate

            locate(self.genai_perf)  # a path that is no executable fails now, not after the run
        if self.models is not None:
            if not self.models:
                raise ConfigError("--models: name at least one model")
            for m in self.models:
                if MODEL_ALIASES.get(m, m) not in MODELS:
                    raise ConfigError(f"--models: unknown model {m!r}; allowed: {', '.join(MODELS)}")
        for flag, path in (("--gpt2", self.gpt2), ("--dcgan", self.dcgan), ("--vae", self.vae)):
            if path is not None and not Path(path).is_dir():
                raise ConfigError(f"{flag} {path}: not a checkpoint folder")
        for e in self.exports:
            if not (Path(e) / "export_report.json").is_file():
                raise ConfigError(f"--exports {e}: no export_report.json (an `aigc export` folder?)")

    def peer_names(self) -> tuple[str, ...]:
        """The peers to measure (raises ConfigError naming --peers for an unknown one)."""
        from benchmarks.peers import resolve

        return resolve(self.peers, self.quick)

    def quick_mode(self) -> BenchOptions:
        """The CI setting: a few minutes of measuring on 2 cores. 8 streams stay: the gate
        compares them with the ceiling that the offline step at batch 8 sets."""
        self.concurrency = tuple(c for c in self.concurrency if c in (1, 4, 8)) or (1,)
        self.long_concurrency = tuple(c for c in self.long_concurrency if c == 1) or (1,)
        self.mixed_arrivals = min(self.mixed_arrivals, 2)
        self.batch_sizes = tuple(b for b in self.batch_sizes if b in (1, 8)) or (1,)
        self.repeats = min(self.repeats, 3)
        self.image_requests = min(self.image_requests, 100)
        self.throughput_seconds = min(self.throughput_seconds, 1.0)
        return self


@dataclass
class Subject:
    """One served model to measure and the local files its in-process baselines run."""

    model: str  # the served name: gpt2 | dcgan | vae_decoder
    checkpoint: Path | None  # for the PyTorch / Optimum baselines; None: served figures only
    export: Path | None  # export folder: ONNX files (in-process ORT), tokenizer
    optional: bool = False  # measured only when the server has it (default model list)


# -- preparing the models ------------------------------------------------------------------


def _newest_mtime(folder: Path) -> float:
    return max((p.stat().st_mtime for p in Path(folder).iterdir() if p.is_file()), default=0.0)


def _cached_export(exp: Path, ckpt: Path, variants: str) -> bool:
    """Whether `exp` is an export of `ckpt` (as it is now) by this version of the exporter."""
    from export.api import EXPORTER_VERSION, read_report

    try:
        report = read_report(exp)
        return (
            report.get("exporter_version") == EXPORTER_VERSION
            and Path(report["checkpoint"]).resolve() == Path(ckpt).resolve()
            and set(variants.split(",")) <= set(report["variants"])
            and (exp / "export_report.json").stat().st_mtime >= _newest_mtime(ckpt)
        )
    except Exception:  # noqa: BLE001 - missing, unreadable or stale: export again
        return False


def _export_cached(kind: str, ckpt: Path, opts: BenchOptions) -> Path:
    from export.api import export_model

    ckpt = Path(ckpt)
    exp = opts.cache / (f"export-{ckpt.name}" if kind == "gpt2" else f"export-{ckpt.name}-{kind}")
    variants = GPT2_VARIANTS if kind == "gpt2" else IMAGE_VARIANTS
    if not _cached_export(exp, ckpt, variants):
        logger.info("exporting %s (%s) to %s", ckpt, variants, exp)
        export_model(kind, ckpt, exp, variants=variants, seed=0)
    return exp


def _random_gpt2(opts: BenchOptions) -> Path:
    from training.gpt2 import create_random_gpt2

    ckpt = opts.cache / "gpt2-124m"
    if not (ckpt / "model.safetensors").is_file():
        logger.info("creating the GPT-2 124M architecture with random weights in %s", ckpt)
        create_random_gpt2(ckpt, preset="124m", seed=0)
    return ckpt


def _tiny_image_model(kind: str, opts: BenchOptions) -> Path:
    from training.api import TrainOptions, train

    ckpt = opts.cache / kind
    if not (ckpt / "model.safetensors").is_file():
        logger.info("training a tiny %s (%d steps) in %s", kind, TINY_IMAGE_STEPS, ckpt)
        train(TrainOptions(model=kind, out=ckpt, steps=TINY_IMAGE_STEPS, progress=False))
    return ckpt


def subjects(opts: BenchOptions) -> list[Subject]:
    """What to measure and where its local files come from; prepares the missing ones."""
    from export.api import read_report

    given: dict[str, tuple[Path | None, Path]] = {}
    for e in opts.exports:
        report = read_report(e)
        comp = COMPONENT_OF.get(report["model"])
        if comp is None:
            raise ConfigError(f"--exports {e}: a {report['model']!r} export has nothing to benchmark")
        ckpt = Path(report["checkpoint"]) if report.get("checkpoint") else None
        given[comp] = (ckpt if ckpt is not None and ckpt.is_dir() else None, Path(e))
    checkpoints = {"gpt2": opts.gpt2, "dcgan": opts.dcgan, "vae_decoder": opts.vae}
    wanted = [MODEL_ALIASES.get(m, m) for m in (opts.models or MODELS)]
    embedded = opts.url is None
    out = []
    for model in dict.fromkeys(wanted):
        ckpt, exp = given.get(model, (None, None))
        ckpt = checkpoints[model] or ckpt
        # the default list measures an image model only where it is available
        optional = opts.models is None and model != "gpt2"
        if ckpt is None and exp is None:
            if model == "gpt2":
                if not embedded:
                    raise ConfigError(
                        "--url needs --gpt2 CHECKPOINT or --exports GPT2_EXPORT: "
                        "the baselines run the same checkpoint in-process"
                    )
                ckpt = _random_gpt2(opts)
            elif embedded and optional and model == "vae_decoder":
                logger.info("vae_decoder: no --vae checkpoint or export given; not measured")
                continue
            elif embedded:
                ckpt = _tiny_image_model(KIND_OF[model], opts)
            # with --url and no local files: the served figures only
        if exp is None and ckpt is not None and (embedded or model != "gpt2"):
            exp = _export_cached(KIND_OF[model], ckpt, opts)
        out.append(Subject(model, Path(ckpt) if ckpt else None, exp, optional))
    return out


# -- the run -------------------------------------------------------------------------------


def _serve_embedded(opts: BenchOptions, subs: list[Subject], stack: contextlib.ExitStack):
    """Build a fresh repository from the subjects' exports and start Triton; (url, variants)."""
    from serving.builder import BuildOptions, build_repository
    from serving.server import EmbeddedTritonServer

    repo = (opts.cache / "model_repository").absolute()
    shutil.rmtree(repo, ignore_errors=True)
    variants: dict[str, str] = {}
    for is_gpt2 in (True, False):
        exports = list(dict.fromkeys(s.export for s in subs if (s.model == "gpt2") == is_gpt2))
        if not exports:
            continue
        built = build_repository(
            exports,
            repo,
            BuildOptions(
                variant=opts.gpt2_variant if is_gpt2 else opts.image_variant,
                intra_op_threads=opts.threads,  # the server runs on as many threads as the baselines
                # a slot for every stream of every workload; the mixed one's long prompts may overlap
                kv_slots=max(8, *opts.concurrency, *opts.long_concurrency, opts.mixed_streams + 2),
            ),
        )
        variants.update({b.name: b.variant for b in built})
    opts.out.mkdir(parents=True, exist_ok=True)
    server = stack.enter_context(
        EmbeddedTritonServer(
            repo, grpc_port=0, http_port=0, metrics_port=0, log_file=(opts.out / "triton.log").absolute()
        )
    )
    return server.grpc_url, variants


def _check_served(url: str, subs: list[Subject]) -> list[Subject]:
    """Drop optional models the server does not have; a named one missing is an error."""
    from serving.client import AigcClient

    with AigcClient(url, timeout_s=10) as client:
        client.wait_ready(timeout_s=30)
        kept = []
        for s in subs:
            if client.is_ready(s.model):
                kept.append(s)
            elif s.optional:
                logger.info("%s is not served at %s; not measured", s.model, url)
            else:
                raise BenchmarkError(f"{s.model} is not ready on the server at {url}")
    return kept


def run_benchmark(opts: BenchOptions) -> dict:
    """Measure, write results.json / results.md / plots into `opts.out`; returns the results."""
    import torch
    from tqdm import tqdm

    from benchmarks import report

    if opts.quick:
        opts.quick_mode()
    opts.validate()
    torch.set_num_threads(opts.threads)
    opts.cache.mkdir(parents=True, exist_ok=True)
    subs = subjects(opts)
    results: dict = {
        "env": report.environment(opts.threads),
        "config": {
            "url": opts.url,
            "prompt_tokens": opts.prompt_tokens,
            "new_tokens": opts.new_tokens,
            "concurrency": list(opts.concurrency),
            "long_prompt_tokens": opts.long_prompt_tokens,
            "long_new_tokens": opts.long_new_tokens,
            "long_concurrency": list(opts.long_concurrency),
            "mixed_streams": opts.mixed_streams,
            "mixed_new_tokens": opts.mixed_new_tokens,
            "mixed_long_new_tokens": opts.mixed_long_new_tokens,
            "mixed_arrivals": opts.mixed_arrivals,
            "mixed_period_s": opts.mixed_period_s,
            "batch_sizes": list(opts.batch_sizes),
            "repeats": opts.repeats,
            "image_requests": opts.image_requests,
            "throughput_seconds": opts.throughput_seconds,
            "quick": opts.quick,
            "threads": opts.threads,
            # with --url the server's own thread count is whatever it was started with
            "server_threads": opts.threads if opts.url is None else None,
            "baselines": list(opts.baselines),
            "peers": list(opts.peer_names()),
            "genai_perf": opts.genai_perf,
        },
    }
    with contextlib.ExitStack() as stack:
        if opts.url is None:
            url, variants = _serve_embedded(opts, subs, stack)
        else:
            url, variants = opts.url, {}
            subs = _check_served(url, subs)
        gpt2 = [s for s in subs if s.model == "gpt2"]
        images = [s for s in subs if s.model != "gpt2"]
        per_gpt2 = len(opts.concurrency) + len(opts.long_concurrency) + 2 + len(opts.baselines)
        per_gpt2 += len(opts.peer_names()) + (1 if opts.peer_names() and opts.long_prompt_tokens else 0)
        steps = len(gpt2) * per_gpt2 + len(images) * 3
        with tqdm(total=steps, desc="bench", disable=not opts.progress) as bar:
            for s in gpt2:
                results["gpt2"] = _bench_gpt2(opts, url, s, variants.get("gpt2"), bar)
            for s in images:
                results.setdefault("images", {})[s.model] = _bench_image(
                    opts, url, s, variants.get(s.model), bar
                )
    results["ratios"] = report.ratios(results)
    report.write(results, opts.out)
    logger.info("\n%s\n", report.markdown(results))
    logger.info("results in %s", opts.out)
    return results


def _step(bar, text: str) -> None:
    """Progress: the bar's label on a terminal, a log line otherwise (CI logs)."""
    bar.set_postfix_str(text)
    if bar.disable:
        logger.info("bench: %s", text)


# -- GPT-2 ---------------------------------------------------------------------------------


def build_prompt(tokenizer, n: int, text: str) -> str:
    """A prompt that the model's tokenizer encodes to exactly `n` tokens.

    Decoded from a window of token ids of `text`: `n` of them, or a few more where the
    decoded text merges into fewer tokens (a short text repeated to length merges at each
    seam); a window that encodes to anything but `n` tokens is skipped.
    """
    ids = tokenizer.encode(text).ids
    while len(ids) < n + 256 + 16:
        ids = ids + ids
    for start in range(0, 256):
        for extra in range(0, 17):
            prompt = tokenizer.decode(ids[start : start + n + extra])
            got = len(tokenizer.encode(prompt).ids)
            if got == n and prompt.strip():
                return prompt
            if got > n:
                break
    raise BenchmarkError(f"--prompt-tokens {n}: found no text that encodes to exactly {n} tokens")


def _tokenizer(s: Subject):
    from tokenizers import Tokenizer

    for folder in (s.export / "assets" if s.export else None, s.checkpoint):
        if folder is not None and (Path(folder) / "tokenizer.json").is_file():
            return Tokenizer.from_file(str(Path(folder) / "tokenizer.json"))
    raise ConfigError(f"--gpt2 {s.checkpoint}: no tokenizer.json (save the tokenizer with the model)")


def _context_window(s: Subject) -> int | None:
    """The model's context window from its export or checkpoint; None when neither says."""
    for f in (
        s.export / "assets" / "model_info.json" if s.export else None,
        Path(s.checkpoint) / "config.json" if s.checkpoint else None,
    ):
        if f is not None and f.is_file():
            n = json.loads(f.read_text()).get("n_positions")
            if n:
                return int(n)
    return None


def step_read_bytes(onnx_path: Path) -> tuple[int, int]:
    """(initializer bytes that one decode step reads, bytes per KV cache element) of an
    exported GPT-2 file.

    Initializers that only `Gather` reads (the token and position embedding tables: a step
    reads one row of each) and unused ones are left out; a table tied to the LM head is
    read whole by its MatMul and counts.
    """
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    consumers: dict[str, set[str]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, set()).add(node.op_type)
    total = 0
    for t in graph.initializer:
        if consumers.get(t.name, {"Gather"}) == {"Gather"}:
            continue
        if t.data_location == onnx.TensorProto.EXTERNAL:
            total += int({e.key: e.value for e in t.external_data}.get("length", 0))
        elif t.HasField("raw_data"):
            total += len(t.raw_data)
        else:
            total += onnx.numpy_helper.to_array(t).nbytes
    past = next((i for i in graph.input if i.name == "past_key_0"), None)
    if past is None:
        raise BenchmarkError(f"{onnx_path}: no past_key_0 input; not an exported GPT-2 with a KV cache")
    itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(past.type.tensor_type.elem_type)).itemsize
    return total, itemsize


def _offline(opts: BenchOptions, export: Path, export_report: dict, variant: str | None) -> dict:
    """Each CPU variant's decode profile, measured now through the serving engine's own
    runner on the exported file with the server's threads (beside the served figures, so
    that a slow minute on a shared machine moves both), and its step against the time the
    step's reads take at the memory bandwidth measured now: at 1 GiB (past every cache) and
    at the variant's own size.

    The served variant gets every batch size up to 8 that is served; the others batch 1
    (their read floor). The export's own profiles stay beside, as `export_decode_profiles`.
    """
    from benchmarks import measure, report
    from export.gpt2_eval import decode_profiles

    info = json.loads((export / "assets" / "model_info.json").read_text())
    per_element = 2 * int(info["n_layer"]) * int(info["n_head"]) * int(info["head_size"])  # K and V
    variants = export_report["variants"]
    paths = {
        n: export / v["files"]["gpt2"]
        for n, v in variants.items()
        if v.get("decode_profile") and v.get("target") == "cpu" and "gpt2" in v.get("files", {})
    }
    from export.latency_model import routed_profile
    from serving.variant_choice import choose_variant, split_pair

    main, companion = split_pair(variant or "")
    members = {main, companion} - {None}
    served = tuple(sorted({1, 8} | {c for c in opts.concurrency if c <= 8}))
    gib = measure.read_bandwidth(2**30, opts.threads)
    profiles = decode_profiles(
        paths,
        int(info["n_positions"]),
        batches={n: served if n in members else (1,) for n in paths},
        prefill_lens=(opts.prompt_tokens,),
        threads=opts.threads,
    )
    served_profile = profiles.get(main)
    if companion and served_profile and companion in profiles:
        # a pair: what it serves is each call on the graph the build routed it to
        route = choose_variant(export_report, "gpt2", variant, "cpu")[1]["routing"]
        served_profile = routed_profile(served_profile, profiles[companion], route)
    floors = {}
    for name, profile in profiles.items():
        if paths[name].suffix != ".onnx":
            continue  # an OpenVINO IR (ov-* variants): its bytes per step are not counted here
        weights, itemsize = step_read_bytes(paths[name])
        own = measure.read_bandwidth(weights, opts.threads)
        floors[name] = report.read_floors(
            profile, weights, per_element * itemsize, {"1gib": gib["gb_per_s"], "model": own["gb_per_s"]}
        )
        floors[name]["bandwidth_at_model_size"] = own
    return {
        "decode_profile": served_profile,
        "decode_profiles": profiles,
        "export_decode_profiles": {
            n: v["decode_profile"] for n, v in variants.items() if v.get("decode_profile")
        },
        "memory_bandwidth_1gib": gib,
        "read_floors": floors,
    }


def _bench_gpt2(opts: BenchOptions, url: str, s: Subject, variant: str | None, bar) -> dict:
    import torch
    from transformers import AutoConfig, GPT2LMHeadModel

    from benchmarks import measure
    from training.data import load_text_corpus

    tok = _tokenizer(s)
    text = load_text_corpus(None)[1]
    prompt = build_prompt(tok, opts.prompt_tokens, text)
    out: dict = {"model": str(s.checkpoint), "variant": variant, "prompt": prompt, "served": {}}
    for c in opts.concurrency:
        _step(bar, f"gpt2 served c={c}")
        # c=1 gives the latency percentiles: `repeats` requests; higher c: 2 per stream
        out["served"][str(c)] = measure.served_concurrency(
            url, prompt, opts.new_tokens, c, max(2, opts.repeats) if c == 1 else 2
        )
        bar.update()
    if "1" in out["served"]:
        from benchmarks import genai_perf

        _step(bar, "gpt2 genai-perf")
        out["genai_perf"] = genai_perf.run_beside(
            opts.genai_perf,
            url,
            s.checkpoint,
            out["served"]["1"],
            opts.prompt_tokens,
            opts.new_tokens,
            max(16, 2 * opts.repeats),
            opts.out,
        )
    _long_and_mixed(opts, url, s, tok, text, prompt, out, bar)
    _step(bar, "gpt2 offline decode profile and read floors")
    if s.export is not None:
        from export.api import read_report

        exp_report = read_report(s.export)
        out["fidelity"] = exp_report["variants"].get(variant or "", {}).get("fidelity", {}).get("gpt2")
        # Offline step times of the same file and threads, measured while the server idles
        # (after its streams, as the baselines are): what batching can give at best.
        out.update(_offline(opts, s.export, exp_report, variant))
    bar.update()
    ids = torch.tensor([tok.encode(prompt).ids])
    eos = AutoConfig.from_pretrained(s.checkpoint).eos_token_id
    if "eager" in opts.baselines:
        _step(bar, "gpt2 eager")
        model = GPT2LMHeadModel.from_pretrained(s.checkpoint).eval()
        out["eager"] = measure.generate_baseline(
            measure.hf_generate_fn(model, ids, eos), opts.new_tokens, opts.repeats
        )
        del model
        bar.update()
    if "optimum" in opts.baselines:
        _step(bar, "gpt2 optimum")
        model = _optimum_model(opts, s.checkpoint)
        out["optimum"] = measure.generate_baseline(
            measure.hf_generate_fn(model, ids, eos), opts.new_tokens, opts.repeats
        )
        del model
        bar.update()
    if opts.peer_names():
        _bench_peers(opts, s, tok, text, ids[0].tolist(), out, bar)
    return out


def _bench_peers(opts: BenchOptions, s: Subject, tok, text: str, ids: list[int], out: dict, bar) -> None:
    """The peer runtimes on the short workload (same ids, tokens and threads as the served
    run), then the long one for the fastest peer (each engine's fastest in a full run)."""
    from benchmarks import peers

    def progress(name: str) -> None:
        _step(bar, f"gpt2 peer {name}")

    names = opts.peer_names()
    short = [{"key": "short", "ids": ids, "new_tokens": opts.new_tokens, "repeats": opts.repeats}]
    figures = peers.bench(names, s.checkpoint, opts.cache, opts.threads, short, progress)
    bar.update(len(names))
    out["peers"] = {
        n: f if "skipped" in f else {**{k: v for k, v in f.items() if k != "short"}, **f["short"]}
        for n, f in figures.items()
    }
    if not opts.long_prompt_tokens:
        return
    if "long" not in out:  # not measured served (the context window): nothing to compare with
        bar.update()
        return
    picks = [peers.best(out["peers"])] if opts.quick else peers.best_per_family(out["peers"])
    picks = [p for p in picks if p is not None]
    if picks:
        long_ids = tok.encode(build_prompt(tok, opts.long_prompt_tokens, text)).ids
        # 2 timed requests after a warm-up, as the served long workload at one stream
        work = [{"key": "long", "ids": long_ids, "new_tokens": opts.long_new_tokens, "repeats": 2}]
        long = peers.bench(
            picks, s.checkpoint, opts.cache, opts.threads, work, lambda n: progress(f"{n} long")
        )
        out["long"]["peers"] = {n: f if "skipped" in f else f["long"] for n, f in long.items()}
    bar.update()


def _long_and_mixed(
    opts: BenchOptions, url: str, s: Subject, tok, text: str, prompt: str, out: dict, bar
) -> None:
    """The long workload at each `long_concurrency`, then the mixed one, into `out`."""
    from benchmarks import measure

    if not opts.long_prompt_tokens:
        bar.update(len(opts.long_concurrency) + 1)
        return
    window = _context_window(s)
    need = {
        "long": opts.long_prompt_tokens + max(opts.long_new_tokens, opts.mixed_long_new_tokens),
        "mixed short": opts.prompt_tokens + opts.mixed_new_tokens if opts.mixed_streams else 0,
    }
    too_long = {k: n for k, n in need.items() if window is not None and n > window}
    if too_long:
        out["long_skipped"] = (
            f"{', '.join(f'{k} requests need {n} tokens' for k, n in too_long.items())}; "
            f"the context window is {window}"
        )
        logger.warning("gpt2 long and mixed workloads not measured: %s", out["long_skipped"])
        bar.update(len(opts.long_concurrency) + 1)
        return
    long_prompt = build_prompt(tok, opts.long_prompt_tokens, text)
    out["long"] = {
        "prompt_tokens": len(tok.encode(long_prompt).ids),
        "new_tokens": opts.long_new_tokens,
        "served": {},
    }
    for c in opts.long_concurrency:
        _step(bar, f"gpt2 long c={c}")
        # Warm-up requests of 2 tokens: each connection's first call, and the long prefill's
        # buffers, stay outside the timed requests without a full long generation each.
        out["long"]["served"][str(c)] = measure.served_concurrency(
            url, long_prompt, opts.long_new_tokens, c, 2, warmup_tokens=2
        )
        bar.update()
    if opts.mixed_streams:
        _step(bar, "gpt2 mixed")
        out["mixed"] = {
            "short_prompt_tokens": opts.prompt_tokens,
            "short_new_tokens": opts.mixed_new_tokens,
            "long_prompt_tokens": out["long"]["prompt_tokens"],
            "long_new_tokens": opts.mixed_long_new_tokens,
            **measure.served_mixed(
                url,
                prompt,
                opts.mixed_new_tokens,
                opts.mixed_streams,
                long_prompt,
                opts.mixed_long_new_tokens,
                opts.mixed_arrivals,
                opts.mixed_period_s,
            ),
        }
    bar.update()


def _optimum_model(opts: BenchOptions, ckpt: Path):
    """Optimum's ORTModelForCausalLM on the same checkpoint, exported once into the cache."""
    import onnxruntime as ort
    from optimum.onnxruntime import ORTModelForCausalLM

    folder = opts.cache / f"optimum-{Path(ckpt).name}"
    source = {"checkpoint": str(Path(ckpt).resolve()), "checkpoint_mtime": _newest_mtime(ckpt)}
    marker = folder / "aigc_bench_source.json"
    try:
        fresh = json.loads(marker.read_text()) == source and (folder / "model.onnx").is_file()
    except (OSError, json.JSONDecodeError):
        fresh = False
    if not fresh:
        logger.info("exporting %s with Optimum into %s", ckpt, folder)
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        ORTModelForCausalLM.from_pretrained(ckpt, export=True, use_cache=True).save_pretrained(tmp)
        (tmp / marker.name).write_text(json.dumps(source) + "\n")
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
    so = ort.SessionOptions()
    so.intra_op_num_threads = opts.threads
    so.inter_op_num_threads = 1
    return ORTModelForCausalLM.from_pretrained(
        folder, use_cache=True, session_options=so, provider="CPUExecutionProvider"
    )


# -- image models --------------------------------------------------------------------------


def _bench_image(opts: BenchOptions, url: str, s: Subject, variant: str | None, bar) -> dict:
    import torch

    from benchmarks import measure
    from serving.client import AigcClient

    rng = np.random.default_rng(0)
    r: dict = {"variant": variant}
    _step(bar, f"{s.model} latency")
    with AigcClient(url, timeout_s=60) as client:
        _, dims = client.input_shape(s.model)
        z = rng.standard_normal((1, *dims)).astype(np.float32)
        r["served_ms"] = measure.percentiles(
            measure.latency_samples(lambda: client.decode(z, model=s.model), opts.image_requests)
        )
    sess = None
    if s.export is not None:
        from export.api import read_report
        from export.ortutil import make_session
        from serving.variant_choice import choose_variant

        report = read_report(s.export)
        local = variant or choose_variant(report, s.model, opts.image_variant, "cpu")[0]
        r["inprocess_variant"] = local
        sess = make_session(s.export / report["variants"][local]["files"][s.model], threads=opts.threads)
        r["onnxruntime_ms"] = measure.percentiles(
            measure.latency_samples(lambda: sess.run(None, {"z": z}), opts.image_requests)
        )
    if s.checkpoint is not None and "eager" in opts.baselines:
        from export.images import wrap_components
        from training.models import load_image_checkpoint

        module, _ = load_image_checkpoint(s.checkpoint, expected=KIND_OF[s.model])
        eager = wrap_components(KIND_OF[s.model], module)[s.model]
        zt = torch.from_numpy(z)
        with torch.no_grad():
            r["eager_ms"] = measure.percentiles(
                measure.latency_samples(lambda: eager(zt), opts.image_requests)
            )
    bar.update()
    _step(bar, f"{s.model} throughput")
    secs = opts.throughput_seconds
    r["throughput_vs_concurrency"] = {
        str(c): measure.served_image_throughput(url, s.model, z, c, secs) for c in opts.concurrency
    }
    bar.update()
    r["throughput_vs_batch"] = {}
    r["onnxruntime_images_per_s_vs_batch"] = {}
    for b in opts.batch_sizes:
        zb = rng.standard_normal((b, *dims)).astype(np.float32)
        r["throughput_vs_batch"][str(b)] = measure.served_image_throughput(url, s.model, zb, 1, secs)
        if sess is not None:
            r["onnxruntime_images_per_s_vs_batch"][str(b)] = measure.inprocess_throughput(
                lambda zb=zb: sess.run(None, {"z": zb}), b, secs
            )
    bar.update()
    return r
