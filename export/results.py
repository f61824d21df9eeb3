"""`aigc results`: the README's table of variants (size, fidelity, latency) from export reports."""

from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path

from aigc import registry
from aigc.errors import ConfigError
from export.api import read_report

logger = logging.getLogger(__name__)

START, END = "<!-- results:start -->", "<!-- results:end -->"


def _fidelity(fid: dict) -> str:
    parts = []
    for comp, f in fid.items():
        bits = []
        if "perplexity_increase" in f:
            bits.append(f"ppl {f['perplexity']:.2f} ({100 * f['perplexity_increase']:+.2f}% vs fp32)")
            bits.append(f"top-1 {100 * f['top1_agreement']:.1f}%, greedy {100 * f['greedy_agreement']:.0f}%")
        elif "perplexity" in f:
            bits.append(f"ppl {f['perplexity']:.2f}; max diff vs PyTorch {f['max_abs_diff']:.1e}")
        elif "psnr_db" in f:
            bits.append(f"PSNR {f['psnr_db']:.1f} dB")
        elif "decoded_psnr_db" in f:
            bits.append(f"decoded PSNR {f['decoded_psnr_db']:.1f} dB")
        elif "max_abs_diff" in f:
            bits.append(f"max diff vs PyTorch {f['max_abs_diff']:.2g}")
        if bits:
            parts.append(f"{comp}: " + ", ".join(bits))
    return "; ".join(parts) or "-"


def render_table(export_dirs: list[Path]) -> str:
    rows = [
        "| model | variant | target | size MB | fidelity | latency ms (CPU, batch 1) | gate |",
        "|---|---|---|---:|---|---|---|",
    ]
    for d in export_dirs:
        report = read_report(d)
        for name, v in report["variants"].items():
            lat = ", ".join(f"{c} {ms:.2f}" for c, ms in v.get("latency_ms", {}).items()) or "-"
            gate = {True: "pass", False: f"**fail**: {v.get('reason')}", None: "not run on CPU"}[v["passed"]]
            rows.append(
                f"| {report['model']} | {name} | {v['target']} | {v['size_bytes'] / 1e6:.2f} | "
                f"{_fidelity(v.get('fidelity', {}))} | {lat} | {gate} |"
            )
    return "\n".join(rows + [""] + [provenance_line(d, read_report(d)) for d in export_dirs])


def provenance_line(folder: Path, report: dict) -> str:
    """Where one export's rows come from: when, at which commit, on which machine (the
    latencies and the int4/u8 choices are that machine's)."""
    return (
        f"- `{Path(folder).name}` ({report['model']}): exported {report.get('created', 'at an unrecorded time')} "
        f"at commit {report.get('commit', 'not recorded')} on {report.get('machine', 'an unrecorded machine')}"
    )


def replace_between_markers(text: str, start: str, end: str, body: str) -> str:
    """`text` with what lies between the first `start` ... `end` markers replaced by `body`
    (the README tables of `aigc results` and `aigc bench`)."""
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise ConfigError(f"markers {start} ... {end} not found in the README")
    return pattern.sub(lambda _m: f"{start}\n{body}\n{end}", text, count=1)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--exports",
        type=Path,
        nargs="+",
        default=[Path("runs/demo/exports") / m for m in registry.names()],
        help="export folders to tabulate (default: the demo's)",
    )
    parser.add_argument(
        "--write-readme",
        type=Path,
        nargs="?",
        const=Path("docs/EXPORT.md"),
        default=None,
        metavar="DOC",
        help="replace the table between the results markers of this document (default docs/EXPORT.md)",
    )


def run(args: argparse.Namespace) -> int:
    table = render_table(list(args.exports))
    if args.write_readme:
        readme = args.write_readme
        readme.write_text(replace_between_markers(readme.read_text(), START, END, table))
        logger.info("results table written to %s", readme)
    else:
        logger.info("%s", table)
    return 0
