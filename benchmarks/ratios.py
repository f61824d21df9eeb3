"""The ratios `aigc bench` reports and gates: served figures over the baselines and peers
measured side by side in the same run, and each decode step against its memory-read floor."""

from __future__ import annotations

import statistics

from benchmarks.peers import best as best_peer


def div(a, b) -> float | None:
    """a / b to 3 decimals; None when either is missing."""
    return None if a is None or not b else round(a / b, 3)


def _median_spread(out: dict, key: str, each: list[float]) -> None:
    """`key`: the median of `each` (ratios or differences taken per round), and beside it,
    where there are several, `key_min` / `key_max`; to 3 decimals."""
    out[key] = round(statistics.median(each), 3)
    if len(each) > 1:
        out[f"{key}_min"], out[f"{key}_max"] = round(min(each), 3), round(max(each), 3)


def peer_ttft_gaps(rounds: list[dict]) -> list[float]:
    """Each peer round's TTFT p50 served minus the peer's (ms), where every round has both;
    else none."""
    gaps = [r["served_ttft_ms"] - r["peer_ttft_ms"] for r in rounds if r.get("served_ttft_ms") is not None]
    return gaps if len(gaps) == len(rounds) else []


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
                    "step_over_floor": {k: div(step, f) for k, f in floor.items()},
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


def served_gains(g: dict) -> dict[str, list[float]]:
    """Each served concurrency's aggregate over one stream's: one gain per round where one
    stream and that concurrency ran again in turns (`scaling_rounds`), else the one pass."""
    served = g.get("served") or {}
    c1 = served.get("1")
    gains: dict[str, list[float]] = {}
    if not c1:
        return gains

    def gain(n, one) -> list[float]:
        return [n / one] if n is not None and one else []

    for c in sorted(served, key=int):
        if c != "1":
            gains[c] = gain(served[c]["aggregate_tokens_per_s"], c1["aggregate_tokens_per_s"])
    scaling = g.get("scaling_rounds") or {}
    top = str(scaling.get("concurrency", ""))
    each = [x for r in scaling.get("rounds", []) for x in gain(r.get(f"c{top}"), r.get("c1"))]
    if top in gains and len(each) > 1:
        gains[top] = each
    return gains


