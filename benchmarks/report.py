"""Benchmark output: environment, ratios, the Markdown table, plots, the README section and the CI gate."""

from __future__ import annotations

import json
import logging
import os
import platform
import re
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

from aigc.errors import BenchmarkError, ConfigError

logger = logging.getLogger(__name__)

THRESHOLDS = Path(__file__).parent / "thresholds.json"
README_START, README_END = "<!-- bench:start -->", "<!-- bench:end -->"
PACKAGES = (
    "torch",
    "onnxruntime",
    "onnxruntime-gpu",
    "transformers",
    "optimum",
    "optimum-onnx",
    "tritonclient",
    "nvidia-pytriton",
    "numpy",
)
BASELINE_LABELS = {"eager": "PyTorch eager `generate`", "optimum": "Optimum `ORTModelForCausalLM`"}


# -- environment ---------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except (OSError, ValueError):
        pass
    return None


def _gpus() -> list[str]:
    """GPU names from nvidia-smi where it is installed (empty list otherwise)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        res = subprocess.run(
            [smi, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in res.stdout.splitlines() if line.strip()] if res.returncode == 0 else []


def environment(threads: int) -> dict:
    versions = {}
    for p in PACKAGES:
        try:
            versions[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            continue
    try:
        import onnxruntime as ort

        providers = ort.get_available_providers()
    except ImportError:
        providers = []
    gpus = _gpus()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "memory_gib": _memory_gib(),
        "threads": threads,
        "gpu": bool(gpus) or "CUDAExecutionProvider" in providers,
        "gpus": gpus,
        "onnxruntime_providers": providers,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
    }


# -- ratios and the gate -------------------------------------------------------------------


def _div(a, b) -> float | None:
    return None if a is None or not b else round(a / b, 3)


def ratios(results: dict) -> dict:
    """Served figures over the baselines measured in the same run (and the server hop in ms).

    `*_vs_*` and `*_speedup_*` are ratios (> 1: the served model is better);
    `*_minus_*_ms` are differences in milliseconds.
    """
    out: dict[str, float] = {}
    g = results.get("gpt2")
    if g and g.get("served"):
        c1 = g["served"].get("1")
        top = max(g["served"], key=int)
        for base in ("eager", "optimum"):
            b = g.get(base)
            if not b:
                continue
            if c1:
                out[f"gpt2_tokens_per_s_vs_{base}"] = _div(c1["per_stream_tokens_per_s"], b["tokens_per_s"])
                out[f"gpt2_ttft_speedup_vs_{base}"] = _div(b["ttft_ms"]["p50"], c1["ttft_ms"]["p50"])
                out[f"gpt2_itl_speedup_vs_{base}"] = _div(b["itl_ms"]["p50"], c1["itl_ms"]["p50"])
            if top != "1":
                out[f"gpt2_aggregate_c{top}_vs_{base}"] = _div(
                    g["served"][top]["aggregate_tokens_per_s"], b["tokens_per_s"]
                )
        for c in sorted(g["served"], key=int):
            if c1 and c != "1":
                out[f"gpt2_aggregate_c{c}_vs_c1"] = _div(
                    g["served"][c]["aggregate_tokens_per_s"], c1["aggregate_tokens_per_s"]
                )
        steps = (g.get("decode_profile") or {}).get("step_ms", {})
        for c in sorted(g["served"], key=int):
            if c != "1" and c in steps and "1" in steps:
                # Offline step times (same file, same threads): c streams per step over one.
                out[f"gpt2_step_ceiling_c{c}_vs_c1"] = _div(int(c) * steps["1"], steps[c])
    for model, r in results.get("images", {}).items():
        served = r["served_ms"]["p50"]
        if "onnxruntime_ms" in r:
            out[f"{model}_served_minus_inprocess_p50_ms"] = round(served - r["onnxruntime_ms"]["p50"], 3)
        if "eager_ms" in r:
            out[f"{model}_served_speedup_vs_eager_p50"] = _div(r["eager_ms"]["p50"], served)
        c1 = r.get("throughput_vs_concurrency", {}).get("1")
        if c1 and c1["latency_ms"].get("mean"):
            # One client back to back: about 0.9 when latency is steady; stalls pull the mean up.
            out[f"{model}_latency_p50_over_mean_c1"] = _div(c1["latency_ms"]["p50"], c1["latency_ms"]["mean"])
        ort_b = r.get("onnxruntime_images_per_s_vs_batch") or {}
        if ort_b:
            b = max(ort_b, key=int)
            served_b = r.get("throughput_vs_batch", {}).get(b)
            if served_b:
                out[f"{model}_images_per_s_b{b}_vs_inprocess"] = _div(served_b["images_per_s"], ort_b[b])
    return {k: v for k, v in out.items() if v is not None}


def check_gate(measured: dict, thresholds: dict) -> list[str]:
    """Every ratio outside its committed bound, as a message; empty when all hold."""
    failures = []
    for name, bound in thresholds.items():
        if name.startswith("_"):
            continue
        if not isinstance(bound, dict):
            bound = {"min": bound}  # {"name": 1.5} is a lower bound
        value = measured.get(name)
        if value is None:
            failures.append(f"{name}: not measured in this run")
            continue
        if "min" in bound and value < bound["min"]:
            failures.append(f"{name} = {value} is below the threshold {bound['min']}")
        if "max" in bound and value > bound["max"]:
            failures.append(f"{name} = {value} is above the threshold {bound['max']}")
    return failures


def load_thresholds(path: Path | None = None) -> dict:
    path = Path(path or THRESHOLDS)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"--gate {path}: unreadable thresholds ({exc})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"--gate {path}: expected a JSON object of ratio names to bounds")
    for name, bound in data.items():
        if name.startswith("_"):
            continue
        ok = isinstance(bound, int | float) or (
            isinstance(bound, dict)
            and bound
            and set(bound) <= {"min", "max"}
            and all(isinstance(v, int | float) for v in bound.values())
        )
        if not ok:
            raise ConfigError(
                f"--gate {path}: {name}: expected a number or {{'min': x, 'max': y}}, got {bound}"
            )
    return data


def gate(results: dict, thresholds: dict) -> None:
    """Raise BenchmarkError listing every ratio outside its threshold."""
    failures = check_gate(results["ratios"], thresholds)
    if failures:
        raise BenchmarkError("benchmark gate failed:\n  " + "\n  ".join(failures))
    logger.info(
        "benchmark gate passed (%d thresholds)", len([k for k in thresholds if not k.startswith("_")])
    )


# -- Markdown ------------------------------------------------------------------------------


def _f(v, digits=1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _itl(p: dict) -> str:
    return f"{_f(p.get('p50'), 2)} / {_f(p.get('p90'), 2)} / {_f(p.get('p99'), 2)}"


def _gpt2_table(g: dict, cfg: dict) -> list[str]:
    bases = [b for b in ("eager", "optimum") if b in g]
    lines = [
        f"**GPT-2** (`{Path(g['model']).name}`, served variant `{g.get('variant') or 'as served'}`): "
        f"{cfg['prompt_tokens']}-token prompt, {cfg['new_tokens']} new tokens, greedy, EOS ignored; "
        f"{cfg['threads']} threads on every path.",
        "",
        "| path | streams | tok/s per stream | tok/s aggregate | "
        + "".join(f"aggregate × {b} | " for b in bases)
        + "TTFT p50 ms | ITL p50 / p90 / p99 ms |",
        "|---|---:|---:|---:|" + "---:|" * len(bases) + "---:|---|",
    ]
    rows = [
        ("served (Triton gRPC stream)", c, r["per_stream_tokens_per_s"], r["aggregate_tokens_per_s"], r)
        for c, r in sorted(g["served"].items(), key=lambda kv: int(kv[0]))
    ] + [(BASELINE_LABELS[b], "1", g[b]["tokens_per_s"], g[b]["tokens_per_s"], g[b]) for b in bases]
    for label, c, per, agg, r in rows:
        lines.append(
            f"| {label} | {c} | {_f(per)} | {_f(agg)} | "
            + "".join(f"{_f(_div(agg, g[b]['tokens_per_s']), 2)} | " for b in bases)
            + f"{_f(r['ttft_ms']['p50'])} | {_itl(r['itl_ms'])} |"
        )
    profile = g.get("decode_profile") or {}
    if profile.get("step_ms"):
        steps = sorted(profile["step_ms"].items(), key=lambda kv: int(kv[0]))
        prefill = ", ".join(
            f"{n}-token prefill {_f(ms)} ms" for n, ms in profile.get("prefill_ms", {}).items()
        )
        lines += [
            "",
            "Offline, the same file and threads (`aigc export`'s decode profile): decode step "
            + " / ".join(f"{_f(ms, 2)}" for _, ms in steps)
            + " ms at batch "
            + " / ".join(b for b, _ in steps)
            + (f"; {prefill}" if prefill else "")
            + ". Batching can give at most batch × step(1) / step(batch) times one stream's tokens/s.",
        ]
    return lines


def _images_table(imgs: dict) -> list[str]:
    lines = [
        "| image model | path (batch 1) | variant | p50 ms | p90 ms | p99 ms |",
        "|---|---|---|---:|---:|---:|",
    ]
    for model, r in imgs.items():
        for key, label, variant in (
            ("served_ms", "served (Triton gRPC)", r.get("variant") or "as served"),
            ("onnxruntime_ms", "ONNX Runtime in-process", r.get("inprocess_variant")),
            ("eager_ms", "PyTorch eager forward", "-"),
        ):
            if key in r:
                p = r[key]
                lines.append(
                    f"| {model} | {label} | {variant} | {_f(p['p50'], 3)} | {_f(p['p90'], 3)} | {_f(p['p99'], 3)} |"
                )
    lines.append("")
    for model, r in imgs.items():
        conc = ", ".join(
            f"{c}: {v['images_per_s']}" for c, v in r.get("throughput_vs_concurrency", {}).items()
        )
        batch = ", ".join(f"{b}: {v['images_per_s']}" for b, v in r.get("throughput_vs_batch", {}).items())
        ort_b = ", ".join(f"{b}: {v}" for b, v in r.get("onnxruntime_images_per_s_vs_batch", {}).items())
        lines.append(
            f"{model} images/s served — by concurrent clients (batch 1) {conc}; by batch (1 client) {batch}"
            + (f"; in-process ONNX Runtime by batch {ort_b}." if ort_b else ".")
        )
    return lines


def markdown(results: dict) -> str:
    env, cfg = results["env"], results["config"]
    gpu = ", ".join(env.get("gpus") or []) or ("yes" if env.get("gpu") else "none")
    lines = [
        f"Machine: {env['cpu']}, {env['cores']} cores; GPU: {gpu}. "
        f"{'Quick mode' if cfg.get('quick') else 'Full run'}, {cfg.get('repeats')} timed repetitions after a warm-up.",
        "",
    ]
    if results.get("gpt2"):
        lines += _gpt2_table(results["gpt2"], cfg) + [""]
    if results.get("images"):
        lines += _images_table(results["images"]) + [""]
    lines += ["| ratio (measured side by side in this run) | value |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in results["ratios"].items()]
    return "\n".join(lines)


# -- plots ---------------------------------------------------------------------------------


def plots(results: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    g = results.get("gpt2")
    if g and g.get("served"):
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
        conc = sorted(g["served"], key=int)
        xs = [int(c) for c in conc]
        ax1.plot(xs, [g["served"][c]["aggregate_tokens_per_s"] for c in conc], "o-", label="served aggregate")
        ax1.plot(
            xs, [g["served"][c]["per_stream_tokens_per_s"] for c in conc], "s--", label="served per stream"
        )
        for base, color in (("eager", "grey"), ("optimum", "tab:red")):
            if base in g:
                ax1.axhline(g[base]["tokens_per_s"], linestyle=":", color=color, label=f"{base} (1 stream)")
        ax1.set(xlabel="concurrent streams", ylabel="tokens/s", title="GPT-2 tokens/s vs concurrency")
        ax1.set_xticks(xs)
        ax1.set_ylim(bottom=0)
        ax1.legend()
        c1 = g["served"].get("1") or g["served"][conc[0]]
        bars = [("served TTFT", c1["ttft_ms"]), ("served ITL", c1["itl_ms"])]
        for b in ("eager", "optimum"):
            if b in g:
                bars += [(f"{b} TTFT", g[b]["ttft_ms"]), (f"{b} ITL", g[b]["itl_ms"])]
        x = list(range(len(bars)))
        for offset, key in ((-0.25, "p50"), (0.0, "p90"), (0.25, "p99")):
            ax2.bar([i + offset for i in x], [d.get(key) or 0 for _, d in bars], 0.25, label=key)
        ax2.set_xticks(x, [n for n, _ in bars], rotation=20)
        ax2.set(ylabel="ms", title=f"GPT-2 latency percentiles ({conc[0]} stream)")
        ax2.legend()
        fig.tight_layout()
        written.append(out / "gpt2.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    imgs = results.get("images", {})
    if imgs:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
        for model, r in imgs.items():
            t = r.get("throughput_vs_concurrency", {})
            ax1.plot([int(c) for c in t], [v["images_per_s"] for v in t.values()], "o-", label=model)
            t = r.get("throughput_vs_batch", {})
            ax2.plot(
                [int(b) for b in t], [v["images_per_s"] for v in t.values()], "o-", label=f"{model} served"
            )
            t = r.get("onnxruntime_images_per_s_vs_batch", {})
            if t:
                ax2.plot([int(b) for b in t], list(t.values()), "s--", label=f"{model} in-process ORT")
        ax1.set(xlabel="concurrent clients (batch 1)", ylabel="images/s", title="Image models: concurrency")
        ax2.set(xlabel="batch size (1 client)", ylabel="images/s", title="Image models: batch size")
        ax2.set_xscale("log", base=2)
        for ax, key in ((ax1, "throughput_vs_concurrency"), (ax2, "throughput_vs_batch")):
            ticks = sorted({int(k) for r in imgs.values() for k in r.get(key, {})})
            ax.set_xticks(ticks, [str(t) for t in ticks])
            ax.set_ylim(bottom=0)
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


# -- README --------------------------------------------------------------------------------


def check_readme(readme: Path) -> None:
    """Fail before a run when the README cannot take the table."""
    try:
        text = Path(readme).read_text()
    except OSError as exc:
        raise ConfigError(f"--write-readme {readme}: unreadable ({exc.strerror or exc})") from exc
    if README_START not in text or README_END not in text.split(README_START, 1)[-1]:
        raise ConfigError(f"--write-readme {readme}: markers {README_START} ... {README_END} not found")


def readme_section(results: dict, plot_links: list[str]) -> str:
    """The README's benchmark section: the Markdown table and the plots."""
    return markdown(results) + ("\n\n" + "\n".join(plot_links) if plot_links else "") + "\n"


def write_readme(results: dict, out: Path, readme: Path) -> None:
    """Replace the text between the bench markers with this run's table; plots to docs/images."""
    check_readme(readme)
    readme = Path(readme)
    images = readme.parent / "docs" / "images"
    links = []
    for name, title in (
        ("gpt2.png", "GPT-2 tokens/s and latency"),
        ("images.png", "Image models through Triton"),
    ):
        if (Path(out) / name).is_file():
            images.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(Path(out) / name, images / f"bench-{name}")
            links.append(f"![{title}](docs/images/bench-{name})")
    pattern = re.compile(re.escape(README_START) + r".*?" + re.escape(README_END), re.S)
    body = readme_section(results, links)
    readme.write_text(
        pattern.sub(lambda _m: f"{README_START}\n{body}{README_END}", readme.read_text(), count=1)
    )
    logger.info("benchmark table written to %s", readme)
