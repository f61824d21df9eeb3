"""`aigc bench` of the text generator (GPT-2): the served streams at each concurrency, the
long and mixed workloads, genai-perf beside, the offline decode profile and read floors, the
in-process baselines (PyTorch eager, Optimum) and the peer runtimes on the same checkpoint."""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aigc.errors import BenchmarkError, ConfigError
from benchmarks.options import BenchOptions, Subject
from benchmarks.progress import step
from benchmarks.subjects import newest_mtime
from engine import runtimes

logger = logging.getLogger("benchmarks.api")

# The baselines run the served checkpoint in-process: `--url` needs it, and a running
# server's model is not exported again here.
LOCAL_CHECKPOINT = True


def variant(opts: BenchOptions) -> str:
    return opts.gpt2_variant


def steps(opts: BenchOptions) -> int:
    names = opts.peer_names()
    return (
        len(opts.concurrency)
        + len(opts.long_concurrency)
        + 2
        + len(opts.baselines)
        + len(names)
        + (1 if names and opts.long_prompt_tokens else 0)
        + (opts.peer_rounds - 1 if names and 1 in opts.concurrency else 0)
        + (opts.scaling_rounds - 1 if opts.scaling_top() else 0)
        + (opts.scaling_rounds - 1 if _long_rounds_concurrency(opts) else 0)
        + (opts.scaling_rounds - 1 if 8 in opts.concurrency and opts.many_users > 8 else 0)
        + (opts.scaling_rounds if opts.scaling_top() else 0)  # the OpenAI frontend's rounds
        + 2  # many users, engine probes
    )


def record(results: dict, s: Subject, figures: dict) -> None:
    results[s.model] = figures


def build_prompt(tokenizer, n: int, text: str, offset: int = 0) -> str:
    """A prompt that the model's tokenizer encodes to exactly `n` tokens.

    Decoded from a window of token ids of `text` from about token `offset` on: `n` of them,
    or a few more where the decoded text merges into fewer tokens (a short text repeated to
    length merges at each seam); a window that encodes to anything but `n` tokens is skipped.
    """
    ids = tokenizer.encode(text).ids
    while len(ids) < offset + n + 256 + 16:
        ids = ids + ids
    for start in range(offset, offset + 256):
        for extra in range(0, 17):
            prompt = tokenizer.decode(ids[start : start + n + extra])
            got = len(tokenizer.encode(prompt).ids)
            if got == n and prompt.strip():
                return prompt
            if got > n:
                break
    raise BenchmarkError(f"--prompt-tokens {n}: found no text that encodes to exactly {n} tokens")


def _tokenizer(s: Subject):
    from tokenizers import Tokenizer

    for folder in (s.export / "assets" if s.export else None, s.checkpoint):
        if folder is not None and (Path(folder) / "tokenizer.json").is_file():
            return Tokenizer.from_file(str(Path(folder) / "tokenizer.json"))
    raise ConfigError(f"--gpt2 {s.checkpoint}: no tokenizer.json (save the tokenizer with the model)")


def _context_window(s: Subject) -> int | None:
    """The model's context window from its export or checkpoint; None when neither says."""
    for f in (
        s.export / "assets" / "model_info.json" if s.export else None,
        Path(s.checkpoint) / "config.json" if s.checkpoint else None,
    ):
        if f is not None and f.is_file():
            n = json.loads(f.read_text()).get("n_positions")
            if n:
                return int(n)
    return None