def _round_ceilings(g: dict) -> dict[str, list[float]]:
    """The step ceiling of each scaling round (`top` x step(1) / step(top), timed offline
    right after the round's served runs), by concurrency; none where a round lacks them."""
    scaling = g.get("scaling_rounds") or {}
    top = str(scaling.get("concurrency", ""))
    rounds = scaling.get("rounds") or []
    ceilings = [
        int(top) * r["step1_ms"] / r[f"step{top}_ms"]
        for r in rounds
        if r.get("step1_ms") and r.get(f"step{top}_ms")
    ]
    return {top: ceilings} if rounds and len(ceilings) == len(rounds) else {}


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
    gains = served_gains(g)
    paired = _round_ceilings(g)
    for c in sorted(served, key=int):
        step_c = _profiled_step(profile, int(c), cached)
        if c == "1" or step1 is None or step_c is None:
            continue
        # Offline step times: c streams per step over one; served aggregate over that ceiling.
        ceiling = int(c) * step1 / step_c
        each = [x / ceiling for x in gains.get(c, [])]
        rounds = paired.get(c, [])
        if len(rounds) > 1 and len(rounds) == len(gains.get(c, [])):
            # each round's gain over the ceiling timed right after it (the profile's, minutes
            # away, beside)
            out[f"gpt2_profile_step_ceiling_c{c}_vs_c1"] = round(ceiling, 3)
            each = [x / r for x, r in zip(gains[c], rounds, strict=True)]
            ceiling = statistics.median(rounds)
        out[f"gpt2_step_ceiling_c{c}_vs_c1"] = round(ceiling, 3)
        if each:  # the median of the rounds' gains (one, without rounds); their spread beside
            _median_spread(out, f"gpt2_aggregate_c{c}_vs_step_ceiling", each)
    steps = (profile or {}).get("step_ms") or {}
    pasts = sorted(int(p) for p in (profile or {}).get("past_lens", []))
    for b in ("1", "8"):
        by_past = steps.get(b)
        if len(pasts) >= 2 and isinstance(by_past, dict):
            # the cache's share of a step: what reading 10x more cached tokens costs
            out[f"gpt2_step_long_vs_short_b{b}"] = div(
                by_past.get(str(pasts[-1])), by_past.get(str(pasts[0]))
            )
    # a served int8 cache (ONNX Runtime): the variant's f32-cache graph beside, same turns
    main = (g.get("variant") or "").split("+")[0]
    by_cache = {"f32": (g.get("decode_profiles") or {}).get(main)}
    by_cache["i8"] = (g.get("decode_profiles") or {}).get(f"{main}@kv-i8")
    if by_cache["i8"] and by_cache["f32"] and len(pasts) >= 2:
        for name, p in by_cache.items():
            by_past = p["step_ms"].get("8") or {}
            out[f"gpt2_served_{name}_cache_step_long_vs_short_b8"] = div(
                by_past.get(str(pasts[-1])), by_past.get(str(pasts[0]))
            )
    prefill = (profile or {}).get("prefill_ms") or {}
    if c1 and c1["ttft_ms"].get("p50") is not None and prefill:
        from export.latency_model import prefill_ms_at

        # what the server adds to the prompt's own prefill before the first token arrives
        out["gpt2_ttft_minus_prefill_ms"] = round(
            c1["ttft_ms"]["p50"] - prefill_ms_at(profile, cfg.get("prompt_tokens", 16)), 3
        )
    if c1 and c1["itl_ms"].get("p50") is not None and step1 is not None:
        # what the server adds to each token at one stream: the engine's loop around the
        # step, the response through the Python backend's IPC, Triton and gRPC to the client
        out["gpt2_itl_minus_step_ms"] = round(c1["itl_ms"]["p50"] - step1, 3)
    for c in sorted(served, key=int):
        if served[c].get("responses_per_token") is not None and c != "1":
            # under load the sender puts a stream's tokens together while it is busy (< 1)
            out[f"gpt2_responses_per_token_c{c}"] = served[c]["responses_per_token"]
    row = _floor_row((g.get("read_floors") or {}).get(g.get("variant") or ""), 1)
    if row:
        out["gpt2_step_b1_vs_read_floor"] = row["step_over_floor"].get("1gib")
    long = (g.get("long") or {}).get("served") or {}
    top = max(long, key=int, default=None)
    if top and top != "1" and "1" in long:
        out[f"gpt2_long_aggregate_c{top}_vs_c1"] = div(
            long[top]["aggregate_tokens_per_s"], long["1"]["aggregate_tokens_per_s"]
        )
    mixed = g.get("mixed")
    if mixed:
        out["gpt2_mixed_itl_p99_during_long_vs_other"] = div(
            mixed["short_itl_during_long_prefill_ms"]["p99"], mixed["short_itl_other_ms"]["p99"]
        )
    return out


def _gpt2_openai_ratios(g: dict) -> dict:
    """The OpenAI frontend against gRPC, each round's pair run back to back: tokens/s at one
    stream and at the round's top concurrency (through / over), and one stream's TTFT p50
    (through minus over, ms); the median of the rounds, the spread beside."""
    out: dict[str, float | None] = {}
    openai = g.get("openai") or {}
    rounds, top = openai.get("rounds") or [], openai.get("concurrency")
    for c in (1, top):
        each = [div(r.get(f"openai_c{c}"), r.get(f"grpc_c{c}")) for r in rounds]
        if each and None not in each:
            _median_spread(out, f"gpt2_openai_vs_grpc_c{c}_tokens_per_s", each)
    gaps = [
        r["openai_ttft_ms"] - r["grpc_ttft_ms"]
        for r in rounds
        if None not in (r.get("openai_ttft_ms"), r.get("grpc_ttft_ms"))
    ]
    if gaps and len(gaps) == len(rounds):
        _median_spread(out, "gpt2_openai_minus_grpc_ttft_ms", gaps)
    return out


