"""`aigc bench`: argument parsing mapped onto `benchmarks.api.run_benchmark`."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from aigc import registry
from aigc.errors import ConfigError
from benchmarks.options import bench_names

logger = logging.getLogger(__name__)


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


def _names(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_argument_group("what to measure")
    src.add_argument(
        "--url", help="gRPC HOST:PORT of a running server (default: build and start the embedded one)"
    )
    src.add_argument(
        "--exports",
        type=Path,
        nargs="+",
        default=(),
        metavar="DIR",
        help="export folders to serve and compare in-process (checkpoints read from their reports)",
    )
    for kind in registry.benchmarked():  # --gpt2, --dcgan, --vae: a checkpoint of each kind
        if kind.bench.unasked:
            made = registry.hook(kind.bench.default).__doc__.split("(")[0].strip().rstrip(".")
            default = f"{made[0].lower()}{made[1:]}"
        else:
            default = "measured only when given or served"
        src.add_argument(
            f"--{kind.name}",
            f"--{kind.name}-checkpoint",
            dest=f"checkpoint_{kind.name}",
            type=Path,
            metavar="DIR",
            help=f"{kind.title} checkpoint; its {kind.bench.component} is measured (default: {default})",
        )
    src.add_argument(
        "--gpt2-variant",
        default="auto",
        help="GPT-2 variant to serve: auto (fastest passing) or a name (with --url: the one that server serves)",
    )
    src.add_argument(
        "--image-variant",
        default="auto",
        help="image model variant to serve: auto or a name (with --url: the one served)",
    )
    src.add_argument(
        "--models",
        type=_names,
        default=None,
        help=f"comma-separated subset of {','.join(bench_names())} "
        "(default: all of them, each image model where available)",
    )
    src.add_argument(
        "--baselines",
        type=_names,
        default=("eager", "optimum"),
        help="comma-separated in-process baselines: eager,optimum (default both)",
    )
    src.add_argument(
        "--peers",
        type=_names,
        default=None,
        help="comma-separated peer runtimes, each run in a process of its own on the same checkpoint: "
        "openvino_int8, "
        "openvino_int4, llamacpp_q8_0, llamacpp_q4_0, ctranslate2_int8, an engine (openvino, "
        "llamacpp, ctranslate2), all, or none (default all; with --quick openvino_int4, "
        "llamacpp_q4_0, ctranslate2_int8). A peer that is not installed is reported as skipped",
    )
    src.add_argument(
        "--genai-perf",
        default="auto",
        metavar="auto|off|PATH",
        help="also profile the served gpt2 with NVIDIA's genai-perf (both Triton LLM schemas) and put "
        "its TTFT, ITL and tokens/s beside ours: auto when genai-perf and perf_analyzer are on PATH "
        "(default), off, or the genai-perf executable (perf_analyzer beside it or on PATH)",
    )
    load = parser.add_argument_group("load")
    load.add_argument("--prompt-tokens", type=int, default=16, help="prompt length in tokens (default 16)")
    load.add_argument(
        "--new-tokens", type=int, default=64, help="new tokens per request, EOS ignored (default 64)"
    )
    load.add_argument(
        "--concurrency", type=_ints, default=(1, 2, 4, 8), help="concurrent streams (default 1,2,4,8)"
    )
    load.add_argument(
        "--long-prompt-tokens",
        type=int,
        default=512,
        help="prompt tokens of the long workload and of the mixed one's arriving prompts "
        "(default 512; 0: neither is run)",
    )
    load.add_argument(
        "--long-new-tokens", type=int, default=128, help="new tokens per long request (default 128)"
    )
    load.add_argument(
        "--long-concurrency",
        type=_ints,
        default=(1, 8),
        help="concurrent streams of long requests (default 1,8; 1 with --quick)",
    )
    load.add_argument(
        "--mixed-streams",
        type=int,
        default=4,
        help="mixed workload: short streams running while long prompts arrive (default 4; 0: not run)",
    )
    load.add_argument(
        "--many-users",
        type=int,
        default=64,
        help="many-users workload: short streams at once, one request each, with the server's "
        "resident memory (default 64; 0: not run)",
    )
    load.add_argument(
        "--engine-probe",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the engine's offline probes on the export's OpenVINO variant: mixed calls, blocks "
        "by use at 64 users, prefix caching, a shared 256-token prefix (default on)",
    )
    load.add_argument(
        "--mixed-new-tokens",
        type=int,
        default=128,
        help="mixed workload: new tokens per short request (default 128)",
    )
    load.add_argument(
        "--mixed-arrivals",
        type=int,
        default=5,
        help="mixed workload: long prompts that arrive, 4 new tokens each (default 5; 2 with --quick)",
    )
    load.add_argument(
        "--mixed-period",
        type=float,
        default=3.0,
        help="mixed workload: seconds between long prompts (default 3)",
    )
    load.add_argument(
        "--batch-sizes",
        type=_ints,
        default=(1, 8, 32),
        help="image batch sizes for throughput (default 1,8,32)",
    )
    load.add_argument(
        "--threads", type=int, default=2, help="threads of every path, served and baselines (default 2)"
    )
    load.add_argument(
        "--repeats", type=int, default=5, help="timed GPT-2 generations per path after a warm-up (default 5)"
    )
    load.add_argument(
        "--peer-rounds",
        type=int,
        default=3,
        help="rounds of the one-stream served run and the fastest peer's, in turns; the ratio is "
        "the median of the rounds' ratios, with their spread (default 3; 1: one each)",
    )
    load.add_argument(
        "--scaling-rounds",
        type=int,
        default=3,
        help="rounds of one stream and the most streams up to 8, served in turns; their gain over "
        "one stream, set against the batch step's ceiling, is the median of the rounds' gains, "
        "with their spread (default 3; 1: the concurrency runs alone)",
    )
    load.add_argument(
        "--image-requests", type=int, default=200, help="timed image requests per measurement (default 200)"
    )
    load.add_argument(
        "--throughput-seconds",
        type=float,
        default=3.0,
        help="time window of each image throughput point (default 3; 1 with --quick)",
    )
    load.add_argument(
        "--quick",
        action="store_true",
        help="CI mode: concurrency 1, 4 and 8, long requests at 1 stream, 2 mixed arrivals, "
        "batch 1 and 8, 3 repetitions, the 4-bit peers and CTranslate2's int8",
    )
    out = parser.add_argument_group("output")
    out.add_argument(
        "--out", type=Path, default=Path("runs/bench"), help="results folder (default runs/bench)"
    )
    out.add_argument(
        "--cache",
        type=Path,
        default=Path("runs/bench-cache"),
        help="models prepared for the benchmark (reused)",
    )
    out.add_argument(
        "--gate",
        nargs="?",
        const="default",
        default=None,
        metavar="THRESHOLDS",
        help="exit 2 when a ratio is outside benchmarks/thresholds.json (or the file given)",
    )
    out.add_argument(
        "--write-readme",
        type=Path,
        nargs="?",
        const=Path("docs/BENCHMARKS.md"),
        default=None,
        metavar="DOC",
        help="replace the <!-- bench:start/end --> section of this document (default docs/BENCHMARKS.md) "
        "with this run's table and plots",
    )
    out.add_argument(
        "--from-results",
        type=Path,
        default=None,
        metavar="RESULTS_JSON",
        help="measure nothing: take an earlier run's results.json (its plots beside it) for "
        "--write-readme and --gate (e.g. CI's benchmarks/results/results.json)",
    )
    out.add_argument(
        "--no-progress", action="store_true", help="no progress bar (default: shown on a terminal)"
    )


def run(args: argparse.Namespace) -> int:
    from benchmarks import gate, report
    from benchmarks.api import BenchOptions, run_benchmark

    if args.from_results is not None:
        return _from_results(args)

    opts = BenchOptions(
        out=args.out,
        cache=args.cache,
        url=args.url,
        exports=tuple(args.exports),
        checkpoints={
            k.name: getattr(args, f"checkpoint_{k.name}")
            for k in registry.benchmarked()
            if getattr(args, f"checkpoint_{k.name}") is not None
        },
        gpt2_variant=args.gpt2_variant,
        image_variant=args.image_variant,
        models=args.models,
        baselines=args.baselines,
        peers=args.peers,
        prompt_tokens=args.prompt_tokens,
        new_tokens=args.new_tokens,
        concurrency=args.concurrency,
        long_prompt_tokens=args.long_prompt_tokens,
        long_new_tokens=args.long_new_tokens,
        long_concurrency=args.long_concurrency,
        mixed_streams=args.mixed_streams,
        mixed_new_tokens=args.mixed_new_tokens,
        mixed_arrivals=args.mixed_arrivals,
        mixed_period_s=args.mixed_period,
        many_users=args.many_users,
        engine_probe=args.engine_probe,
        batch_sizes=args.batch_sizes,
        threads=args.threads,
        repeats=args.repeats,
        peer_rounds=args.peer_rounds,
        scaling_rounds=args.scaling_rounds,
        image_requests=args.image_requests,
        throughput_seconds=args.throughput_seconds,
        quick=args.quick,
        progress=not args.no_progress and sys.stderr.isatty(),
        genai_perf=args.genai_perf,
    )
    opts.validate()
    # Bad thresholds or README fail now, not after minutes of measuring.
    thresholds = None
    if args.gate is not None:
        thresholds = gate.load_thresholds(None if args.gate == "default" else Path(args.gate))
    if args.write_readme is not None:
        report.check_readme(args.write_readme)
    results = run_benchmark(opts)
    if args.write_readme is not None:
        report.write_readme(results, args.out, args.write_readme)
    if thresholds is not None:
        gate.gate(results, thresholds)
    return 0


def _from_results(args: argparse.Namespace) -> int:
    """--write-readme / --gate from an earlier run's results.json, measuring nothing."""
    import json

    from benchmarks import gate, report

    if args.write_readme is None and args.gate is None:
        raise ConfigError("--from-results: give --write-readme and/or --gate (nothing to measure)")
    try:
        results = json.loads(args.from_results.read_text())
    except OSError as exc:
        raise ConfigError(f"--from-results {args.from_results}: unreadable ({exc.strerror or exc})") from exc
    except ValueError as exc:
        raise ConfigError(f"--from-results {args.from_results}: not JSON ({exc})") from exc
    if not isinstance(results, dict) or "env" not in results or "config" not in results:
        raise ConfigError(f"--from-results {args.from_results}: not an `aigc bench` results.json")
    thresholds = gate.load_thresholds(None if args.gate in (None, "default") else Path(args.gate))
    if args.write_readme is not None:
        report.check_readme(args.write_readme)
        report.write_readme(results, args.from_results.parent, args.write_readme)
    if args.gate is not None:
        gate.gate(results, thresholds)
    return 0