def step_read_bytes(onnx_path: Path) -> tuple[int, int]:
    """(initializer bytes that one decode step reads, bytes per KV cache element) of an
    exported GPT-2 file.

    Initializers that only `Gather` reads (the token and position embedding tables: a step
    reads one row of each) and unused ones are left out; a table tied to the LM head is
    read whole by its MatMul and counts.
    """
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    consumers: dict[str, set[str]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, set()).add(node.op_type)
    total = 0
    for t in graph.initializer:
        if consumers.get(t.name, {"Gather"}) == {"Gather"}:
            continue
        if t.data_location == onnx.TensorProto.EXTERNAL:
            total += int({e.key: e.value for e in t.external_data}.get("length", 0))
        elif t.HasField("raw_data"):
            total += len(t.raw_data)
        else:
            total += onnx.numpy_helper.to_array(t).nbytes
    past = next((i for i in graph.input if i.name == "past_key_0"), None)
    if past is None:
        raise BenchmarkError(f"{onnx_path}: no past_key_0 input; not an exported GPT-2 with a KV cache")
    itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(past.type.tensor_type.elem_type)).itemsize
    return total, itemsize


@dataclass(frozen=True)
class _ServedGraphs:
    """The export's files of the CPU variants (`paths`, by name), the served variant's
    members (`pair`: the variant and the pair's companion) and the names of the files they
    serve (`served`: their int8-cache graphs where the build serves those), and the pair's
    routing."""

    paths: dict
    pair: list
    served: list
    route: dict | None

    def profile(self, profiles: dict) -> dict | None:
        """The served variant's profile among `profiles`: a pair's, each call on the graph
        the build routed it to."""
        from export.latency_model import routed_profile

        main = profiles.get(self.served[0]) if self.served else None
        if main is not None and len(self.served) > 1 and self.served[1] in profiles:
            return routed_profile(main, profiles[self.served[1]], self.route)
        return main


def _served_graphs(s: Subject, export_report: dict, variant: str | None) -> _ServedGraphs:
    from export.api import I8_SUFFIX
    from serving.model_versions import int8_cache_files
    from serving.variant_choice import choose_variant, split_pair

    export, variants = s.export, export_report["variants"]
    paths = {
        n: export / v["files"][s.model]
        for n, v in variants.items()
        if v.get("decode_profile") and v.get("target") == "cpu" and s.model in v.get("files", {})
    }
    main, companion = split_pair(variant or "")
    pair = [m for m in (main, companion) if m]
    # An ONNX Runtime variant served with the export's int8 cache (`aigc build`'s auto): its
    # int8-cache graphs are measured too, in the same turns, and give the served profile.
    route = choose_variant(export_report, s.model, variant, "cpu")[1].get("routing") if companion else None
    cache = (
        int8_cache_files(variants, pair, route=route)[0] if pair and all(m in paths for m in pair) else None
    )
    if cache and not runtimes.of_variant(main).cache_blocks:
        paths.update({f"{m}{I8_SUFFIX}": export / f for m, f in zip(pair, cache, strict=True)})
        served = [f"{m}{I8_SUFFIX}" for m in pair]
    else:
        served = pair
    return _ServedGraphs(paths, pair, served, route)


def _offline(opts: BenchOptions, s: Subject, export_report: dict, variant: str | None) -> dict:
    """Each CPU variant's decode profile, measured now through the serving engine's own
    runner on the exported file with the server's threads (beside the served figures, so
    that a slow minute on a shared machine moves both), and its step against the time the
    step's reads take at the memory bandwidth measured now: at 1 GiB (past every cache) and
    at the variant's own size.

    The served variant gets every batch size up to 8 that is served; the others batch 1
    (their read floor). The export's own profiles stay beside, as `export_decode_profiles`.
    """
    from benchmarks import measure, ratios
    from export.gpt2_eval import decode_profiles

    export = s.export
    info = json.loads((export / "assets" / "model_info.json").read_text())
    per_element = 2 * int(info["n_layer"]) * int(info["n_head"]) * int(info["head_size"])  # K and V
    graphs = _served_graphs(s, export_report, variant)
    paths, pair, pair_served = graphs.paths, graphs.pair, graphs.served
    members = set(pair) | set(pair_served)
    served = tuple(sorted({1, 8} | {c for c in opts.concurrency if c <= 8}))
    gib = measure.read_bandwidth(2**30, opts.threads)
    profiles = decode_profiles(
        paths,
        int(info["n_positions"]),
        batches={n: served if n in members else (1,) for n in paths},
        prefill_lens=(opts.prompt_tokens,),
        threads=opts.threads,
    )
    served_profile = graphs.profile(profiles)
    floors = {}
    for name, profile in profiles.items():
        if runtimes.of_file(paths[name]) is not runtimes.ONNXRUNTIME:
            continue  # bytes a step reads are counted from ONNX initializers (not an OpenVINO IR)
        weights, itemsize = step_read_bytes(paths[name])
        own = measure.read_bandwidth(weights, opts.threads)
        floors[name] = ratios.read_floors(
            profile, weights, per_element * itemsize, {"1gib": gib["gb_per_s"], "model": own["gb_per_s"]}
        )
        floors[name]["bandwidth_at_model_size"] = own
    return {
        "decode_profile": served_profile,
        "served_kv_cache": "i8" if pair_served != pair else "f32",
        "decode_profiles": profiles,
        "export_decode_profiles": {
            n: v["decode_profile"] for n, v in export_report["variants"].items() if v.get("decode_profile")
        },
        "memory_bandwidth_1gib": gib,
        "read_floors": floors,
    }