def _gpt2_many_users_ratios(g: dict) -> dict:
    """Many users: the long prompts' and many streams' served figures against the short
    streams', and the engine probes' (offline, on the export's OpenVINO variant)."""
    out: dict[str, float | None] = {}
    served = g.get("served") or {}
    long = ((g.get("long") or {}).get("served") or {}).get("8")
    rounds = (g.get("long") or {}).get("rounds") or {}

    def per_round(name: str) -> list:
        pairs = rounds.get(name, []) if rounds.get("concurrency") == 8 else []
        return [div(r["long"], r["short"]) for r in pairs]

    # 8 streams reading ~500 cached tokens a step against 8 reading ~50, each pair run back to
    # back: the median of the rounds, the spread beside. The inter-token latency is each
    # request's own (first token to last; genai-perf's): the p50 of the gaps between
    # responses fell to 4 ms and less for the short streams where the client read responses
    # that had queued up back to back (a 12 ms step), and the ratio with it rose to 7.7. The
    # gaps' ratio stays beside, as `gpt2_long_gap_p50_c8_vs_short_c8`.
    each, gaps = per_round("request_itl_p50_ms"), per_round("itl_p50_ms")
    if gaps and None not in gaps:
        _median_spread(out, "gpt2_long_gap_p50_c8_vs_short_c8", gaps)
    if not each or None in each:
        each = gaps  # results from before the requests' own
    if each and None not in each:
        _median_spread(out, "gpt2_long_itl_p50_c8_vs_short_c8", each)
    elif long and "8" in served:
        own = "request_itl_ms" in long and "request_itl_ms" in served["8"]
        figure = "request_itl_ms" if own else "itl_ms"
        out["gpt2_long_itl_p50_c8_vs_short_c8"] = div(long[figure]["p50"], served["8"][figure]["p50"])
    many = g.get("many_users")
    if many and "8" in served:
        key = f"gpt2_aggregate_c{many['concurrency']}_vs_c8"
        each = [div(r["many"], r["c8"]) for r in many.get("rounds") or []]
        if each and None not in each:  # pairs run back to back: their median, the spread beside
            _median_spread(out, key, each)
        else:
            out[key] = div(many["aggregate_tokens_per_s"], served["8"]["aggregate_tokens_per_s"])
    probe = g.get("engine_probe") or {}
    users = probe.get("users") or {}
    blocks = next((v for k, v in users.items() if k != "8 slots"), None)
    if blocks and "8 slots" in users:
        out["gpt2_engine_blocks_vs_slots_c64_tokens_per_s"] = div(
            blocks["tokens_per_s"], users["8 slots"]["tokens_per_s"]
        )
    if probe.get("prefix"):
        out["gpt2_engine_prefix_second_vs_first_ttft"] = probe["prefix"]["second_vs_first_ttft_on"]
    if probe.get("shared_prefix"):
        out["gpt2_engine_shared_prefix_ttft_on_vs_off"] = probe["shared_prefix"]["others_ttft_on_vs_off"]
    slots = probe.get("served") or {}  # the served slot runner's own (ONNX Runtime)
    if slots.get("prefix"):
        out["gpt2_served_runner_prefix_second_vs_first_ttft"] = slots["prefix"]["second_vs_first_ttft_on"]
    if slots.get("shared_prefix"):
        out["gpt2_served_runner_shared_prefix_ttft_on_vs_off"] = slots["shared_prefix"][
            "others_ttft_on_vs_off"
        ]
    if slots.get("moves"):
        out["gpt2_served_runner_moves_on_vs_off_tokens_per_s"] = div(
            slots["moves"]["on"]["tokens_per_s"], slots["moves"]["off"]["tokens_per_s"]
        )
    chunk16 = (probe.get("mixed") or {}).get("4 decode rows + 16-token chunk")
    if chunk16:
        out["gpt2_engine_mixed_call_vs_two_calls"] = chunk16["ratio"]
    chunk16 = (slots.get("mixed") or {}).get("4 decode rows + 16-token chunk")
    if chunk16:  # ONNX Runtime's mixed graph against its decode call and prefill call
        out["gpt2_served_runner_mixed_call_vs_two_calls"] = chunk16["ratio"]
    for streams, m in (probe.get("structured") or {}).items():
        # a JSON schema's token masks, per generated token, against the same requests without
        out[f"gpt2_engine_structured_b{streams}_vs_plain"] = m["ratio"]
    kv = probe.get("kv_cache")
    if kv:
        steps = {p: kv[p]["step_ms"] for p in ("f32", "u8")}
        pasts = sorted(steps["f32"], key=int)
        for p in ("f32", "u8"):
            out[f"gpt2_{p}_cache_step_long_vs_short_b8"] = div(steps[p][pasts[-1]], steps[p][pasts[0]])
    return out


