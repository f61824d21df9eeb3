"""The Markdown tables of a benchmark run (results.md and the README section)."""

from __future__ import annotations

import statistics
from pathlib import Path

from benchmarks.peers import PEERS
from benchmarks.peers import best as best_peer
from benchmarks.peers import measured as measured_peers
from benchmarks.ratios import div, peer_ttft_gaps

BASELINE_LABELS = {"eager": "PyTorch eager `generate`", "optimum": "Optimum `ORTModelForCausalLM`"}


def fmt(v, digits=1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _itl(p: dict) -> str:
    return f"{fmt(p.get('p50'), 2)} / {fmt(p.get('p90'), 2)} / {fmt(p.get('p99'), 2)}"


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
            f"| {label} | {c} | {fmt(per)} | {fmt(agg)} | "
            + "".join(f"{fmt(div(agg, g[b]['tokens_per_s']), 2)} | " for b in bases)
            + f"{fmt(r['ttft_ms']['p50'])} | {_itl(r['itl_ms'])} |"
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
        agg = div(g["served"][top]["aggregate_tokens_per_s"], peer["tokens_per_s"])
        ttft = None
        if c1["ttft_ms"].get("p50") is not None and peer["ttft_ms"].get("p50") is not None:
            ttft = c1["ttft_ms"]["p50"] - peer["ttft_ms"]["p50"]
        one = f"{fmt(div(c1['per_stream_tokens_per_s'], peer['tokens_per_s']), 2)}×"
        rounds = (g.get("peer_rounds") or {}).get("rounds") or []
        each = [x for x in (div(r["served"], r["peer"]) for r in rounds) if x is not None]
        if len(each) > 1:  # the ratio taken per round, in turns: median (spread)
            one = f"{fmt(statistics.median(each), 2)}× ({fmt(min(each), 2)}–{fmt(max(each), 2)}, {len(each)} rounds)"
        gaps = peer_ttft_gaps(rounds)
        ttft_cell = "-" if ttft is None else f"{ttft:+.1f}"
        if len(gaps) > 1:  # the difference per round too
            ttft_cell = f"{statistics.median(gaps):+.1f} ({min(gaps):+.1f} to {max(gaps):+.1f})"
        lines.append(
            f"| served vs best peer ({peer_label(best, peer)}): served / peer, TTFT served − peer | "
            f"1 / {top} | {one} | "
            f"{fmt(agg, 2)}× ({top} streams) | " + "- | " * len(bases) + f"{ttft_cell} | "
            f"p50 {fmt(div(c1['itl_ms'].get('p50'), peer['itl_ms'].get('p50')), 2)}× |"
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
            f"{fmt((f.get('file_bytes') or 0) / 1e6)} | {props} | {how} |"
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
        f"process, without the server, {threads} threads (3 rounds taken in turns; each figure the fastest round's median of its calls). Step ms "
        "at batch b with `past` cached tokens per row; prefill ms of a prompt alone. "
        "`<variant>@kv-i8`: the same weights with ONNX Runtime's int8 KV cache"
        + (f" (served: {g['served_kv_cache']})." if g.get("served_kv_cache") else "."),
        "",
        f"| variant | b1 @{short} | b1 @{long} | b8 @{short} | b8 @{long} | b8 @{long} / @{short} |"
        + "".join(f" prefill {t} |" for t in prefills),
        "|---|---:|---:|---:|---:|---:|" + "---:|" * len(prefills),
    ]
    for name, p in profiles.items():
        served = " (served)" if name == g.get("variant") else ""
        lines.append(
            f"| {name}{served} | {fmt(step(p, 1, short), 2)} | {fmt(step(p, 1, long), 2)} | "
            f"{fmt(step(p, 8, short), 2)} | {fmt(step(p, 8, long), 2)} | "
            f"{fmt(div(step(p, 8, long), step(p, 8, short)), 2)} |"
            + "".join(f" {fmt(p.get('prefill_ms', {}).get(str(t)))} |" for t in prefills)
        )
    lines += [
        "",
        "Batching can give at most b × step(1) / step(b) times one stream's tokens/s "
        "(`gpt2_step_ceiling_cN_vs_c1` below, at the short requests' mean cache length); "
        "`gpt2_aggregate_cN_vs_step_ceiling` is the share of it that the server delivers "
        "(for the most streams up to 8: the median over rounds of 1 and N streams served in turns, each "
        "round's gain over the ceiling timed offline right after it; the profile's own, minutes away, is "
        "`gpt2_profile_step_ceiling_cN_vs_c1`). "
        "`gpt2_itl_minus_step_ms` is what the server adds to each token at one stream (the engine's loop, "
        "the response through Triton's Python-backend IPC and gRPC), and `gpt2_responses_per_token_cN` "
        "how many responses N streams' tokens took (below 1 where a busy sender put tokens together).",
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
                    f"{fmt(fl.get('1gib'), 2)} / {fmt(fl.get('model'), 2)} | {fmt(r['step_ms'], 2)} | "
                    f"{fmt(ratio.get('1gib'), 2)} / {fmt(ratio.get('model'), 2)} |"
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
                f"| served (Triton gRPC stream) | {c} | {fmt(r['per_stream_tokens_per_s'])} | "
                f"{fmt(r['aggregate_tokens_per_s'])} | {fmt(r['ttft_ms']['p50'])} | {_itl(r['itl_ms'])} |"
            )
        for n, r in (long.get("peers") or {}).items():
            if "tokens_per_s" in r:
                lines.append(
                    f"| {peer_label(n)} | 1 | {fmt(r['tokens_per_s'])} | {fmt(r['tokens_per_s'])} | "
                    f"{fmt(r['ttft_ms']['p50'])} | {_itl(r['itl_ms'])} |"
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
            f"{fmt(during['p50'], 2)} | {fmt(during['p90'], 2)} | {fmt(during['p99'], 2)} |",
            f"| the other gaps | {other['n']} | {fmt(other['p50'], 2)} | {fmt(other['p90'], 2)} | "
            f"{fmt(other['p99'], 2)} |",
            "",
            f"Long requests' TTFT p50 / p90 / p99: {fmt(ttft['p50'])} / {fmt(ttft['p90'])} / {fmt(ttft['p99'])} ms; "
            f"running streams' aggregate {fmt(m['short'].get('aggregate_tokens_per_s'))} tok/s.",
            "",
        ]
    return lines


def _many_users_tables(g: dict) -> list[str]:
    """The many-users workload served, and the engine probes offline."""
    lines: list[str] = []
    many = g.get("many_users")
    if many:
        rss = many.get("server_rss_mib") or {}
        lines += [
            f"**Many users**: {many['concurrency']} streams at once, one request each: "
            f"{fmt(many['aggregate_tokens_per_s'])} tok/s aggregate, TTFT p50 / p90 "
            f"{fmt(many['ttft_ms']['p50'])} / {fmt(many['ttft_ms']['p90'])} ms, ITL p50 "
            f"{fmt(many['itl_ms']['p50'], 2)} ms; the server's resident memory "
            f"{fmt(rss.get('before'))} MiB before, {fmt(rss.get('after'))} MiB after.",
            "",
        ]
    probe = g.get("engine_probe") or {}
    if probe.get("skipped"):
        lines += [f"Engine probes not run: {probe['skipped']}.", ""]
    elif probe:
        lines += [
            f"**The engine offline** ({probe['variant']}, no server; `benchmarks/engine_probe.py`):",
            "",
        ]
        lines += ["| probe | figure |", "|---|---|"]
        served = probe.get("served") or {}
        for where, runs in (("", probe), (f" ({served.get('variant')})", served)):
            for k, m in (runs.get("mixed") or {}).items():
                if "ratio" in m:
                    lines.append(
                        f"| {k}{where}: one mixed call / prefill call + decode call | "
                        f"{fmt(m['one_mixed_call_ms'], 2)} / {fmt(m['two_calls_ms'], 2)} ms ({m['ratio']}) |"
                    )
        for k, u in (probe.get("users") or {}).items():
            lines.append(
                f"| 64 requests of 16 → 64 tokens, {k} ({u['kv_mib']} MiB) | {fmt(u['tokens_per_s'])} tok/s, "
                f"TTFT p50 {u['ttft_p50_s']} s, {u['preemptions']} preemptions |"
            )
        lines += _prefix_rows(probe, "")
        lines += _prefix_rows(served, f" ({served['variant']}, the served runtime's slots)" if served else "")
        for streams, m in (probe.get("structured") or {}).items():
            lines.append(
                f"| {streams} stream(s) with a JSON schema / without: ms a token | "
                f"{fmt(m['constrained_ms_per_token'], 3)} / {fmt(m['plain_ms_per_token'], 3)} "
                f"({m['ratio']}, the rounds' median) |"
            )
        kv = probe.get("kv_cache")
        if kv:
            for name in ("f32", "u8"):
                steps = kv[name]["step_ms"]
                pasts = sorted(steps, key=int)
                lines.append(
                    f"| batch-8 step, {name} KV cache ({kv[name]['bytes_per_token']} B a position), "
                    f"{pasts[0]} / {pasts[-1]} cached tokens | {fmt(steps[pasts[0]], 2)} / "
                    f"{fmt(steps[pasts[-1]], 2)} ms{' (served: the export chose it)' if kv['choice'] == name else ''} |"
                )
        lines.append("")
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
                    f"| {model} | {label} | {variant} | {fmt(p['p50'], 3)} | {fmt(p['p90'], 3)} | {fmt(p['p99'], 3)} |"
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


def _prefix_rows(probe: dict, where: str) -> list[str]:
    lines = []
    prefix = probe.get("prefix")
    if prefix:
        on = prefix["prefix_caching on"]["ttft_ms"]
        lines.append(
            f"| a 512-token prompt three times, prefix caching on{where}: TTFT ms | {' / '.join(map(str, on))} "
            f"(identical tokens: {prefix['identical_tokens']}) |"
        )
    shared = probe.get("shared_prefix")
    if shared:
        on, off = shared["prefix_caching on"], shared["prefix_caching off"]
        lines.append(
            f"| {shared['requests']} requests sharing a {shared['shared_tokens']}-token prefix{where}: the later "
            f"ones' TTFT p50, prefix caching on / off | {fmt(on['others_ttft_p50_ms'])} / "
            f"{fmt(off['others_ttft_p50_ms'])} ms, {fmt(on['tokens_per_s'])} / {fmt(off['tokens_per_s'])} tok/s |"
        )
    moves = probe.get("moves")
    if moves:
        on, off = moves["on"], moves["off"]
        lines.append(
            f"| {moves['requests']} requests of 8 to 64 new tokens at once{where}, rows moved down into "
            f"emptied slots on / off: tok/s, padding share of rows computed | {fmt(on['tokens_per_s'])} / "
            f"{fmt(off['tokens_per_s'])}, {fmt(on['padding_share'])} / {fmt(off['padding_share'])} |"
        )
    return lines


def markdown(results: dict) -> str:
    env, cfg = results["env"], results["config"]
    gpu = ", ".join(env.get("gpus") or []) or ("yes" if env.get("gpu") else "none")
    lines = [
        f"Machine: {env['cpu']}, {env['cores']} cores; GPU: {gpu}. "
        f"Commit {env.get('commit', 'not recorded')}, {env.get('date', 'date not recorded')}. "
        f"{'Quick mode' if cfg.get('quick') else 'Full run'}, {cfg.get('repeats')} timed repetitions after a warm-up.",
        "",
    ]
    if results.get("gpt2"):
        g = results["gpt2"]
        lines += _gpt2_table(g, cfg) + [""]
        lines += _genai_perf_table(g)
        lines += _workload_tables(g)
        lines += _many_users_tables(g)
        profile = _profile_tables(g)
        lines += profile + ([""] if profile else [])
    if results.get("images"):
        lines += _images_table(results["images"]) + [""]
    lines += ["| ratio (measured side by side in this run) | value |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in results["ratios"].items()]
    return "\n".join(lines)
