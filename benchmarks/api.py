"""`aigc bench`: served models vs the baselines a user would pick instead, in one run.

Without `--url` it prepares everything itself on this machine (nothing downloaded): the
GPT-2 124M architecture with random weights, its export and quantized variants, a tiny
DCGAN, a repository and the embedded Triton server.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from aigc.errors import ConfigError

logger = logging.getLogger(__name__)


@dataclass
class BenchOptions:
    out: Path = Path("runs/bench")
    cache: Path = Path("runs/bench-cache")
    url: str | None = None  # a running server's gRPC address; None = start the embedded one
    gpt2: Path | None = None  # a GPT-2 checkpoint folder; None = the 124M random-weight one
    gpt2_variant: str = "auto"
    dcgan: Path | None = None  # a DCGAN checkpoint; None = a tiny one trained here
    prompt_tokens: int = 16
    new_tokens: int = 64
    concurrency: tuple[int, ...] = (1, 2, 4, 8)
    threads: int = 2
    repeats: int = 5
    image_requests: int = 200
    quick: bool = False
    baselines: tuple[str, ...] = ("eager", "optimum")
    models: tuple[str, ...] = ("gpt2", "dcgan")
    extra: dict = field(default_factory=dict)

    def validate(self) -> None:
        if not 1 <= self.prompt_tokens <= 512:
            raise ConfigError(f"--prompt-tokens must be in 1..512, got {self.prompt_tokens}")
        if not 2 <= self.new_tokens <= 512:
            raise ConfigError(f"--new-tokens must be in 2..512, got {self.new_tokens}")
        if not self.concurrency or any(not 1 <= c <= 64 for c in self.concurrency):
            raise ConfigError(f"--concurrency values must be in 1..64, got {list(self.concurrency)}")
        if not 1 <= self.threads <= 256:
            raise ConfigError(f"--threads must be in 1..256, got {self.threads}")
        if not 1 <= self.repeats <= 1000:
            raise ConfigError(f"--repeats must be in 1..1000, got {self.repeats}")
        for b in self.baselines:
            if b not in ("eager", "optimum"):
                raise ConfigError(f"--baselines: unknown baseline {b!r}; allowed: eager, optimum")
        for m in self.models:
            if m not in ("gpt2", "dcgan"):
                raise ConfigError(f"--models: unknown model {m!r}; allowed: gpt2, dcgan")
        if self.url is not None and self.gpt2 is None and "gpt2" in self.models:
            raise ConfigError(
                "--url needs --gpt2 CHECKPOINT: the baselines run the same checkpoint in-process"
            )

    def quick_mode(self) -> BenchOptions:
        """The CI setting: a minute or two on 2 cores."""
        self.concurrency = tuple(c for c in self.concurrency if c in (1, 4)) or (1,)
        self.repeats = min(self.repeats, 3)
        self.image_requests = min(self.image_requests, 60)
        return self


def _cached_export(exp: Path) -> bool:
    """Whether `exp` holds an export made by this version of the exporter."""
    from export.api import EXPORTER_VERSION, read_report

    try:
        return read_report(exp).get("exporter_version") == EXPORTER_VERSION
    except Exception:  # noqa: BLE001 - missing or unreadable: not usable
        return False


def _prepare_gpt2(opts: BenchOptions) -> tuple[Path, Path]:
    from export.api import export_model
    from training.gpt2 import create_random_gpt2

    ckpt = opts.gpt2
    if ckpt is None:
        ckpt = opts.cache / "gpt2-124m"
        if not (ckpt / "model.safetensors").is_file():
            logger.info("creating the GPT-2 124M architecture with random weights in %s", ckpt)
            create_random_gpt2(ckpt, preset="124m")
    exp = opts.cache / f"export-{Path(ckpt).name}"
    if not _cached_export(exp):
        logger.info("exporting %s (fp32, int8, int4) to %s", ckpt, exp)
        export_model("gpt2", ckpt, exp, variants="fp32,int8,int4", seed=0)
    return Path(ckpt), exp


def _prepare_dcgan(opts: BenchOptions) -> tuple[Path, Path]:
    from export.api import export_model
    from training.api import TrainOptions, train

    ckpt = opts.dcgan or opts.cache / "dcgan"
    if opts.dcgan is None and not (ckpt / "model.safetensors").is_file():
        train(TrainOptions(model="dcgan", out=ckpt, steps=20, progress=False))
    exp = opts.cache / f"export-{Path(ckpt).name}-dcgan"
    if not _cached_export(exp):
        export_model("dcgan", ckpt, exp, variants="fp32,int8", seed=0)
    return Path(ckpt), exp


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
    prepared = {}
    if "gpt2" in opts.models:
        prepared["gpt2"] = _prepare_gpt2(opts)
    if "dcgan" in opts.models:
        prepared["dcgan"] = _prepare_dcgan(opts)
    results: dict = {
        "env": report.environment(opts.threads),
        "config": {
            "prompt_tokens": opts.prompt_tokens,
            "new_tokens": opts.new_tokens,
            "concurrency": list(opts.concurrency),
            "repeats": opts.repeats,
            "quick": opts.quick,
            "threads": opts.threads,
        },
    }

    with contextlib.ExitStack() as stack:
        url = opts.url
        if url is None:
            from serving.builder import BuildOptions, build_repository
            from serving.server import EmbeddedTritonServer

            repo = opts.cache / "model_repository"
            shutil.rmtree(repo, ignore_errors=True)
            build_repository(
                [e for _, e in prepared.values()],
                repo,
                BuildOptions(
                    variant=opts.gpt2_variant,
                    intra_op_threads=opts.threads,
                    max_active_sequences=max(opts.concurrency),
                ),
            )
            server = stack.enter_context(
                EmbeddedTritonServer(
                    repo, grpc_port=0, http_port=0, metrics_port=0, log_file=opts.out / "triton.log"
                )
            )
            url = server.grpc_url
        steps = (len(opts.concurrency) + len(opts.baselines)) * ("gpt2" in prepared) + 4 * (
            "dcgan" in prepared
        )
        with tqdm(total=steps, desc="bench", disable=not opts.extra.get("progress", True)) as bar:
            if "gpt2" in prepared:
                results["gpt2"] = _bench_gpt2(opts, url, *prepared["gpt2"], bar)
            if "dcgan" in prepared:
                results["images"] = {"dcgan": _bench_dcgan(opts, url, *prepared["dcgan"], bar)}
    results["ratios"] = report.ratios(results)
    report.write(results, opts.out)
    logger.info("\n%s", report.markdown(results))
    logger.info("results in %s", opts.out)
    return results


def _prompt(tokenizer, n: int) -> str:
    """A prompt that encodes to exactly `n` tokens (held-out text, trimmed)."""
    from training.data import load_text_corpus

    text = load_text_corpus(None)[1]
    ids = tokenizer.encode(text).ids
    for extra in range(0, 8):
        prompt = tokenizer.decode(ids[: n + extra])
        if len(tokenizer.encode(prompt).ids) == n:
            return prompt
        prompt = tokenizer.decode(ids[:n])
        if len(tokenizer.encode(prompt).ids) == n:
            return prompt
    return tokenizer.decode(ids[:n])


def _bench_gpt2(opts: BenchOptions, url: str, ckpt: Path, export_dir: Path, bar) -> dict:
    import torch
    from tokenizers import Tokenizer
    from transformers import GPT2LMHeadModel

    from benchmarks import measure
    from export.api import read_report
    from serving.builder import choose_variant

    tok = Tokenizer.from_file(str(export_dir / "assets" / "tokenizer.json"))
    prompt = _prompt(tok, opts.prompt_tokens)
    opts.prompt_tokens = len(tok.encode(prompt).ids)
    report = read_report(export_dir)
    variant = choose_variant(report, "gpt2", opts.gpt2_variant, "cpu")
    out: dict = {
        "model": str(ckpt),
        "variant": variant,
        "served": {},
        "fidelity": report["variants"][variant]["fidelity"].get("gpt2"),
    }
    reqs = max(2, opts.repeats)
    for c in opts.concurrency:
        bar.set_postfix_str(f"gpt2 served c={c}")
        out["served"][str(c)] = measure.served_concurrency(
            url, prompt, opts.new_tokens, c, reqs if c == 1 else 2
        )
        bar.update()
    ids = torch.tensor([tok.encode(prompt).ids])
    eos = report["model_info"]["eos_token_id"]
    if "eager" in opts.baselines:
        bar.set_postfix_str("gpt2 eager")
        model = GPT2LMHeadModel.from_pretrained(ckpt).eval()
        out["eager"] = measure.generate_baseline(
            measure.hf_generate_fn(model, ids, eos), opts.new_tokens, opts.repeats
        )
        del model
        bar.update()
    if "optimum" in opts.baselines:
        bar.set_postfix_str("gpt2 optimum")
        out["optimum"] = measure.generate_baseline(
            measure.hf_generate_fn(_optimum_model(opts, ckpt), ids, eos), opts.new_tokens, opts.repeats
        )
        bar.update()
    return out


def _optimum_model(opts: BenchOptions, ckpt: Path):
    """Optimum's ORTModelForCausalLM on the same checkpoint, exported once into the cache."""
    import onnxruntime as ort
    from optimum.onnxruntime import ORTModelForCausalLM

    folder = opts.cache / f"optimum-{Path(ckpt).name}"
    so = ort.SessionOptions()
    so.intra_op_num_threads = opts.threads
    if not (folder / "model.onnx").is_file():
        logger.info("exporting %s with Optimum into %s", ckpt, folder)
        model = ORTModelForCausalLM.from_pretrained(ckpt, export=True, use_cache=True)
        model.save_pretrained(folder)
    return ORTModelForCausalLM.from_pretrained(
        folder, use_cache=True, session_options=so, provider="CPUExecutionProvider"
    )