def run(opts: BenchOptions, url: str, s: Subject, variant: str | None, bar) -> dict:
    """Every text workload served, genai-perf beside, the offline profile, the in-process
    baselines and the peers: the figures `record` files under the component's name."""
    import torch
    from transformers import AutoConfig, GPT2LMHeadModel

    from benchmarks import measure
    from training.data import load_text_corpus

    tok = _tokenizer(s)
    text = load_text_corpus(None)[1]
    prompt = build_prompt(tok, opts.prompt_tokens, text)
    out: dict = {"model": str(s.checkpoint), "variant": variant, "prompt": prompt, "served": {}}
    exp_report = None
    if s.export is not None:
        from export.api import read_report

        exp_report = read_report(s.export)
    # the served graphs loaded (and warmed) before the served runs, for the scaling rounds
    with _ceiling_probe(opts, s, exp_report, variant) as ceiling:
        for c in opts.concurrency:
            step(bar, f"gpt2 served c={c}")
            # c=1 gives the latency percentiles: `repeats` requests; higher c: 2 per stream
            out["served"][str(c)] = measure.served_concurrency(
                url, prompt, opts.new_tokens, c, max(2, opts.repeats) if c == 1 else 2
            )
            bar.update()
        _scaling_rounds(opts, url, prompt, out, bar, ceiling)
    _openai_rounds(opts, url, prompt, out, bar)
    if "1" in out["served"]:
        from benchmarks import genai_perf

        step(bar, "gpt2 genai-perf")
        out["genai_perf"] = genai_perf.run_beside(
            opts.genai_perf,
            url,
            s.checkpoint,
            out["served"]["1"],
            opts.prompt_tokens,
            opts.new_tokens,
            max(16, 2 * opts.repeats),
            opts.out,
        )
    _long_and_mixed(opts, url, s, tok, text, prompt, out, bar)
    _many_users(opts, url, prompt, out, bar)
    step(bar, "gpt2 offline decode profile and read floors")
    if exp_report is not None:
        out["fidelity"] = exp_report["variants"].get(variant or "", {}).get("fidelity", {}).get(s.model)
        # Offline step times of the same file and threads, measured while the server idles
        # (after its streams, as the baselines are): what batching can give at best.
        out.update(_offline(opts, s, exp_report, variant))
    bar.update()
    _engine_probes(opts, s, exp_report, variant, out, bar)
    ids = torch.tensor([tok.encode(prompt).ids])
    eos = AutoConfig.from_pretrained(s.checkpoint).eos_token_id
    if "eager" in opts.baselines:
        step(bar, "gpt2 eager")
        model = GPT2LMHeadModel.from_pretrained(s.checkpoint).eval()
        out["eager"] = measure.generate_baseline(
            measure.hf_generate_fn(model, ids, eos), opts.new_tokens, opts.repeats
        )
        del model
        bar.update()
    if "optimum" in opts.baselines:
        step(bar, "gpt2 optimum")
        model = _optimum_model(opts, s.checkpoint)
        out["optimum"] = measure.generate_baseline(
            measure.hf_generate_fn(model, ids, eos), opts.new_tokens, opts.repeats
        )
        del model
        bar.update()
    if opts.peer_names():
        _bench_peers(opts, s, tok, text, ids[0].tolist(), out, bar)
        if "1" in out["served"]:
            _peer_rounds(opts, url, s, prompt, ids[0].tolist(), out, bar)
    return out


