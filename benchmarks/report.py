"""Benchmark output: environment, ratios, the Markdown table, plots, the README section and the CI gate."""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

from aigc.errors import BenchmarkError, ConfigError
from benchmarks.peers import PEERS
from benchmarks.peers import best as best_peer
from benchmarks.peers import measured as measured_peers

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


def _profiled_step(profile: dict | None, batch: int, cached: float) -> float | None:
    """The offline decode step at `batch` rows (a measured batch size only) and `cached`
    tokens (linear between the measured cache lengths)."""
    from export.latency_model import step_ms_at

    steps = (profile or {}).get("step_ms") or {}
    if not isinstance(steps.get(str(batch)), dict) or not isinstance(steps.get("1"), dict):
        return None  # not measured, or an export before the per-cache-length profile
    return step_ms_at(profile, batch, cached)


def read_floors(profile: dict, weight_bytes: int, kv_bytes_per_token: int, gb_per_s: dict) -> dict:
    """Each profiled step against the time its reads take at each bandwidth (GB/s by label).

    A step at `batch` rows of `past` cached tokens reads the weights once and every row's
    keys and values: weight_bytes + kv_bytes_per_token x past x batch, where
    kv_bytes_per_token = 2 (K, V) x layers x heads x head size x element bytes.
    """
    rows = []
    for batch, by_past in sorted((profile.get("step_ms") or {}).items(), key=lambda kv: int(kv[0])):
        if not isinstance(by_past, dict):
            continue
        for past, step in sorted(by_past.items(), key=lambda kv: int(kv[0])):
            nbytes = weight_bytes + kv_bytes_per_token * int(past) * int(batch)
            floor = {k: round(nbytes / (bw * 1e6), 3) for k, bw in gb_per_s.items() if bw}
            rows.append(
                {
                    "batch": int(batch),
                    "past": int(past),
                    "bytes": nbytes,
                    "step_ms": step,
                    "floor_ms": floor,
                    "step_over_floor": {k: _div(step, f) for k, f in floor.items()},
                }
            )
    return {
        "weight_bytes": weight_bytes,
        "kv_bytes_per_token": kv_bytes_per_token,
        "gb_per_s": dict(gb_per_s),
        "rows": rows,
    }


def _floor_row(floors: dict | None, batch: int) -> dict | None:
    """The row of `read_floors` at `batch` and the shortest cache length."""
    rows = [r for r in (floors or {}).get("rows", []) if r["batch"] == batch]
    return min(rows, key=lambda r: r["past"], default=None)


