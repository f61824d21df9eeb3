"""Which exported variant `aigc build --variant auto` serves, and why.

GPT-2 variants are ranked by the expected latency of a stated workload (prompt tokens, new
tokens, concurrent streams) from the decode profile the export measured on this machine
(`export.latency_model`). Image models, and GPT-2 exports without a profile, rank by their
batch-1 latency.
"""

from __future__ import annotations

from aigc.errors import BuildError
from export.latency_model import Workload, expected_request


def runtime_of(variant: dict) -> str:
    return variant.get("runtime", "onnxruntime")


def _candidates(report: dict, component: str, target: str, runtime: str = "auto") -> list[str]:
    variants = report["variants"]
    passing = [
        name
        for name, v in variants.items()
        if v["passed"] is True
        and v["target"] in (target, "cpu")
        and component in v["files"]
        and runtime in ("auto", runtime_of(v))
        and (target == "cpu" or runtime_of(v) == "onnxruntime")  # OpenVINO here serves CPUs
    ]
    if target == "cpu":
        return [n for n in passing if variants[n]["target"] == "cpu"]
    # Profiles were measured on the exporting machine's CPU; on a GPU the variant made for it
    # (fp16: device kernels for every op, half the cache) is the one to serve.
    return [n for n in passing if variants[n]["target"] == "gpu"] or passing


def choose_variant(
    report: dict,
    component: str,
    variant: str,
    target: str,
    workload: Workload | None = None,
    runtime: str = "auto",
) -> tuple[str, dict]:
    """(variant, why). `auto`: the passing variant for `target` (and `runtime`, unless `auto`)
    with the lowest expected latency, whichever runtime runs it; a named variant must exist,
    have passed and suit `runtime`, else BuildError says why."""
    variants = report["variants"]
    if variant != "auto":
        v = variants.get(variant)
        if v is None:
            raise BuildError(
                f"--variant {variant}: not in the export of {report['model']} (has {', '.join(variants)})"
            )
        if v["passed"] is not True:
            raise BuildError(f"--variant {variant} of {report['model']} did not pass its gate: {v['reason']}")
        if runtime not in ("auto", runtime_of(v)):
            raise BuildError(f"--variant {variant} runs on {runtime_of(v)}, not on --runtime {runtime}")
        return variant, {"rule": "named by --variant", "runtime": runtime_of(v)}
    candidates = _candidates(report, component, target, runtime)
    if not candidates:
        scope = "" if runtime == "auto" else f" on --runtime {runtime}"
        raise BuildError(f"no variant of {report['model']} passed its gate for {component}{scope}")
    workload = workload or Workload()
    profiled = all(
        isinstance(variants[n].get("decode_profile", {}).get("step_ms", {}).get("1"), dict)
        for n in candidates
    )
    if profiled and target == "cpu":
        costs = {n: expected_request(variants[n]["decode_profile"], workload) for n in candidates}
        best = min(candidates, key=lambda n: (costs[n]["request_ms"], n))
        why = {
            "rule": "lowest expected request latency for the workload (profile measured at export)",
            "runtime": runtime_of(variants[best]),
            "runtimes_considered": sorted({runtime_of(variants[n]) for n in candidates}),
            "workload": workload.as_dict(),
            "expected": costs,
        }
        window = int(report.get("model_info", {}).get("n_positions", 0))
        if window and workload.prompt_tokens + workload.new_tokens > window:
            why["note"] = (
                f"prompt + new tokens ({workload.prompt_tokens + workload.new_tokens}) exceed the context "
                f"window of {window}: the figures extrapolate the profile"
            )
        return best, why
    costs = {n: variants[n]["latency_ms"].get(component, float("inf")) for n in candidates}
    best = min(candidates, key=lambda n: (costs[n], n))
    rule = "lowest batch-1 latency measured at export"
    if target == "gpu":
        rule = "made for GPUs (CPU-measured latencies do not rank GPU variants); then " + rule
    return best, {"rule": rule, "runtime": runtime_of(variants[best]), "latency_ms": costs}


def describe(component: str, variant: str, why: dict) -> str:
    """One readable paragraph for `aigc build` and the export report."""
    if "expected" not in why:
        return f"{component}: {variant} ({why['rule']})"
    w = why["workload"]
    lines = [
        f"{component}: {variant} on {why['runtime']} - {why['rule']} "
        f"(runtimes compared: {', '.join(why['runtimes_considered'])}): {w['streams']} streams, "
        f"{w['prompt_tokens']} prompt + {w['new_tokens']} new tokens"
    ]
    if why.get("note"):
        lines.append(f"  ({why['note']})")
    for name, e in sorted(why["expected"].items(), key=lambda kv: kv[1]["request_ms"]):
        lines.append(
            f"  {name:7s} request {e['request_ms']:9.1f} ms = prefill {e['prefill_ms']:.1f} ms x {w['streams']} "
            f"+ step {e['step_ms']:.2f} ms x {w['new_tokens'] - 1}  ({e['tokens_per_s_per_stream']} tok/s a stream)"
        )
    return "\n".join(lines)
