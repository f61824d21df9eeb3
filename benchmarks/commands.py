"""`aigc bench`: argument parsing mapped onto `benchmarks.api.run_benchmark`."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _names(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help="gRPC address of a running server (default: start the embedded one)")
    parser.add_argument(
        "--gpt2", type=Path, help="GPT-2 checkpoint (default: 124M architecture, random weights)"
    )
    parser.add_argument(
        "--gpt2-variant", default="auto", help="variant to serve: auto (fastest passing) or a name"
    )
    parser.add_argument("--dcgan", type=Path, help="DCGAN checkpoint (default: a tiny one trained here)")
    parser.add_argument(
        "--models", type=_names, default=("gpt2", "dcgan"), help="comma-separated: gpt2,dcgan"
    )
    parser.add_argument(
        "--baselines", type=_names, default=("eager", "optimum"), help="comma-separated: eager,optimum"
    )
    parser.add_argument("--prompt-tokens", type=int, default=16, help="prompt length in tokens (default 16)")
    parser.add_argument(
        "--new-tokens", type=int, default=64, help="new tokens per request, EOS ignored (default 64)"
    )
    parser.add_argument(
        "--concurrency", type=_ints, default=(1, 2, 4, 8), help="concurrent streams (default 1,2,4,8)"
    )
    parser.add_argument(
        "--threads", type=int, default=2, help="threads of every path, served and baselines (default 2)"
    )
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed repetitions per measurement (default 5)"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("runs/bench"), help="results folder (default runs/bench)"
    )
    parser.add_argument(
        "--cache", type=Path, default=Path("runs/bench-cache"), help="models prepared for the benchmark"
    )
    parser.add_argument(
        "--quick", action="store_true", help="CI mode: concurrency 1 and 4, fewer repetitions"
    )
    parser.add_argument(
        "--gate",
        nargs="?",
        const="default",
        default=None,
        metavar="THRESHOLDS",
        help="fail when a ratio falls below benchmarks/thresholds.json (or the file given)",
    )
    parser.add_argument(
        "--write-readme",
        type=Path,
        nargs="?",
        const=Path("README.md"),
        default=None,
        help="replace the README's benchmark section with this run's table",
    )


def run(args: argparse.Namespace) -> int:
    from benchmarks import report
    from benchmarks.api import BenchOptions, run_benchmark

    opts = BenchOptions(
        out=args.out,
        cache=args.cache,
        url=args.url,
        gpt2=args.gpt2,
        gpt2_variant=args.gpt2_variant,
        dcgan=args.dcgan,
        prompt_tokens=args.prompt_tokens,
        new_tokens=args.new_tokens,
        concurrency=args.concurrency,
        threads=args.threads,
        repeats=args.repeats,
        quick=args.quick,
        baselines=args.baselines,
        models=args.models,
    )
    results = run_benchmark(opts)
    if args.write_readme:
        from export.results import replace_between_markers

        body = report.markdown(results) + "\n\n" + report.publish_plots(args.out, args.write_readme.parent)
        text = replace_between_markers(
            args.write_readme.read_text(), "<!-- bench:start -->", "<!-- bench:end -->", body
        )
        args.write_readme.write_text(text)
        logger.info("benchmark table written to %s", args.write_readme)
    if args.gate is not None:
        report.gate(results, report.load_thresholds(None if args.gate == "default" else Path(args.gate)))
    return 0