def _gpt2_profile_ratios(g: dict, cfg: dict) -> dict:
    """Served figures against the offline profile of the same file and threads.

    The short workload's cache holds prompt + new/2 tokens on average (48 for 16 -> 64): the
    profile is read there.
    """
    out: dict[str, float | None] = {}
    profile = g.get("decode_profile")
    served = g.get("served") or {}
    c1 = served.get("1")
    cached = cfg.get("prompt_tokens", 16) + cfg.get("new_tokens", 64) / 2
    step1 = _profiled_step(profile, 1, cached)
    for c in sorted(served, key=int):
        step_c = _profiled_step(profile, int(c), cached)
        if c == "1" or step1 is None or step_c is None:
            continue
        # Offline step times: c streams per step over one; served aggregate over that ceiling.
        ceiling = int(c) * step1 / step_c
        out[f"gpt2_step_ceiling_c{c}_vs_c1"] = round(ceiling, 3)
        if c1:
            gain = served[c]["aggregate_tokens_per_s"] / c1["aggregate_tokens_per_s"]
            out[f"gpt2_aggregate_c{c}_vs_step_ceiling"] = _div(gain, ceiling)
    steps = (profile or {}).get("step_ms") or {}
    pasts = sorted(int(p) for p in (profile or {}).get("past_lens", []))
    for b in ("1", "8"):
        by_past = steps.get(b)
        if len(pasts) >= 2 and isinstance(by_past, dict):
            # the cache's share of a step: what reading 10x more cached tokens costs
            out[f"gpt2_step_long_vs_short_b{b}"] = _div(
                by_past.get(str(pasts[-1])), by_past.get(str(pasts[0]))
            )
    prefill = (profile or {}).get("prefill_ms") or {}
    if c1 and c1["ttft_ms"].get("p50") is not None and prefill:
        from export.latency_model import prefill_ms_at

        # what the server adds to the prompt's own prefill before the first token arrives
        out["gpt2_ttft_minus_prefill_ms"] = round(
            c1["ttft_ms"]["p50"] - prefill_ms_at(profile, cfg.get("prompt_tokens", 16)), 3
        )
    row = _floor_row((g.get("read_floors") or {}).get(g.get("variant") or ""), 1)
    if row:
        out["gpt2_step_b1_vs_read_floor"] = row["step_over_floor"].get("1gib")
    long = (g.get("long") or {}).get("served") or {}
    top = max(long, key=int, default=None)
    if top and top != "1" and "1" in long:
        out[f"gpt2_long_aggregate_c{top}_vs_c1"] = _div(
            long[top]["aggregate_tokens_per_s"], long["1"]["aggregate_tokens_per_s"]
        )
    mixed = g.get("mixed")
    if mixed:
        out["gpt2_mixed_itl_p99_during_long_vs_other"] = _div(
            mixed["short_itl_during_long_prefill_ms"]["p99"], mixed["short_itl_other_ms"]["p99"]
        )
    return out


def _gpt2_peer_ratios(g: dict) -> dict:
    """Served figures against the fastest peer runtime (highest tokens/s at one stream)."""
    out: dict[str, float | None] = {}
    served = g.get("served") or {}
    c1 = served.get("1")
    name = best_peer(g.get("peers"))
    if name is not None:
        peer = g["peers"][name]
        if c1:
            out["gpt2_tokens_per_s_vs_best_peer"] = _div(c1["per_stream_tokens_per_s"], peer["tokens_per_s"])
            if c1["ttft_ms"].get("p50") is not None and peer["ttft_ms"].get("p50") is not None:
                out["gpt2_ttft_minus_best_peer_ms"] = round(c1["ttft_ms"]["p50"] - peer["ttft_ms"]["p50"], 3)
        top = max(served, key=int, default=None)
        if top is not None and top != "1":
            # several streams served at once against the peer's one (it runs one request at a time)
            out[f"gpt2_aggregate_c{top}_vs_best_peer"] = _div(
                served[top]["aggregate_tokens_per_s"], peer["tokens_per_s"]
            )
    long = g.get("long") or {}
    long_c1 = (long.get("served") or {}).get("1")
    name = best_peer(long.get("peers"))
    if name is not None and long_c1:
        peer = long["peers"][name]
        out["gpt2_long_tokens_per_s_vs_best_peer"] = _div(
            long_c1["per_stream_tokens_per_s"], peer["tokens_per_s"]
        )
        if long_c1["ttft_ms"].get("p50") is not None and peer["ttft_ms"].get("p50") is not None:
            out["gpt2_long_ttft_minus_best_peer_ms"] = round(
                long_c1["ttft_ms"]["p50"] - peer["ttft_ms"]["p50"], 3
            )
    return out