def _gpt2_peer_ratios(g: dict) -> dict:
    """Served figures against the fastest peer runtime (highest tokens/s at one stream)."""
    out: dict[str, float | None] = {}
    served = g.get("served") or {}
    c1 = served.get("1")
    name = best_peer(g.get("peers"))
    if name is not None:
        peer = g["peers"][name]
        rounds = (g.get("peer_rounds") or {}).get("rounds") or []
        each = [x for x in (div(r["served"], r["peer"]) for r in rounds) if x is not None]
        if len(each) > 1:  # taken per round (served, peer, served, peer, ...): median and spread
            _median_spread(out, "gpt2_tokens_per_s_vs_best_peer", each)
        elif c1:
            out["gpt2_tokens_per_s_vs_best_peer"] = div(c1["per_stream_tokens_per_s"], peer["tokens_per_s"])
        gaps = peer_ttft_gaps(rounds)
        if len(gaps) > 1:  # per round too: median and spread
            _median_spread(out, "gpt2_ttft_minus_best_peer_ms", gaps)
        elif c1 and c1["ttft_ms"].get("p50") is not None and peer["ttft_ms"].get("p50") is not None:
            out["gpt2_ttft_minus_best_peer_ms"] = round(c1["ttft_ms"]["p50"] - peer["ttft_ms"]["p50"], 3)
        top = max(served, key=int, default=None)
        if top is not None and top != "1":
            # several streams served at once against the peer's one (it runs one request at a time)
            out[f"gpt2_aggregate_c{top}_vs_best_peer"] = div(
                served[top]["aggregate_tokens_per_s"], peer["tokens_per_s"]
            )
    long = g.get("long") or {}
    long_c1 = (long.get("served") or {}).get("1")
    name = best_peer(long.get("peers"))
    if name is not None and long_c1:
        peer = long["peers"][name]
        out["gpt2_long_tokens_per_s_vs_best_peer"] = div(
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
    (`gpt2_step_ceiling_cN_vs_c1`), the served share of it (`gpt2_aggregate_cN_vs_step_ceiling`,
    the median over the rounds of one stream and N served in turns, `_min` / `_max` beside),
    the step at a long cache over a short one (`gpt2_step_long_vs_short_bN`), the server's
    time to first token beyond the prefill (`gpt2_ttft_minus_prefill_ms`), and the batch-1
    step over its read floor (`gpt2_step_b1_vs_read_floor`). Against the fastest peer runtime
    (`gpt2_*_vs_best_peer`, `gpt2_*ttft_minus_best_peer_ms`), the peer with the highest
    tokens/s at one stream on the same prompt, tokens and threads. Many users: 8 long
    streams' inter-token gap over 8 short ones', the many-users aggregate over 8 streams',
    and the engine probes' blocks-by-use, prefix-cache, mixed-call and KV-cache ratios
    (`gpt2_engine_*`, `gpt2_*_cache_step_long_vs_short_b8`).
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
                out[f"gpt2_tokens_per_s_vs_{base}"] = div(c1["per_stream_tokens_per_s"], b["tokens_per_s"])
                out[f"gpt2_ttft_speedup_vs_{base}"] = div(b["ttft_ms"]["p50"], c1["ttft_ms"]["p50"])
                out[f"gpt2_itl_speedup_vs_{base}"] = div(b["itl_ms"]["p50"], c1["itl_ms"]["p50"])
            if top != "1":
                out[f"gpt2_aggregate_c{top}_vs_{base}"] = div(
                    g["served"][top]["aggregate_tokens_per_s"], b["tokens_per_s"]
                )
        for c, each in served_gains(g).items():
            if each:  # the median of the rounds' gains where they ran in turns
                out[f"gpt2_aggregate_c{c}_vs_c1"] = round(statistics.median(each), 3)
        out.update(_gpt2_profile_ratios(g, results.get("config", {})))
        out.update(_gpt2_many_users_ratios(g))
        out.update(_gpt2_openai_ratios(g))
        out.update(_gpt2_peer_ratios(g))
    for model, r in results.get("images", {}).items():
        served = r["served_ms"]["p50"]
        if "onnxruntime_ms" in r:
            out[f"{model}_served_minus_inprocess_p50_ms"] = round(served - r["onnxruntime_ms"]["p50"], 3)
        if "eager_ms" in r:
            out[f"{model}_served_speedup_vs_eager_p50"] = div(r["eager_ms"]["p50"], served)
        c1 = r.get("throughput_vs_concurrency", {}).get("1")
        if c1 and c1["latency_ms"].get("mean"):
            # One client back to back: about 0.9 when latency is steady; stalls pull the mean up.
            out[f"{model}_latency_p50_over_mean_c1"] = div(c1["latency_ms"]["p50"], c1["latency_ms"]["mean"])
        ort_b = r.get("onnxruntime_images_per_s_vs_batch") or {}
        if ort_b:
            b = max(ort_b, key=int)
            served_b = r.get("throughput_vs_batch", {}).get(b)
            if served_b:
                out[f"{model}_images_per_s_b{b}_vs_inprocess"] = div(served_b["images_per_s"], ort_b[b])
    return {k: v for k, v in out.items() if v is not None}
