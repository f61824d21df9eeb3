"""`aigc bench`: served models vs the baselines a user would pick instead, in one run.

Without `--url` it prepares everything itself on this machine (nothing downloaded): the
GPT-2 124M architecture with random weights, its export and quantized variants, a tiny
DCGAN, a repository and the embedded Triton server. With `--url` it measures a running
server; the baselines then need the same checkpoints (`--gpt2`, `--exports`).

The jobs: `benchmarks.options` (what to measure), `benchmarks.subjects` (the models and
their local files), this module (serve, measure each subject with its role's module,
report), `benchmarks.text` and `benchmarks.images` (a role's measurements), `benchmarks.report`
(ratios, tables, plots, the gate). A role's module provides `variant(opts)` (the variant the
embedded build serves), `steps(opts)` (progress steps per subject), `run(opts, url, subject,
served_variant, bar)` (its figures), `record(results, subject, figures)` and
`LOCAL_CHECKPOINT` (whether its baselines need the checkpoint).
"""

from __future__ import annotations

import contextlib
import logging
import shutil

from aigc import registry
from aigc.errors import BenchmarkError
from benchmarks.options import BenchOptions, Subject
from benchmarks.subjects import subjects

logger = logging.getLogger(__name__)

__all__ = ["BenchOptions", "run_benchmark"]


def _serve_embedded(opts: BenchOptions, subs: list[Subject], stack: contextlib.ExitStack):
    """Build a fresh repository from the subjects' exports and start Triton; (url, variants)."""
    from engine.config import EngineConfig
    from serving.builder import BuildOptions, build_repository
    from serving.server import EmbeddedTritonServer

    repo = (opts.cache / "model_repository").absolute()
    shutil.rmtree(repo, ignore_errors=True)
    variants: dict[str, str] = {}
    for bench in dict.fromkeys(_bench_module(s) for s in subs):
        exports = list(dict.fromkeys(s.export for s in subs if _bench_module(s) is bench))
        built = build_repository(
            exports,
            repo,
            BuildOptions(
                variant=bench.variant(opts),
                intra_op_threads=opts.threads,  # the server runs on as many threads as the baselines
                # a slot for every stream of every workload; the mixed one's long prompts may overlap.
                # Prefix caching off: the streams repeat one prompt, and every peer computes each
                # request's prompt (the engine probes measure the prefix cache on its own).
                engine=EngineConfig(
                    slots=max(8, *opts.concurrency, *opts.long_concurrency, opts.mixed_streams + 2),
                    prefix_caching=False,
                ),
            ),
        )
        variants.update({b.name: b.variant for b in built})
    opts.out.mkdir(parents=True, exist_ok=True)
    server = stack.enter_context(
        EmbeddedTritonServer(
            repo, grpc_port=0, http_port=0, metrics_port=0, log_file=(opts.out / "triton.log").absolute()
        )
    )
    opts.server_pid = server.process.pid if server.process else None
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

    from benchmarks import environment, ratios, report, tables

    if opts.quick:
        opts.quick_mode()
    opts.validate()
    torch.set_num_threads(opts.threads)
    opts.cache.mkdir(parents=True, exist_ok=True)
    subs = subjects(opts)
    results: dict = {
        "env": environment.environment(opts.threads),
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
            subs = _check_served(opts.url, subs)
            # a running server: the variant named (not auto) is taken as the one it serves
            named = {s.model: _bench_module(s).variant(opts) for s in subs}
            url, variants = opts.url, {m: v for m, v in named.items() if v not in (None, "auto")}
        steps = sum(_bench_module(s).steps(opts) for s in subs)
        with tqdm(total=steps, desc="bench", disable=not opts.progress) as bar:
            for s in subs:
                bench = _bench_module(s)
                bench.record(results, s, bench.run(opts, url, s, variants.get(s.model), bar))
    results["ratios"] = ratios.ratios(results)
    report.write(results, opts.out)
    logger.info("\n%s\n", tables.markdown(results))
    logger.info("results in %s", opts.out)
    return results


def _bench_module(s: Subject):
    """The `benchmarks` module that measures the subject's role (`Role.bench`)."""
    return registry.hook(s.kind.component(s.model).role.bench)