def _bench_dcgan(opts: BenchOptions, url: str, ckpt: Path, export_dir: Path, bar) -> dict:
    import torch

    from benchmarks import measure
    from export.api import read_report
    from export.images import ToUint8Image
    from export.ortutil import make_session
    from serving.builder import choose_variant
    from serving.client import AigcClient
    from training.checkpoint import load_image_checkpoint

    report = read_report(export_dir)
    variant = choose_variant(report, "dcgan", "auto", "cpu")
    latent = int(report["model_info"]["config"]["latent_dim"])
    z = np.random.default_rng(0).standard_normal((1, latent)).astype(np.float32)
    r: dict = {"variant": variant}
    bar.set_postfix_str("dcgan served")
    with AigcClient(url) as client:
        r["served_ms"] = measure.percentiles(
            measure.latency_samples(lambda: client.decode(z, model="dcgan"), opts.image_requests)
        )
    bar.update()
    sess = make_session(export_dir / report["variants"][variant]["files"]["dcgan"], threads=opts.threads)
    r["onnxruntime_ms"] = measure.percentiles(
        measure.latency_samples(lambda: sess.run(None, {"z": z}), opts.image_requests)
    )
    gen, _ = load_image_checkpoint(ckpt, expected="dcgan")
    eager = ToUint8Image(gen).eval()
    zt = torch.from_numpy(z)
    with torch.no_grad():
        r["eager_ms"] = measure.percentiles(measure.latency_samples(lambda: eager(zt), opts.image_requests))
    bar.update()
    bar.set_postfix_str("dcgan throughput")
    r["throughput_vs_concurrency"] = {
        str(c): measure.served_image_throughput(url, "dcgan", latent, 1, c, opts.image_requests)
        for c in opts.concurrency
    }
    bar.update()
    r["throughput_vs_batch"] = {
        str(b): measure.served_image_throughput(url, "dcgan", latent, b, 1, max(10, opts.image_requests // b))
        for b in (1, 8, 32)
    }
    bar.update()
    return r
