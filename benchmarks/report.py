"""Benchmark output: environment, ratios, the Markdown table, plots and the CI gate."""

from __future__ import annotations

import json
import logging
import os
import platform
from importlib import metadata
from pathlib import Path

from aigc.errors import BenchmarkError

logger = logging.getLogger(__name__)

THRESHOLDS = Path(__file__).parent / "thresholds.json"
PACKAGES = (
    "torch",
    "onnxruntime",
    "onnxruntime-gpu",
    "transformers",
    "optimum-onnx",
    "tritonclient",
    "nvidia-pytriton",
)


def environment(threads: int) -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for p in PACKAGES:
        try:
            versions[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            continue
    try:
        import onnxruntime as ort

        gpu = "CUDAExecutionProvider" in ort.get_available_providers()
    except ImportError:
        gpu = False
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "threads": threads,
        "gpu": gpu,
        "python": platform.python_version(),
        "packages": versions,
    }


def ratios(results: dict) -> dict:
    """Served figures over the baselines measured in the same run."""
    out = {}
    g = results.get("gpt2")
    if g:
        c1 = g["served"].get("1")
        if c1:
            for base in ("eager", "optimum"):
                if base in g:
                    out[f"gpt2_tokens_per_s_vs_{base}"] = round(
                        c1["per_stream_tokens_per_s"] / g[base]["tokens_per_s"], 3
                    )
                    out[f"gpt2_ttft_speedup_vs_{base}"] = round(
                        g[base]["ttft_ms"]["p50"] / c1["ttft_ms"]["p50"], 3
                    )
            highest = max(g["served"], key=int)
            if highest != "1":
                out[f"gpt2_aggregate_c{highest}_vs_c1"] = round(
                    g["served"][highest]["aggregate_tokens_per_s"] / c1["aggregate_tokens_per_s"], 3
                )
            out["gpt2_ttft_ms_p50"] = c1["ttft_ms"]["p50"]
    for model, r in results.get("images", {}).items():
        out[f"{model}_served_minus_inprocess_p50_ms"] = round(
            r["served_ms"]["p50"] - r["onnxruntime_ms"]["p50"], 3
        )
        if "eager_ms" in r:
            out[f"{model}_served_speedup_vs_eager_p50"] = round(
                r["eager_ms"]["p50"] / r["served_ms"]["p50"], 3
            )
    return out


def check_gate(measured: dict, thresholds: dict) -> list[str]:
    """Every ratio outside its committed bound, as a message; empty when all hold."""
    failures = []
    for name, bound in thresholds.items():
        if name.startswith("_"):
            continue
        if name not in measured:
            failures.append(f"{name}: not measured in this run")
            continue
        value = measured[name]
        if "min" in bound and value < bound["min"]:
            failures.append(f"{name} = {value} is below the threshold {bound['min']}")
        if "max" in bound and value > bound["max"]:
            failures.append(f"{name} = {value} is above the threshold {bound['max']}")
    return failures


def load_thresholds(path: Path | None = None) -> dict:
    path = Path(path or THRESHOLDS)
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BenchmarkError(f"--gate {path}: unreadable thresholds ({exc})") from exc


def gate(results: dict, thresholds: dict) -> None:
    failures = check_gate(results["ratios"], thresholds)
    if failures:
        raise BenchmarkError("benchmark gate failed:\n  " + "\n  ".join(failures))
    logger.info(
        "benchmark gate passed (%d thresholds)", len([k for k in thresholds if not k.startswith("_")])
    )