def _again(opts: BenchOptions, bar, label: str, pair) -> list[dict]:
    """Rounds 2..`scaling_rounds` of a pair run back to back (`pair()`, the first round is
    the caller's), each a step of the progress bar."""
    rounds = []
    for r in range(2, opts.scaling_rounds + 1):
        step(bar, f"{label}, round {r}")
        rounds.append(pair())
        bar.update()
    return rounds


def _scaling_rounds(opts: BenchOptions, url: str, prompt: str, out: dict, bar, ceiling=None) -> None:
    """One stream and `scaling_top` streams served again, in turns, `scaling_rounds` in all
    (the first is the pass above): the gain of batching is then taken within a round, not
    between two minutes of a shared machine that other load may have slowed apart. With
    `ceiling` (`_ceiling_probe`), each round also times the served graphs' offline steps at
    batch 1 and `scaling_top` right after its served runs: the round's gain is set against
    the ceiling of that round's minute."""
    from benchmarks import measure

    top = opts.scaling_top()
    if top is None:
        return
    key = str(top)

    def aggregate(c: int) -> float:
        return measure.served_concurrency(url, prompt, opts.new_tokens, c, 2)["aggregate_tokens_per_s"]

    rounds = [
        {
            "c1": out["served"]["1"]["aggregate_tokens_per_s"],
            f"c{top}": out["served"][key]["aggregate_tokens_per_s"],
            **(ceiling() if ceiling else {}),
        }
    ]
    rounds += _again(
        opts,
        bar,
        f"gpt2 served 1 and {top} streams",
        lambda: {"c1": aggregate(1), f"c{top}": aggregate(top), **(ceiling() if ceiling else {})},
    )
    out["scaling_rounds"] = {"concurrency": top, "rounds": rounds}


def _openai_rounds(opts: BenchOptions, url: str, prompt: str, out: dict, bar) -> None:
    """What the OpenAI frontend costs: one stream and `scaling_top` streams through
    `/v1/completions` (streamed, server-sent events) and straight over gRPC, in turns,
    `scaling_rounds` rounds; the order flips each round. A round: {"grpc_c1", "openai_c1",
    "grpc_c<top>", "openai_c<top>"} (aggregate tok/s) and {"grpc_ttft_ms",
    "openai_ttft_ms"} (one stream's TTFT p50)."""
    from benchmarks import measure

    top = opts.scaling_top()
    if top is None:
        return
    log = opts.out / "openai-frontend.log"
    with _openai_frontend(url, log) as base:
        rounds = []
        for r in range(1, opts.scaling_rounds + 1):
            step(bar, f"gpt2 served through the OpenAI frontend and over gRPC, round {r}")
            got: dict = {}
            for path in ("grpc", "openai") if r % 2 else ("openai", "grpc"):
                target, via_openai = (base, True) if path == "openai" else (url, False)
                one = measure.served_concurrency(target, prompt, opts.new_tokens, 1, 8, openai=via_openai)
                many = measure.served_concurrency(target, prompt, opts.new_tokens, top, 2, openai=via_openai)
                got[f"{path}_c1"] = one["aggregate_tokens_per_s"]
                got[f"{path}_c{top}"] = many["aggregate_tokens_per_s"]
                got[f"{path}_ttft_ms"] = one["ttft_ms"]["p50"]
            rounds.append(got)
            bar.update()
    out["openai"] = {"concurrency": top, "rounds": rounds}


