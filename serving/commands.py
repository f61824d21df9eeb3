"""`aigc build`, `aigc serve`, `aigc generate`: argument parsing mapped onto the serving API."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from aigc import registry
from aigc.errors import ConfigError
from engine import runtimes
from engine.config import EngineConfig
from serving.flavours import FLAVOURS, PYTHON_FLAVOUR

logger = logging.getLogger(__name__)


def add_build_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--exports", type=Path, nargs="+", required=True, help="export folders from `aigc export`"
    )
    parser.add_argument(
        "--repository", type=Path, default=Path("model_repository"), help="Triton model repository"
    )
    parser.add_argument(
        "--flavour",
        choices=FLAVOURS,
        default=PYTHON_FLAVOUR,
        help="python: Python-backend models (runs everywhere); onnxruntime: Triton's native backend",
    )
    parser.add_argument(
        "--variant", default="auto", help="auto (fastest variant that passed its gate) or a name"
    )
    parser.add_argument(
        "--runtime",
        choices=(runtimes.AUTO, *runtimes.names()),
        default=runtimes.AUTO,
        help="GPT-2 on the CPU: which runtime runs the engine; auto compares the variants of both "
        "by the expected request latency measured at export (default auto)",
    )
    parser.add_argument(
        "--target",
        choices=("cpu", "gpu"),
        default="cpu",
        help="what `auto` optimises for; gpu also makes onnxruntime-flavour instances KIND_GPU",
    )
    parser.add_argument(
        "--accelerator",
        choices=("tensorrt", "cuda", "none"),
        default="tensorrt",
        help="onnxruntime flavour on GPUs: execution accelerator (tensorrt uses fp16)",
    )
    workload = parser.add_argument_group(
        "GPT-2 workload that --variant auto optimises for (expected request latency from the export's profile)"
    )
    workload.add_argument("--streams", type=int, default=4, help="concurrent generations (default 4)")
    workload.add_argument("--prompt-tokens", type=int, default=128, help="prompt length (default 128)")
    workload.add_argument("--new-tokens", type=int, default=128, help="generated tokens (default 128)")
    EngineConfig.add_arguments(parser.add_argument_group("GPT-2 engine (engine.config.EngineConfig)"))
    parser.add_argument("--instances", type=int, default=1, help="model instances per image model")
    parser.add_argument(
        "--max-batch-size", type=int, default=64, help="largest batch an image request may carry"
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0 = all cores)"
    )
    parser.add_argument(
        "--url", help="gRPC address of a running server: load the new versions there and check them"
    )
    _add_key_argument(parser)


def _add_key_argument(parser: argparse.ArgumentParser) -> None:
    from serving.security import TRITON_KEY_ENV

    parser.add_argument(
        "--triton-key-file",
        type=Path,
        help=f"the key of the server's control APIs (the file `aigc serve` wrote or was given; "
        f"default ${TRITON_KEY_ENV})",
    )


def run_build(args: argparse.Namespace) -> int:
    from export.latency_model import Workload
    from serving.builder import BuildOptions, build_repository

    opts = BuildOptions(
        flavour=args.flavour,
        variant=args.variant,
        runtime=args.runtime,
        target=args.target,
        instance_count=args.instances,
        max_batch_size=args.max_batch_size,
        intra_op_threads=args.threads,
        accelerator=args.accelerator,
        engine=EngineConfig.from_args(args),
        workload=Workload(prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens, streams=args.streams),
    )
    built = build_repository(args.exports, args.repository, opts)
    for b in built:
        logger.info("%s", b)
    if args.url:
        from serving.control import reload
        from serving.security import read_key

        key = read_key(args.triton_key_file)
        for b in built:
            reload(args.url, b.name, key=key)
    return 0


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--repository", type=Path, default=Path("model_repository"), help="Triton model repository"
    )
    parser.add_argument(
        "--triton-host",
        default=None,
        help="address Triton binds (default 127.0.0.1, loopback only); beyond loopback its control "
        "APIs need a key (--triton-key-file) and the embedded server is not fit for exposure "
        "(docs/SECURITY.md)",
    )
    parser.add_argument(
        "--host", default=None, help="both --triton-host and --openai-host where those are not given"
    )
    parser.add_argument("--grpc-port", type=int, default=8001, help="gRPC port (0 = any free port)")
    parser.add_argument("--http-port", type=int, default=8000, help="HTTP port (0 = any free port)")
    parser.add_argument("--metrics-port", type=int, default=8002, help="metrics port (0 = any free port)")
    parser.add_argument(
        "--log-file", type=Path, help="Triton's log (default runs/triton.log beside the repository)"
    )
    parser.add_argument(
        "--exit-timeout",
        type=int,
        default=30,
        help="seconds a stop waits for active generations to finish before cutting them (default 30)",
    )
    _add_key_argument(parser)
    parser.add_argument(
        "--openai-port",
        type=int,
        default=None,
        help="also serve an OpenAI-compatible HTTP API (/v1/models, /v1/completions, "
        "/v1/chat/completions) on this port, talking to Triton over gRPC (0 = any free port; "
        "default: off)",
    )
    from serving.openai_api.options import FrontendOptions

    FrontendOptions.add_arguments(parser.add_argument_group("OpenAI API frontend (with --openai-port)"))


def run_serve(args: argparse.Namespace) -> int:
    from serving import security
    from serving.openai_api.options import FrontendOptions
    from serving.server import EmbeddedTritonServer

    for flag in ("grpc_port", "http_port", "metrics_port", "openai_port"):
        value = getattr(args, flag, None)
        if value is not None and not 0 <= value <= 65535:
            raise ConfigError(f"--{flag.replace('_', '-')} must be in 0..65535, got {value}")
    if not 0 <= args.exit_timeout <= 3600:
        raise ConfigError(f"--exit-timeout must be in 0..3600 seconds, got {args.exit_timeout}")
    triton_host = args.triton_host or args.host or "127.0.0.1"
    openai_host = args.openai_host or args.host or "127.0.0.1"
    frontend_options = FrontendOptions.from_args(args)
    log_file = args.log_file or args.repository.absolute().parent / "runs" / "triton.log"
    key = security.serve_key(triton_host, security.read_key(args.triton_key_file), log_file.parent)
    if not security.is_loopback(triton_host):
        logger.warning("Triton binds %s: %s", triton_host, security.EMBEDDED_WARNING)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with EmbeddedTritonServer(
        args.repository,
        host=triton_host,
        grpc_port=args.grpc_port,
        http_port=args.http_port,
        metrics_port=args.metrics_port,
        log_file=log_file,
        exit_timeout_s=args.exit_timeout,
        control_key=key,
    ) as server:
        logger.info(
            "serving %s — gRPC %s, HTTP %s; Ctrl-C stops", args.repository, server.grpc_url, server.http_url
        )
        frontend = None
        if getattr(args, "openai_port", None) is not None:
            from serving.openai_api import OpenAIFrontend

            frontend = OpenAIFrontend(
                server.grpc_url,
                args.repository,
                host=openai_host,
                port=args.openai_port,
                graceful_s=args.exit_timeout,
                options=frontend_options,
                triton_key=key,
            ).start()
        try:
            while not stop.wait(0.5):
                if server.process.poll() is not None:
                    logger.error("Triton exited: %s", server.failure_reason())
                    return 1
        finally:
            if frontend is not None:  # first, so that no new request reaches a stopping Triton
                logger.info("stopping the OpenAI API")
                frontend.stop()
        logger.info("stopping Triton")
    return 0


def add_openai_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--triton-url",
        default="127.0.0.1:8001",
        help="gRPC address of the Triton server to front (default 127.0.0.1:8001)",
    )
    parser.add_argument(
        "--port", type=int, default=9000, help="port of the API (default 9000; 0 = any free port)"
    )
    parser.add_argument(
        "--repository",
        type=Path,
        default=None,
        help="the repository folder, only for model versions built before they served their own "
        "tokenizer (return_assets); default none: everything comes through Triton",
    )
    parser.add_argument(
        "--exit-timeout", type=int, default=30, help="seconds a stop waits for active requests (default 30)"
    )
    _add_key_argument(parser)
    from serving.openai_api.options import FrontendOptions

    FrontendOptions.add_arguments(parser)


def run_openai(args: argparse.Namespace) -> int:
    """The OpenAI frontend alone, in front of a Triton server that runs elsewhere (the
    container's second process, a sidecar in the pod of deploy/k8s)."""
    from serving import security
    from serving.openai_api import OpenAIFrontend
    from serving.openai_api.options import FrontendOptions

    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be in 0..65535, got {args.port}")
    if not 0 <= args.exit_timeout <= 3600:
        raise ConfigError(f"--exit-timeout must be in 0..3600 seconds, got {args.exit_timeout}")
    options = FrontendOptions.from_args(args)
    key = security.read_key(args.triton_key_file)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    frontend = OpenAIFrontend(
        args.triton_url,
        args.repository,
        host=args.openai_host or "127.0.0.1",
        port=args.port,
        graceful_s=args.exit_timeout,
        options=options,
        triton_key=key,
    ).start()
    try:
        stop.wait()
    finally:
        logger.info("stopping the OpenAI API")
        frontend.stop()
    return 0


def add_generate_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="kind", required=True, metavar="KIND")
    image = sub.add_parser("image", help="a PNG grid of generated images")
    generators = [c.name for c in registry.components(registry.IMAGE_GENERATOR)]
    image.add_argument("--model", choices=generators, default=generators[0], help="image model")
    image.add_argument("--n", type=int, default=16, help="number of images (1..4096)")
    image.add_argument("--seed", type=int, default=None, help="seed of the latents")
    image.add_argument("--out", type=Path, required=True, help="PNG file to write")
    text = sub.add_parser("text", help="stream a GPT-2 completion to stdout")
    text.add_argument("prompt", help="the prompt")
    text.add_argument("--max-tokens", type=int, default=64, help="new tokens at most")
    text.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    text.add_argument("--top-k", type=int, default=0, help="sample from the k most likely (0 = off)")
    text.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass in (0, 1]")
    text.add_argument("--seed", type=int, default=None, help="seed of the sampler")
    text.add_argument("--stop", action="append", help="stop string (repeatable)")
    text.add_argument("--no-stream", action="store_true", help="print the whole text at the end")
    for p in (image, text):
        p.add_argument("--url", default="127.0.0.1:8001", help="Triton gRPC address (default 127.0.0.1:8001)")
        p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for a response")