def ratios(results: dict) -> dict:
    """Served figures over the baselines measured in the same run (and the server hop in ms).

    `*_vs_<baseline>` and `*_speedup_*` are ratios (> 1: the served model is better);
    `*_minus_*_ms` are differences in milliseconds. GPT-2 also gets ratios against the
    offline decode profile of the served file, measured in the same run through the serving
    engine's own runner without the server: the step's batching ceiling
    (`gpt2_step_ceiling_cN_vs_c1`), the served share of it (`gpt2_aggregate_cN_vs_step_ceiling`),
    the step at a long cache over a short one (`gpt2_step_long_vs_short_bN`), the server's
    time to first token beyond the prefill (`gpt2_ttft_minus_prefill_ms`), and the batch-1
    step over its read floor (`gpt2_step_b1_vs_read_floor`). Against the fastest peer runtime
    (`gpt2_*_vs_best_peer`, `gpt2_*ttft_minus_best_peer_ms`), the peer with the highest
    tokens/s at one stream on the same prompt, tokens and threads.
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
        out.update(_gpt2_profile_ratios(g, results.get("config", {})))
        out.update(_gpt2_peer_ratios(g))
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
    ran = measured_peers(g.get("peers"))
    rows = (
        [
            ("served (Triton gRPC stream)", c, r["per_stream_tokens_per_s"], r["aggregate_tokens_per_s"], r)
            for c, r in sorted(g["served"].items(), key=lambda kv: int(kv[0]))
        ]
        + [(BASELINE_LABELS[b], "1", g[b]["tokens_per_s"], g[b]["tokens_per_s"], g[b]) for b in bases]
        + [(peer_label(n, f), "1", f["tokens_per_s"], f["tokens_per_s"], f) for n, f in ran.items()]
    )
    for label, c, per, agg, r in rows:
        lines.append(
            f"| {label} | {c} | {_f(per)} | {_f(agg)} | "
            + "".join(f"{_f(_div(agg, g[b]['tokens_per_s']), 2)} | " for b in bases)
            + f"{_f(r['ttft_ms']['p50'])} | {_itl(r['itl_ms'])} |"
        )
    for n, f in (g.get("peers") or {}).items():
        if n not in ran:
            lines.append(
                f"| {peer_label(n, f)}: skipped ({f.get('skipped', 'not measured')}) | - | - | - | "
                + "- | " * len(bases)
                + "- | - |"
            )
    best = best_peer(g.get("peers"))
    c1 = g["served"].get("1")
    if best is not None and c1:
        peer = g["peers"][best]
        top = max(g["served"], key=int)
        agg = _div(g["served"][top]["aggregate_tokens_per_s"], peer["tokens_per_s"])
        ttft = None
        if c1["ttft_ms"].get("p50") is not None and peer["ttft_ms"].get("p50") is not None:
            ttft = c1["ttft_ms"]["p50"] - peer["ttft_ms"]["p50"]
        lines.append(
            f"| served vs best peer ({peer_label(best, peer)}): served / peer, TTFT served − peer | "
            f"1 / {top} | {_f(_div(c1['per_stream_tokens_per_s'], peer['tokens_per_s']), 2)}× | "
            f"{_f(agg, 2)}× ({top} streams) | "
            + "- | "
            * len(bases)
            + f"{'-' if ttft is None else f'{ttft:+.1f}'} | "
            f"p50 {_f(_div(c1['itl_ms'].get('p50'), peer['itl_ms'].get('p50')), 2)}× |"
        )
    lines += _peer_details(g.get("peers") or {})
    return lines


def peer_label(name: str, figures: dict | None = None) -> str:
    """A peer's row label: its runtime as measured, or as registered when it did not run."""
    return (figures or {}).get("runtime") or (PEERS[name].label if name in PEERS else name)


def _peer_details(figures: dict) -> list[str]:
    """What each peer ran: package version, weights, file size, runtime settings, conversion."""
    ran = measured_peers(figures)
    if not ran:
        return []
    lines = [
        "",
        "Peer runtimes: each in a process of its own, on the same checkpoint converted once (cached "
        "by checkpoint hash), fed the same prompt ids:",
        "",
        "| peer | package | weights | file MB | settings | conversion |",
        "|---|---|---|---:|---|---|",
    ]
    for n, f in ran.items():
        props = ", ".join(f"{k}={v}" for k, v in (f.get("properties") or {}).items())
        conv = f.get("conversion") or {}
        how = conv.get("equivalent") or conv.get("tool") or "-"
        lines.append(
            f"| {n} | {f.get('package')} {f.get('version')} | {f.get('weights')} | "
            f"{_f((f.get('file_bytes') or 0) / 1e6)} | {props} | {how} |"
        )
    return lines