@contextlib.contextmanager
def _openai_frontend(url: str, log: Path, timeout_s: float = 60.0):
    """`python -m serving.openai_api` in front of the server at `url`, in a process of its own
    (so that its event loop and threads are not the measuring client's), its log in `log`:
    yields its base URL once `/health` answers 200."""
    with socket.socket() as probe:  # a free port for it
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "serving.openai_api", "--triton-url", url, "--port", str(port)],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise BenchmarkError(f"the OpenAI frontend exited with {proc.returncode}; see {log}")
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=5) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise BenchmarkError(f"the OpenAI frontend was not ready in {timeout_s:.0f} s; see {log}")
            time.sleep(0.2)
        yield base
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


CEILING_ROUNDS = 3  # rounds of the served graphs' steps timed after each scaling round


@contextlib.contextmanager
def _ceiling_probe(opts: BenchOptions, s: Subject, export_report: dict | None, variant: str | None):
    """The served variant's own graphs (its int8-cache ones where those are served; a pair's
    calls each on its routed graph) loaded in this process through the engine's runner for
    as long as the block runs, warmed by one untimed round: yields a function that times,
    while the server idles, the decode step at batch 1 and `scaling_top` at the short
    requests' mean cache length ({"step1_ms", "step<top>_ms"}: the fastest of
    `CEILING_ROUNDS` rounds, as a profile's; one round alone read batch 1 at 4.71 ms in a
    CI run whose other rounds read 2.67 and 3.03). Loaded once,
    before the served runs, so that no round times runners just created: rounds that loaded
    their own (CI on 00c0e4b) read the batch-1 step at 3.36-3.94 ms against 2.50-2.90 in the
    profile minutes later, and a fresh runner's first calls are its slowest. Yields None
    without the export, a served variant in it, or a scaling concurrency."""
    top = opts.scaling_top()
    graphs = _served_graphs(s, export_report, variant) if export_report is not None and variant else None
    if (
        top is None
        or graphs is None
        or not graphs.served
        or not all(n in graphs.paths for n in graphs.served)
    ):
        yield None
        return
    from export.gpt2_eval import profile_of_rounds, profiler, timed_rounds

    info = json.loads((s.export / "assets" / "model_info.json").read_text())
    cached = int(opts.prompt_tokens + opts.new_tokens / 2)
    with profiler(
        {n: graphs.paths[n] for n in graphs.served},
        int(info["n_positions"]),
        batches={n: (1, top) for n in graphs.served},
        past_lens=(cached,),
        prefill_lens=(opts.prompt_tokens,),
        threads=opts.threads,
    ) as one_round:
        one_round()  # warm-up

        def probe() -> dict:
            samples = timed_rounds(one_round, CEILING_ROUNDS)
            figures = {n: profile_of_rounds(by_key) for n, by_key in samples.items()}
            steps = graphs.profile(figures)["step_ms"]
            past = next(iter(steps["1"]))
            return {"step1_ms": round(steps["1"][past], 3), f"step{top}_ms": round(steps[str(top)][past], 3)}

        yield probe