def _f(v, digits=1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def markdown(results: dict) -> str:
    env = results["env"]
    lines = [
        f"Machine: {env['cpu']}, {env['cores']} cores, {env['threads']} threads; GPU: {'yes' if env['gpu'] else 'no'}.",
        "",
    ]
    g = results.get("gpt2")
    if g:
        cfg = results["config"]
        lines += [
            f"**GPT-2** ({g['model']}, variant `{g['variant']}`): {cfg['prompt_tokens']}-token prompt, "
            f"{cfg['new_tokens']} new tokens, greedy, EOS ignored.",
            "",
            "| path | concurrency | tokens/s per stream | tokens/s aggregate | TTFT p50 ms | ITL p50 / p90 / p99 ms |",
            "|---|---:|---:|---:|---:|---|",
        ]
        for c, r in sorted(g["served"].items(), key=lambda kv: int(kv[0])):
            itl = r["itl_ms"]
            lines.append(
                f"| served (Triton gRPC stream) | {c} | {_f(r['per_stream_tokens_per_s'])} | "
                f"{_f(r['aggregate_tokens_per_s'])} | {_f(r['ttft_ms']['p50'])} | "
                f"{_f(itl['p50'], 2)} / {_f(itl['p90'], 2)} / {_f(itl['p99'], 2)} |"
            )
        for base, label in (
            ("eager", "PyTorch eager `generate`"),
            ("optimum", "Optimum `ORTModelForCausalLM`"),
        ):
            if base in g:
                b = g[base]
                lines.append(
                    f"| {label} | 1 | {_f(b['tokens_per_s'])} | {_f(b['tokens_per_s'])} | {_f(b['ttft_ms']['p50'])} | "
                    f"{_f(b['itl_ms']['p50'], 2)} |"
                )
        lines.append("")
    imgs = results.get("images", {})
    if imgs:
        lines += [
            "| image model | path | p50 ms | p90 ms | p99 ms |",
            "|---|---|---:|---:|---:|",
        ]
        for model, r in imgs.items():
            for key, label in (
                ("served_ms", "served (gRPC, batch 1)"),
                ("onnxruntime_ms", "ONNX Runtime in-process"),
                ("eager_ms", "PyTorch eager forward"),
            ):
                if key in r:
                    p = r[key]
                    lines.append(
                        f"| {model} | {label} | {_f(p['p50'], 3)} | {_f(p['p90'], 3)} | {_f(p['p99'], 3)} |"
                    )
        lines.append("")
        for model, r in imgs.items():
            conc = ", ".join(f"c={c}: {v}" for c, v in r.get("throughput_vs_concurrency", {}).items())
            batch = ", ".join(f"b={b}: {v}" for b, v in r.get("throughput_vs_batch", {}).items())
            lines.append(
                f"{model} images/s — by concurrency (batch 1): {conc}; by batch (1 client): {batch}."
            )
        lines.append("")
    lines += ["| ratio (measured side by side in this run) | value |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in results["ratios"].items()]
    return "\n".join(lines)


def plots(results: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    g = results.get("gpt2")
    if g:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
        conc = sorted(g["served"], key=int)
        ax1.plot(
            [int(c) for c in conc],
            [g["served"][c]["aggregate_tokens_per_s"] for c in conc],
            "o-",
            label="served aggregate",
        )
        ax1.plot(
            [int(c) for c in conc],
            [g["served"][c]["per_stream_tokens_per_s"] for c in conc],
            "s--",
            label="served per stream",
        )
        for base in ("eager", "optimum"):
            if base in g:
                ax1.axhline(
                    g[base]["tokens_per_s"],
                    linestyle=":",
                    color="grey" if base == "eager" else "tab:red",
                    label=f"{base} (concurrency 1)",
                )
        ax1.set(xlabel="concurrent streams", ylabel="tokens/s", title="GPT-2 tokens/s vs concurrency")
        ax1.legend()
        c1 = g["served"].get("1") or g["served"][conc[0]]
        names, p50, p90, p99 = [], [], [], []
        for label, d in [("served TTFT", c1["ttft_ms"]), ("served ITL", c1["itl_ms"])] + [
            (f"{b} TTFT", g[b]["ttft_ms"]) for b in ("eager", "optimum") if b in g
        ]:
            names.append(label)
            p50.append(d["p50"] or 0)
            p90.append(d.get("p90") or 0)
            p99.append(d.get("p99") or 0)
        x = range(len(names))
        ax2.bar([i - 0.25 for i in x], p50, 0.25, label="p50")
        ax2.bar(list(x), p90, 0.25, label="p90")
        ax2.bar([i + 0.25 for i in x], p99, 0.25, label="p99")
        ax2.set_xticks(list(x), names, rotation=20)
        ax2.set(ylabel="ms", title="GPT-2 latency percentiles (concurrency 1)")
        ax2.legend()
        fig.tight_layout()
        written.append(out / "gpt2.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    imgs = results.get("images", {})
    if imgs:
        fig, ax = plt.subplots(figsize=(6, 4))
        for model, r in imgs.items():
            t = r.get("throughput_vs_concurrency", {})
            ax.plot([int(c) for c in t], list(t.values()), "o-", label=model)
        ax.set(xlabel="concurrent clients (batch 1)", ylabel="images/s", title="Image models through Triton")
        ax.legend()
        fig.tight_layout()
        written.append(out / "images.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    return written


def write(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(markdown(results) + "\n")
    for p in plots(results, out):
        logger.info("plot: %s", p)


def publish_plots(out: Path, root: Path) -> str:
    """Copy this run's plots to docs/images (committed with the README); the Markdown to show them."""
    import shutil

    images = root / "docs" / "images"
    images.mkdir(parents=True, exist_ok=True)
    lines = []
    for name, title in (
        ("gpt2.png", "GPT-2 tokens/s and latency"),
        ("images.png", "Image models through Triton"),
    ):
        if (out / name).is_file():
            shutil.copyfile(out / name, images / f"bench-{name}")
            lines.append(f"![{title}](docs/images/bench-{name})")
    return "\n".join(lines) + "\n"
