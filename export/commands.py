"""`aigc export`: argument parsing mapped onto `export.api.export_model`."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from aigc import registry
from export.spec import VARIANTS

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", choices=registry.names(), help="model kind of the checkpoint")
    parser.add_argument("--checkpoint", type=Path, required=True, help="checkpoint folder from `aigc train`")
    parser.add_argument(
        "--out", type=Path, required=True, help="export folder to write (replaced atomically)"
    )
    parser.add_argument(
        "--variants",
        default=None,
        help=f"comma-separated subset of {','.join(VARIANTS)} (default: every variant that applies)",
    )
    parser.add_argument(
        "--seed", type=int, default=None, help="seed of the validation inputs (default: fresh)"
    )
    parser.add_argument(
        "--int4-block-size", type=int, default=64, help="GPT-2 int4: weights per scale (default 64)"
    )
    parser.add_argument(
        "--int4-accuracy-level",
        type=int,
        default=4,
        help="GPT-2 int4: MatMulNBits compute type, 4 = int8 (default)",
    )
    parser.add_argument(
        "--int8-kv-cache",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="GPT-2 int8/int4 on ONNX Runtime: also make, gate and time each graph with an int8 KV cache "
        "(<variant>/gpt2-kv-i8.onnx; `aigc build` serves it where it passed and won; default on)",
    )


def run(args: argparse.Namespace) -> int:
    from export.api import export_model
    from export.quantize import QuantOptions

    quant = QuantOptions(
        int4_block_size=args.int4_block_size,
        int4_accuracy_level=args.int4_accuracy_level,
        int8_kv_cache=args.int8_kv_cache,
    )
    report = export_model(
        args.model, args.checkpoint, args.out, variants=args.variants, seed=args.seed, quant=quant
    )
    for name, v in report["variants"].items():
        status = {True: "passed", False: f"FAILED gate: {v['reason']}", None: v["reason"]}[v["passed"]]
        logger.info("%-5s %-7s %8.1f MB  %s", name, v["target"], v["size_bytes"] / 1e6, status)
    logger.info("export written to %s", args.out)
    return 0