def _peer_rounds(
    opts: BenchOptions, url: str, s: Subject, prompt: str, ids: list[int], out: dict, bar
) -> None:
    """The one-stream served run and the fastest peer's again, in turns, `peer_rounds` in all
    (the first is the run above): other load on the machine then falls on both sides of a
    round's ratio instead of on one side of the whole comparison."""
    from benchmarks import measure, peers

    name = peers.best(out["peers"])
    if name is None:
        bar.update(opts.peer_rounds - 1)
        return
    rounds = [
        {
            "served": out["served"]["1"]["per_stream_tokens_per_s"],
            "peer": out["peers"][name]["tokens_per_s"],
            **_ttfts(out["served"]["1"], out["peers"][name]),
        }
    ]
    work = [{"key": "short", "ids": ids, "new_tokens": opts.new_tokens, "repeats": opts.repeats}]
    for r in range(2, opts.peer_rounds + 1):
        step(bar, f"gpt2 served and {name}, round {r}")
        served = measure.served_concurrency(url, prompt, opts.new_tokens, 1, max(2, opts.repeats))
        peer = peers.bench((name,), s.checkpoint, opts.cache, opts.threads, work)[name]
        bar.update()
        if "skipped" in peer:
            break
        rounds.append(
            {
                "served": served["per_stream_tokens_per_s"],
                "peer": peer["short"]["tokens_per_s"],
                **_ttfts(served, peer["short"]),
            }
        )
    out["peer_rounds"] = {"peer": name, "rounds": rounds}


def _ttfts(served: dict, peer: dict) -> dict:
    """A round's time to first token (p50, ms) served and on the peer, where both have one."""
    a, b = (served.get("ttft_ms") or {}).get("p50"), (peer.get("ttft_ms") or {}).get("p50")
    return {"served_ttft_ms": a, "peer_ttft_ms": b} if a is not None and b is not None else {}


def _bench_peers(opts: BenchOptions, s: Subject, tok, text: str, ids: list[int], out: dict, bar) -> None:
    """The peer runtimes on the short workload (same ids, tokens and threads as the served
    run), then the long one for the fastest peer (each engine's fastest in a full run)."""
    from benchmarks import peers

    def progress(name: str) -> None:
        step(bar, f"gpt2 peer {name}")

    names = opts.peer_names()
    short = [{"key": "short", "ids": ids, "new_tokens": opts.new_tokens, "repeats": opts.repeats}]
    figures = peers.bench(names, s.checkpoint, opts.cache, opts.threads, short, progress)
    bar.update(len(names))
    out["peers"] = {
        n: f if "skipped" in f else {**{k: v for k, v in f.items() if k != "short"}, **f["short"]}
        for n, f in figures.items()
    }
    if not opts.long_prompt_tokens:
        return
    if "long" not in out:  # not measured served (the context window): nothing to compare with
        bar.update()
        return
    picks = [peers.best(out["peers"])] if opts.quick else peers.best_per_family(out["peers"])
    picks = [p for p in picks if p is not None]
    if picks:
        long_ids = tok.encode(build_prompt(tok, opts.long_prompt_tokens, text)).ids
        # 2 timed requests after a warm-up, as the served long workload at one stream
        work = [{"key": "long", "ids": long_ids, "new_tokens": opts.long_new_tokens, "repeats": 2}]
        long = peers.bench(
            picks, s.checkpoint, opts.cache, opts.threads, work, lambda n: progress(f"{n} long")
        )
        out["long"]["peers"] = {n: f if "skipped" in f else f["long"] for n, f in long.items()}
    bar.update()


def _long_rounds_concurrency(opts: BenchOptions) -> int | None:
    """The concurrency at which the long workload is set against the short one in rounds:
    the most long streams that are also served short (8 by default), above 1."""
    both = [c for c in opts.long_concurrency if c > 1 and c in opts.concurrency]
    return max(both) if both and opts.long_prompt_tokens else None


