"""The plots of a benchmark run (PNG files beside results.json; the README links them)."""

from __future__ import annotations

from pathlib import Path

from benchmarks.peers import PEERS
from benchmarks.peers import measured as measured_peers
from benchmarks.tables import fmt


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
            f"(TTFT p50 {fmt(ttft, 0)} ms)",
        )
        ax2.legend()
    else:
        ax2.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
