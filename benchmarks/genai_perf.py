"""genai-perf, NVIDIA's LLM benchmark client, against the served `gpt2`, beside `aigc bench`'s
own client on the same workload.

genai-perf drives perf_analyzer (C++) over gRPC streaming with synthetic prompts of the
bench's prompt length and a deterministic output length, once with each Triton LLM schema
(`--backend vllm`: the `sampling_parameters` JSON; `--backend tensorrtllm`: the input
tensors). Its time to first token, inter-token latency and output throughput then sit beside
the bench's own figures for one stream, with their ratios: two independent clients agreeing
is the check that the bench's client measures the server and not itself.

genai-perf 0.0.16 needs numpy 2 (this project pins 1.26): it lives in a venv of its own, and
perf_analyzer is the binary of the tritonclient 2.48 wheel (it needs libb64 and libcudart.so.12
on LD_LIBRARY_PATH); `--genai-perf PATH` names the genai-perf executable, `auto` looks on PATH.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from aigc.errors import BenchmarkError, ConfigError

BACKENDS = ("vllm", "tensorrtllm")
# genai-perf's JSON keys -> ours; its times are milliseconds
FIGURES = {
    "time_to_first_token": "ttft_ms",
    "inter_token_latency": "itl_ms",
    "request_latency": "latency_ms",
}


def locate(choice: str) -> tuple[str, str] | None:
    """(genai-perf, perf_analyzer) executables; None when `choice` is "off", or "auto" and
    either is missing. A path that is not an executable is a ConfigError."""
    if choice == "off":
        return None
    if choice == "auto":
        genai_perf = shutil.which("genai-perf")
    else:
        path = Path(choice)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise ConfigError(f"--genai-perf {choice}: not an executable file (a path, auto or off)")
        genai_perf = str(path)
    if genai_perf is None:
        return None
    beside = Path(genai_perf).parent / "perf_analyzer"
    perf_analyzer = str(beside) if beside.is_file() else shutil.which("perf_analyzer")
    return (genai_perf, perf_analyzer) if perf_analyzer else None


def profile(
    genai_perf: str,
    perf_analyzer: str,
    url: str,
    tokenizer: Path,
    backend: str,
    prompt_tokens: int,
    new_tokens: int,
    requests: int,
    workdir: Path,
    concurrency: int = 1,
) -> dict:
    """One `genai-perf profile` run; its figures (ms, tokens/s) and what it sent."""
    if backend not in BACKENDS:
        raise ConfigError(f"genai-perf backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    artifacts = workdir / f"genai-perf-{backend}"
    shutil.rmtree(artifacts, ignore_errors=True)
    cmd = [genai_perf, "profile", "-m", "gpt2", "--backend", backend, "--endpoint-type", "kserve"]
    cmd += [
        "--streaming",
        "-u",
        url,
        "--tokenizer",
        str(Path(tokenizer).resolve()),
        "--concurrency",
        str(concurrency),
    ]
    cmd += ["--synthetic-input-tokens-mean", str(prompt_tokens), "--synthetic-input-tokens-stddev", "0"]
    cmd += ["--output-tokens-mean", str(new_tokens), "--output-tokens-mean-deterministic"]
    # (perf_analyzer 2.48, the last with a binary in its wheel, has no --warmup-request-count)
    cmd += ["--request-count", str(requests), "--artifact-dir", str(artifacts)]
    env = dict(os.environ)
    env["PATH"] = f"{Path(perf_analyzer).parent}{os.pathsep}{env.get('PATH', '')}"
    workdir.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, cwd=workdir, env=env)
    output = done.stdout + done.stderr
    if done.returncode != 0:
        raise BenchmarkError(f"genai-perf --backend {backend} failed ({done.returncode}): {output[-2000:]}")
    exports = list(artifacts.glob("*/profile_export_genai_perf.json"))
    if len(exports) != 1:
        raise BenchmarkError(f"genai-perf --backend {backend} wrote no profile under {artifacts}")
    data = json.loads(exports[0].read_text())
    out = {"backend": backend, "concurrency": concurrency, "requests": int(data["request_count"]["avg"])}
    for key, name in FIGURES.items():
        out[name] = {"avg": data[key]["avg"], "p50": data[key]["p50"], "p99": data[key]["p99"]}
    out["output_tokens_per_s"] = data["output_token_throughput"]["avg"]
    out["output_tokens_per_request"] = data["output_sequence_length"]["avg"]
    out["command"] = " ".join(cmd[:1] + [Path(c).name if c == genai_perf else c for c in cmd[1:]])
    return out


def beside_ours(theirs: dict, ours: dict) -> dict:
    """genai-perf's over ours, one stream: mean TTFT, mean ITL, output tokens/s. Means, since
    genai-perf's ITL is each request's mean gap ((latency - TTFT) / (tokens - 1)), not the
    median of every gap the bench reports."""
    return {
        "ttft_mean": round(theirs["ttft_ms"]["avg"] / ours["ttft_ms"]["mean"], 3),
        "itl_mean": round(theirs["itl_ms"]["avg"] / ours["itl_ms"]["mean"], 3),
        "tokens_per_s": round(theirs["output_tokens_per_s"] / ours["aggregate_tokens_per_s"], 3),
    }


def run_beside(
    genai_perf_choice: str,
    url: str,
    tokenizer: Path,
    ours: dict,
    prompt_tokens: int,
    new_tokens: int,
    requests: int,
    workdir: Path,
) -> dict:
    """Both backends' profiles with their ratios to `ours` (the bench's one-stream figures),
    or {"skipped": why}. A failing genai-perf is reported, not raised: it is a second opinion."""
    found = locate(genai_perf_choice)
    if found is None:
        why = "off" if genai_perf_choice == "off" else "genai-perf or perf_analyzer is not on PATH"
        return {"skipped": why}
    out: dict = {}
    for backend in BACKENDS:
        try:
            theirs = profile(*found, url, tokenizer, backend, prompt_tokens, new_tokens, requests, workdir)
        except (BenchmarkError, subprocess.TimeoutExpired, KeyError, ValueError) as exc:
            out[backend] = {"skipped": f"{type(exc).__name__}: {str(exc)[-500:]}"}
            continue
        out[backend] = {**theirs, "vs_ours": beside_ours(theirs, ours)}
    return out