def _long_and_mixed(
    opts: BenchOptions, url: str, s: Subject, tok, text: str, prompt: str, out: dict, bar
) -> None:
    """The long workload at each `long_concurrency`, then the mixed one, into `out`."""
    from benchmarks import measure

    if not opts.long_prompt_tokens:
        bar.update(len(opts.long_concurrency) + 1)
        return
    window = _context_window(s)
    need = {
        "long": opts.long_prompt_tokens + max(opts.long_new_tokens, opts.mixed_long_new_tokens),
        "mixed short": opts.prompt_tokens + opts.mixed_new_tokens if opts.mixed_streams else 0,
    }
    too_long = {k: n for k, n in need.items() if window is not None and n > window}
    if too_long:
        out["long_skipped"] = (
            f"{', '.join(f'{k} requests need {n} tokens' for k, n in too_long.items())}; "
            f"the context window is {window}"
        )
        logger.warning("gpt2 long and mixed workloads not measured: %s", out["long_skipped"])
        bar.update(len(opts.long_concurrency) + 1)
        return
    long_prompt = build_prompt(tok, opts.long_prompt_tokens, text)
    out["long"] = {
        "prompt_tokens": len(tok.encode(long_prompt).ids),
        "new_tokens": opts.long_new_tokens,
        "served": {},
    }

    def long_run(c: int) -> dict:
        # Warm-up requests of 2 tokens: each connection's first call, and the long prefill's
        # buffers, stay outside the timed requests without a full long generation each.
        return measure.served_concurrency(url, long_prompt, opts.long_new_tokens, c, 2, warmup_tokens=2)

    def short_run(c: int) -> dict:
        return measure.served_concurrency(url, prompt, opts.new_tokens, c, 2)

    for c in opts.long_concurrency:
        step(bar, f"gpt2 long c={c}")
        out["long"]["served"][str(c)] = long_run(c)
        bar.update()
    top = _long_rounds_concurrency(opts)
    if top is not None:
        # The long streams' gaps against the short ones' at the same concurrency, each pair
        # run back to back, `scaling_rounds` pairs: the short pass of the run's start is
        # minutes away, and a quiet or a loaded minute on one side moved the ratio 1.2-1.9.
        rounds = [{"long": out["long"]["served"][str(top)], "short": short_run(top)}]
        rounds += _again(
            opts,
            bar,
            f"gpt2 long and short c={top}",
            lambda: {"long": long_run(top), "short": short_run(top)},
        )
        out["long"]["rounds"] = {
            "concurrency": top,
            "itl_p50_ms": [
                {"long": x["long"]["itl_ms"]["p50"], "short": x["short"]["itl_ms"]["p50"]} for x in rounds
            ],
            "request_itl_p50_ms": [
                {"long": x["long"]["request_itl_ms"]["p50"], "short": x["short"]["request_itl_ms"]["p50"]}
                for x in rounds
            ],
        }
    if opts.mixed_streams:
        step(bar, "gpt2 mixed")
        out["mixed"] = {
            "short_prompt_tokens": opts.prompt_tokens,
            "short_new_tokens": opts.mixed_new_tokens,
            "long_prompt_tokens": out["long"]["prompt_tokens"],
            "long_new_tokens": opts.mixed_long_new_tokens,
            **measure.served_mixed(
                url,
                prompt,
                opts.mixed_new_tokens,
                opts.mixed_streams,
                # a prompt of its own for each arrival: a prompt the cache already holds
                # (the long workload's) would be read, not prefilled
                [
                    build_prompt(tok, opts.long_prompt_tokens, text, offset=(k + 1) * opts.long_prompt_tokens)
                    for k in range(opts.mixed_arrivals)
                ],
                opts.mixed_long_new_tokens,
                opts.mixed_arrivals,
                opts.mixed_period_s,
            ),
        }
    bar.update()


def _many_users(opts: BenchOptions, url: str, prompt: str, out: dict, bar) -> None:
    """`many_users` short streams at once, one request each (a warm-up of 2 tokens per
    connection first), with the server's resident memory before and after."""
    from benchmarks import measure

    if not opts.many_users:
        bar.update()
        return
    step(bar, f"gpt2 many users c={opts.many_users}")

    def many() -> dict:
        return measure.served_concurrency(url, prompt, opts.new_tokens, opts.many_users, 1, warmup_tokens=2)

    def eight() -> float:
        return measure.served_concurrency(url, prompt, opts.new_tokens, 8, 2)["aggregate_tokens_per_s"]

    before = measure.process_tree_rss_mib(opts.server_pid) if opts.server_pid else None
    figures = many()
    after = measure.process_tree_rss_mib(opts.server_pid) if opts.server_pid else None
    out["many_users"] = {**figures, "server_rss_mib": {"before": before, "after": after}}
    bar.update()
    if 8 in opts.concurrency and opts.many_users > 8:
        # The many streams' aggregate against 8 streams' run right after, `scaling_rounds`
        # pairs: the 8-stream pass of the run's start is minutes away.
        rounds = [{"many": figures["aggregate_tokens_per_s"], "c8": eight()}]
        rounds += _again(
            opts,
            bar,
            f"gpt2 many users c={opts.many_users} and 8",
            lambda: {"many": many()["aggregate_tokens_per_s"], "c8": eight()},
        )
        out["many_users"]["rounds"] = rounds