def run_generate(args: argparse.Namespace) -> int:
    from serving.client import AigcClient, save_image_grid

    with AigcClient(args.url, timeout_s=args.timeout) as client:
        if args.kind == "image":
            path = save_image_grid(client.generate_images(args.model, n=args.n, seed=args.seed), args.out)
            logger.info("%d images from %s -> %s", args.n, args.model, path)
            return 0
        result = client.generate_text(
            args.prompt,
            max_tokens=args.max_tokens,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            seed=args.seed,
            stop=args.stop,
            stream=not args.no_stream,
        )
        for delta in [result] if args.no_stream else result:
            sys.stdout.write(delta)
            sys.stdout.flush()
        sys.stdout.write("\n")
    return 0


def add_rollback_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", choices=[c.name for c in registry.components()], help="model to roll back")
    parser.add_argument(
        "--repository", type=Path, default=Path("model_repository"), help="Triton model repository"
    )
    parser.add_argument(
        "--url", help="gRPC address of a running server to switch too (explicit model control)"
    )
    _add_key_argument(parser)


def run_rollback(args: argparse.Namespace) -> int:
    from serving.control import rollback
    from serving.security import read_key

    version = rollback(args.repository, args.model, args.url, read_key(args.triton_key_file))
    logger.info("%s: version %d is now the newest%s", args.model, version, " and serving" if args.url else "")
    return 0
