"""`aigc demo`: the whole pipeline end to end on the embedded server, in minutes.

Train tiny DCGAN, VAE and GPT-2 checkpoints, export every variant, build the Triton model
repository, start the embedded Triton server, generate images and stream text through
gRPC, run a short benchmark of those same models (served against PyTorch eager; the full
one, GPT-2 124M against Optimum and the peer runtimes, is `aigc bench` / `make bench`), stop
the server. Every artefact lands under `--out`; the last lines say where, and the headline
figures.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from aigc import registry

logger = logging.getLogger(__name__)

MODELS = registry.names()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", type=Path, default=Path("runs/demo"), help="where everything goes (default runs/demo)"
    )
    parser.add_argument(
        "--repository", type=Path, default=Path("model_repository"), help="Triton model repository to build"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of training and generation")
    parser.add_argument("--prompt", default="The tokenizer", help="GPT-2 prompt to stream")
    parser.add_argument("--no-bench", action="store_true", help="skip the short benchmark at the end")


def run(args: argparse.Namespace) -> int:
    from export.api import export_model
    from serving.builder import build_repository
    from serving.client import AigcClient, save_image_grid
    from serving.server import EmbeddedTritonServer
    from training.api import TrainOptions, train

    out = args.out.absolute()
    t0 = time.perf_counter()
    checkpoints, exports = {}, {}
    for model in MODELS:
        _step(f"train {model}")
        checkpoints[model] = train(TrainOptions(model=model, out=out / "checkpoints" / model, seed=args.seed))
    for model in MODELS:
        _step(f"export {model} (fp32 + quantized variants, each checked against PyTorch)")
        exports[model] = out / "exports" / model
        report = export_model(model, checkpoints[model], exports[model], seed=args.seed)
        for name, v in report["variants"].items():
            logger.info(
                "  %-7s %s",
                name,
                {True: "passed", False: f"failed: {v['reason']}", None: v["reason"]}[v["passed"]],
            )
    _step(f"build the Triton repository {args.repository}")
    for built in build_repository(list(exports.values()), args.repository):
        logger.info("  %s", built)
    outputs = out / "outputs"
    outputs.mkdir(parents=True, exist_ok=True)
    _step("start the embedded Triton server")
    with EmbeddedTritonServer(
        args.repository, grpc_port=0, http_port=0, metrics_port=0, log_file=out / "triton.log"
    ) as server:
        with AigcClient(server.grpc_url) as client:
            _step("generate images over gRPC")
            for comp in registry.components(registry.IMAGE_GENERATOR):
                path = outputs / f"{comp.name}.png"
                save_image_grid(client.generate_images(comp.name, n=64, seed=args.seed), path)
                logger.info("  %s -> %s", comp.name, path)
            _step(f"stream a GPT-2 completion of {args.prompt!r} over gRPC")
            sys.stdout.write(args.prompt)
            for delta in client.generate_text(args.prompt, max_tokens=48, stream=True):
                sys.stdout.write(delta)
                sys.stdout.flush()
            sys.stdout.write("\n")
    results = None
    if not args.no_bench:
        _step("short benchmark: the demo's models served vs PyTorch eager (the full one: make bench)")
        from benchmarks.api import run_benchmark

        results = run_benchmark(short_bench(out, list(exports.values())))
    logger.info("\ndemo finished in %.0f s", time.perf_counter() - t0)
    logger.info("  checkpoints  %s", out / "checkpoints")
    logger.info("  exports      %s (export_report.json in each)", out / "exports")
    logger.info("  repository   %s", args.repository.absolute())
    logger.info("  images       %s", outputs)
    if not args.no_bench:
        logger.info("  benchmark    %s", out / "bench")
    if results is not None:
        logger.info("  headline     %s", headline(results))
    return 0


def short_bench(out: Path, exports: list[Path]):
    """The demo's benchmark: its own exports served (GPT-2 too, at its tiny size), one and
    four streams against PyTorch eager, images at one client; no long, mixed or many-users
    workloads, no peers, no offline probes."""
    from benchmarks.api import BenchOptions

    return BenchOptions(
        out=out / "bench",
        cache=out / "bench-cache",
        exports=tuple(exports),
        quick=True,
        baselines=("eager",),
        peers=("none",),
        concurrency=(1, 4),
        long_prompt_tokens=0,
        many_users=0,
        engine_probe=False,
        peer_rounds=1,
        scaling_rounds=1,
        image_requests=50,
        throughput_seconds=0.5,
        genai_perf="off",
    )


def headline(results: dict) -> str:
    """One line of the run's figures: GPT-2's served tokens/s and its ratio to eager, DCGAN's
    served latency."""
    parts = []
    g = results.get("gpt2") or {}
    c1 = (g.get("served") or {}).get("1")
    if c1:
        parts.append(f"gpt2 {c1['per_stream_tokens_per_s']:.0f} tok/s at 1 stream")
    ratio = results.get("ratios", {}).get("gpt2_tokens_per_s_vs_eager")
    if ratio:
        parts.append(f"{ratio:.1f}x PyTorch eager")
    for model, r in (results.get("images") or {}).items():
        parts.append(f"{model} {r['served_ms']['p50']:.2f} ms p50 served")
    return ", ".join(parts) or "no figures"


def _step(text: str) -> None:
    logger.info("\n==> %s", text)
