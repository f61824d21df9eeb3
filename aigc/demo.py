"""`aigc demo`: the whole pipeline end to end on the embedded server.

Train tiny DCGAN, VAE and GPT-2 checkpoints, export every variant, build the Triton model
repository, start the embedded Triton server, generate images and stream text through
gRPC, benchmark, stop the server. Every artefact lands under `--out`.
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
    parser.add_argument("--no-bench", action="store_true", help="skip the quick benchmark at the end")


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
    if not args.no_bench:
        _step("quick benchmark: GPT-2 124M architecture, DCGAN and VAE decoder vs PyTorch eager and Optimum")
        from benchmarks.api import BenchOptions, run_benchmark

        # The demo's own image exports are served as they are; GPT-2 is the 124M architecture.
        run_benchmark(
            BenchOptions(
                out=out / "bench",
                cache=out / "bench-cache",
                exports=tuple(
                    exports[k.name] for k in registry.KINDS.values() if registry.TEXT_GENERATOR not in k.roles
                ),
                quick=True,
            )
        )
    logger.info("\ndemo finished in %.0f s", time.perf_counter() - t0)
    logger.info("  checkpoints  %s", out / "checkpoints")
    logger.info("  exports      %s (export_report.json in each)", out / "exports")
    logger.info("  repository   %s", args.repository.absolute())
    logger.info("  images       %s", outputs)
    if not args.no_bench:
        logger.info("  benchmark    %s", out / "bench")
    return 0


def _step(text: str) -> None:
    logger.info("\n==> %s", text)