def _profile_tables(g: dict) -> list[str]:
    """The export's decode profile per variant and each batch-1 step against its read floor."""
    profiles = g.get("decode_profiles") or (
        {g["variant"]: g["decode_profile"]} if g.get("decode_profile") else {}
    )
    profiles = {n: p for n, p in profiles.items() if isinstance((p.get("step_ms") or {}).get("1"), dict)}
    if not profiles:
        return []
    pasts = sorted({int(x) for p in profiles.values() for x in p.get("past_lens", [])})
    short, long = (pasts[0], pasts[-1]) if pasts else (None, None)
    prefills = sorted({int(t) for p in profiles.values() for t in p.get("prefill_ms", {})})
    threads = next(iter(profiles.values())).get("threads")

    def step(p, b, past):
        return ((p.get("step_ms") or {}).get(str(b)) or {}).get(str(past))

    lines = [
        f"Decode profile, offline: the serving engine's own runner on each exported file in this "
        f"process, without the server, {threads} threads (median of 3 rounds taken in turns). Step ms "
        "at batch b with `past` cached tokens per row; prefill ms of a prompt alone.",
        "",
        f"| variant | b1 @{short} | b1 @{long} | b8 @{short} | b8 @{long} | b8 @{long} / @{short} |"
        + "".join(f" prefill {t} |" for t in prefills),
        "|---|---:|---:|---:|---:|---:|" + "---:|" * len(prefills),
    ]
    for name, p in profiles.items():
        served = " (served)" if name == g.get("variant") else ""
        lines.append(
            f"| {name}{served} | {_f(step(p, 1, short), 2)} | {_f(step(p, 1, long), 2)} | "
            f"{_f(step(p, 8, short), 2)} | {_f(step(p, 8, long), 2)} | "
            f"{_f(_div(step(p, 8, long), step(p, 8, short)), 2)} |"
            + "".join(f" {_f(p.get('prefill_ms', {}).get(str(t)))} |" for t in prefills)
        )
    lines += [
        "",
        "Batching can give at most b × step(1) / step(b) times one stream's tokens/s "
        "(`gpt2_step_ceiling_cN_vs_c1` below, at the short requests' mean cache length); "
        "`gpt2_aggregate_cN_vs_step_ceiling` is the share of it that the server delivers.",
    ]
    floors = g.get("read_floors") or {}
    gib = (g.get("memory_bandwidth_1gib") or {}).get("gb_per_s")
    if floors and gib:
        own = ", ".join(
            f"{n} {f['bandwidth_at_model_size']['bytes'] / 1e6:.0f} MB {f['gb_per_s']['model']}"
            for n, f in floors.items()
            if f.get("bandwidth_at_model_size")
        )
        lines += [
            "",
            f"Read floor: the bytes a batch-1 step reads (initializers except the gathered embedding "
            f"tables, plus the KV cache at `past`) over the read bandwidth measured in this run "
            f"(numpy sum, {g['memory_bandwidth_1gib'].get('threads')} threads, median): "
            f"1 GiB {gib} GB/s; at each variant's size {own} GB/s. Step / floor: 1 is the bound.",
            "",
            "| variant | past | MB read | floor ms (1 GiB / own size) | step ms | step / floor (1 GiB / own size) |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for name, f in floors.items():
            for r in (row for row in f.get("rows", []) if row["batch"] == 1):
                fl, ratio = r["floor_ms"], r["step_over_floor"]
                lines.append(
                    f"| {name} | {r['past']} | {r['bytes'] / 1e6:.1f} | "
                    f"{_f(fl.get('1gib'), 2)} / {_f(fl.get('model'), 2)} | {_f(r['step_ms'], 2)} | "
                    f"{_f(ratio.get('1gib'), 2)} / {_f(ratio.get('model'), 2)} |"
                )
    return lines


def _workload_tables(g: dict) -> list[str]:
    """The long workload's rows and the mixed workload's figures."""
    lines: list[str] = []
    long = g.get("long")
    if long and long.get("served"):
        lines += [
            f"**Long requests**: {long['prompt_tokens']}-token prompt, {long['new_tokens']} new tokens "
            "(the prompt is prefilled in chunks while other streams decode).",
            "",
            "| path | streams | tok/s per stream | tok/s aggregate | TTFT p50 ms | ITL p50 / p90 / p99 ms |",
            "|---|---:|---:|---:|---:|---|",
        ]
        for c, r in sorted(long["served"].items(), key=lambda kv: int(kv[0])):
            lines.append(
                f"| served (Triton gRPC stream) | {c} | {_f(r['per_stream_tokens_per_s'])} | "
                f"{_f(r['aggregate_tokens_per_s'])} | {_f(r['ttft_ms']['p50'])} | {_itl(r['itl_ms'])} |"
            )
        for n, r in (long.get("peers") or {}).items():
            if "tokens_per_s" in r:
                lines.append(
                    f"| {peer_label(n)} | 1 | {_f(r['tokens_per_s'])} | {_f(r['tokens_per_s'])} | "
                    f"{_f(r['ttft_ms']['p50'])} | {_itl(r['itl_ms'])} |"
                )
            else:
                lines.append(f"| {peer_label(n)}: skipped ({r.get('skipped')}) | - | - | - | - | - |")
        lines.append("")
    elif g.get("long_skipped"):
        lines += [f"Long and mixed workloads not measured: {g['long_skipped']}.", ""]
    m = g.get("mixed")
    if m:
        during, other, ttft = (
            m["short_itl_during_long_prefill_ms"],
            m["short_itl_other_ms"],
            m["long_ttft_ms"],
        )
        lines += [
            f"**Mixed**: {m['streams']} streams of {m['short_prompt_tokens']} → {m['short_new_tokens']} "
            f"tokens back to back while a {m['long_prompt_tokens']}-token prompt ({m['long_new_tokens']} new "
            f"tokens) arrives every {m['period_s']:g} s ({m['long_requests']} of them).",
            "",
            "| running streams' ITL | gaps | p50 ms | p90 ms | p99 ms |",
            "|---|---:|---:|---:|---:|",
            f"| while a long prompt is prefilled (arrival to its first token) | {during['n']} | "
            f"{_f(during['p50'], 2)} | {_f(during['p90'], 2)} | {_f(during['p99'], 2)} |",
            f"| the other gaps | {other['n']} | {_f(other['p50'], 2)} | {_f(other['p90'], 2)} | "
            f"{_f(other['p99'], 2)} |",
            "",
            f"Long requests' TTFT p50 / p90 / p99: {_f(ttft['p50'])} / {_f(ttft['p90'])} / {_f(ttft['p99'])} ms; "
            f"running streams' aggregate {_f(m['short'].get('aggregate_tokens_per_s'))} tok/s.",
            "",
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


def _genai_perf_table(g: dict) -> list[str]:
    """The bench's one-stream figures beside genai-perf's on the same workload."""
    gp, ours = g.get("genai_perf"), g.get("served", {}).get("1")
    if not gp or not ours:
        return []
    if "skipped" in gp:
        return [f"genai-perf: not run ({gp['skipped']}).", ""]
    lines = [
        "| one stream, same workload | TTFT mean ms | ITL mean ms | output tokens/s | vs ours (TTFT / ITL / tokens/s) |",
        "|---|---:|---:|---:|---|",
        f"| aigc bench client | {ours['ttft_ms']['mean']:.1f} | {ours['itl_ms']['mean']:.2f} | "
        f"{ours['aggregate_tokens_per_s']:.1f} | |",
    ]
    for backend, r in gp.items():
        if "skipped" in r:
            lines.append(f"| genai-perf --backend {backend} | not run: {r['skipped'][:120]} | | | |")
            continue
        v = r["vs_ours"]
        lines.append(
            f"| genai-perf --backend {backend} | {r['ttft_ms']['avg']:.1f} | {r['itl_ms']['avg']:.2f} | "
            f"{r['output_tokens_per_s']:.1f} | {v['ttft_mean']} / {v['itl_mean']} / {v['tokens_per_s']} |"
        )
    return lines + [""]


def markdown(results: dict) -> str:
    env, cfg = results["env"], results["config"]
    gpu = ", ".join(env.get("gpus") or []) or ("yes" if env.get("gpu") else "none")
    lines = [
        f"Machine: {env['cpu']}, {env['cores']} cores; GPU: {gpu}. "
        f"{'Quick mode' if cfg.get('quick') else 'Full run'}, {cfg.get('repeats')} timed repetitions after a warm-up.",
        "",
    ]
    if results.get("gpt2"):
        g = results["gpt2"]
        lines += _gpt2_table(g, cfg) + [""]
        lines += _genai_perf_table(g)
        lines += _workload_tables(g)
        profile = _profile_tables(g)
        lines += profile + ([""] if profile else [])
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
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14 if g.get("peers") else 11, 4.5))
        conc = sorted(g["served"], key=int)
        xs = [int(c) for c in conc]
        ax1.plot(xs, [g["served"][c]["aggregate_tokens_per_s"] for c in conc], "o-", label="served aggregate")
        ax1.plot(
            xs, [g["served"][c]["per_stream_tokens_per_s"] for c in conc], "s--", label="served per stream"
        )
        for base, color in (("eager", "grey"), ("optimum", "tab:red")):
            if base in g:
                ax1.axhline(g[base]["tokens_per_s"], linestyle=":", color=color, label=f"{base} (1 stream)")
        peers = measured_peers(g.get("peers"))
        # colours apart from the served lines (C0-C2) and Optimum's red
        colors = dict(zip(PEERS, ("C4", "C5", "C6", "C8", "C9"), strict=False))
        for name, f in peers.items():
            ax1.axhline(
                f["tokens_per_s"], linestyle="--", color=colors.get(name), lw=1, label=f"{name} (1 stream)"
            )
        long = (g.get("long") or {}).get("served") or {}
        if long:
            lc = sorted(long, key=int)
            ax1.plot(
                [int(c) for c in lc],
                [long[c]["aggregate_tokens_per_s"] for c in lc],
                "^-",
                label=f"served aggregate, {g['long']['prompt_tokens']}-token prompts",
            )
            for name, f in measured_peers(g["long"].get("peers")).items():
                ax1.plot(
                    [1],
                    [f["tokens_per_s"]],
                    "v",
                    color=colors.get(name),
                    label=f"{name}, {g['long']['prompt_tokens']}-token prompts",
                )
        ax1.set(xlabel="concurrent streams", ylabel="tokens/s", title="GPT-2 tokens/s vs concurrency")
        ax1.set_xticks(xs)
        ax1.set_ylim(bottom=0)
        ax1.legend(fontsize=7 if peers else None)
        c1 = g["served"].get("1") or g["served"][conc[0]]
        bars = [("served TTFT", c1["ttft_ms"]), ("served ITL", c1["itl_ms"])]
        for b in ("eager", "optimum"):
            if b in g:
                bars += [(f"{b} TTFT", g[b]["ttft_ms"]), (f"{b} ITL", g[b]["itl_ms"])]
        for name, f in peers.items():
            bars += [(f"{name} TTFT", f["ttft_ms"]), (f"{name} ITL", f["itl_ms"])]
        x = list(range(len(bars)))
        for offset, key in ((-0.25, "p50"), (0.0, "p90"), (0.25, "p99")):
            ax2.bar([i + offset for i in x], [d.get(key) or 0 for _, d in bars], 0.25, label=key)
        # with the peers' bars the names are many: smaller, slanted, anchored at their bar
        ticks = {"rotation": 35, "ha": "right", "fontsize": 7} if peers else {"rotation": 20}
        ax2.set_xticks(x, [n for n, _ in bars], **ticks)
        ax2.set(ylabel="ms", title=f"GPT-2 latency percentiles ({conc[0]} stream)")
        ax2.legend()
        fig.tight_layout()
        written.append(out / "gpt2.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
        if _workloads_plot(plt, g, out / "gpt2-workloads.png"):
            written.append(out / "gpt2-workloads.png")
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


def _workloads_plot(plt, g: dict, path: Path) -> bool:
    """Decode step vs cached tokens per variant (with the read floor), and the running
    streams' ITL while long prompts arrive. False when there is nothing to draw."""
    profiles = {
        n: p
        for n, p in (g.get("decode_profiles") or {}).items()
        if isinstance((p.get("step_ms") or {}).get("1"), dict)
    }
    mixed = g.get("mixed")
    if not profiles and not mixed:
        return False
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for i, (name, p) in enumerate(profiles.items()):
        color = f"C{i}"  # one colour per variant: its steps and its floor
        for b, style in (("1", "o-"), ("8", "s--")):
            by_past = (p.get("step_ms") or {}).get(b)
            if isinstance(by_past, dict):
                xs = sorted(by_past, key=int)
                ax1.plot(
                    [int(x) for x in xs],
                    [by_past[x] for x in xs],
                    style,
                    color=color,
                    label=f"{name} batch {b}",
                )
        rows = [r for r in (g.get("read_floors") or {}).get(name, {}).get("rows", []) if r["batch"] == 1]
        if rows and rows[0]["floor_ms"].get("1gib"):
            ax1.plot(
                [r["past"] for r in rows],
                [r["floor_ms"]["1gib"] for r in rows],
                ":",
                color=color,
                label=f"{name} read floor b1",
            )
    ax1.set(xlabel="cached tokens per row", ylabel="ms", title="Decode step (offline profile)")
    ax1.set_ylim(bottom=0)
    if profiles:
        ax1.legend(fontsize=7)
    if mixed:
        bars = [
            ("running streams,\nlong prefill", mixed["short_itl_during_long_prefill_ms"]),
            ("running streams,\nother gaps", mixed["short_itl_other_ms"]),
        ]
        x = list(range(len(bars)))
        for offset, key in ((-0.25, "p50"), (0.0, "p90"), (0.25, "p99")):
            ax2.bar([i + offset for i in x], [d.get(key) or 0 for _, d in bars], 0.25, label=key)
        ax2.set_xticks(x, [n for n, _ in bars])
        ttft = mixed["long_ttft_ms"].get("p50")
        ax2.set(
            ylabel="ITL ms",
            title=f"Mixed: {mixed['streams']} streams + {mixed['long_prompt_tokens']}-token prompts "
            f"(TTFT p50 {_f(ttft, 0)} ms)",
        )
        ax2.legend()
    else:
        ax2.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


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
        ("gpt2-workloads.png", "GPT-2 decode step by cache length, and the mixed workload"),
        ("images.png", "Image models through Triton"),
    ):
        if (Path(out) / name).is_file():
            images.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(Path(out) / name, images / f"bench-{name}")
            links.append(f"![{title}](docs/images/bench-{name})")
    from export.results import replace_between_markers

    body = readme_section(results, links).removesuffix("\n")
    readme.write_text(replace_between_markers(readme.read_text(), README_START, README_END, body))
    logger.info("benchmark table written to %s", readme)