def probe_variant(exp_report: dict, served: str | None) -> str | None:
    """The block-runner variant the engine probes measure: the served one if it is, else the
    first of the OpenVINO variants that passed its gate (int4 first)."""
    candidates = [served] + [v for v in ("ov-int4", "ov-int8", "ov-fp32") if v != served]
    for v in candidates:
        entry = exp_report["variants"].get(v or "")
        if v and entry and entry.get("passed") and runtimes.of_variant(v).cache_blocks:
            return v
    return None


def _engine_probes(
    opts: BenchOptions, s: Subject, exp_report: dict | None, served: str | None, out: dict, bar
) -> None:
    """The engine's offline probes (benchmarks.engine_probe) on the export's block-runner
    variant, and that variant's KV-cache measurement from the export (u8 against f32)."""
    if not opts.engine_probe or exp_report is None:
        bar.update()
        return
    from benchmarks import engine_probe

    probed = probe_variant(exp_report, served)
    if probed is None:
        out["engine_probe"] = {"skipped": "the export has no OpenVINO variant that passed its gate"}
        bar.update()
        return
    step(bar, f"gpt2 engine probes on {probed}")
    out["engine_probe"] = engine_probe.probe_export(s.export, probed, opts.threads)
    kv = exp_report["variants"][probed].get("kv_cache")
    if kv:
        out["engine_probe"]["kv_cache"] = kv
    # a served slot runner (ONNX Runtime) reuses prefixes by slot: its own prefix probes
    main = (served or "").split("+")[0]
    entry = exp_report["variants"].get(main)
    if main and entry and entry.get("passed") and not runtimes.of_variant(main).cache_blocks:
        step(bar, f"gpt2 engine prefix, row-move and mixed-call probes on {main}")
        out["engine_probe"]["served"] = engine_probe.probe_export(
            s.export, main, opts.threads, ("prefix", "shared_prefix", "moves", "mixed")
        )
    bar.update()


def _optimum_model(opts: BenchOptions, ckpt: Path):
    """Optimum's ORTModelForCausalLM on the same checkpoint, exported once into the cache."""
    import onnxruntime as ort
    from optimum.onnxruntime import ORTModelForCausalLM

    folder = opts.cache / f"optimum-{Path(ckpt).name}"
    source = {"checkpoint": str(Path(ckpt).resolve()), "checkpoint_mtime": newest_mtime(ckpt)}
    marker = folder / "aigc_bench_source.json"
    try:
        fresh = json.loads(marker.read_text()) == source and (folder / "model.onnx").is_file()
    except (OSError, json.JSONDecodeError):
        fresh = False
    if not fresh:
        logger.info("exporting %s with Optimum into %s", ckpt, folder)
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        ORTModelForCausalLM.from_pretrained(ckpt, export=True, use_cache=True).save_pretrained(tmp)
        (tmp / marker.name).write_text(json.dumps(source) + "\n")
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
    so = ort.SessionOptions()
    so.intra_op_num_threads = opts.threads
    so.inter_op_num_threads = 1
    return ORTModelForCausalLM.from_pretrained(
        folder, use_cache=True, session_options=so, provider="CPUExecutionProvider"
    )
