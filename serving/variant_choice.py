"""Which exported variant `aigc build --variant auto` serves, and why.

GPT-2 variants are ranked by the expected latency of a stated workload (prompt tokens, new
tokens, concurrent streams) from the decode profile the export measured on this machine
(`export.latency_model`). Image models, and GPT-2 exports without a profile, rank by their
batch-1 latency.
"""

from __future__ import annotations

from aigc.errors import BuildError
from export.latency_model import Workload, expected_request


def _candidates(report: dict, component: str, target: str) -> list[str]:
    variants = report["variants"]
    passing = [
        name
        for name, v in variants.items()
        if v["passed"] is True and v["target"] in (target, "cpu") and component in v["files"]
    ]
    if target == "cpu":
        return [n for n in passing if variants[n]["target"] == "cpu"]
    # Profiles were measured on the exporting machine's CPU; on a GPU the variant made for it
    # (fp16: device kernels for every op, half the cache) is the one to serve.
    return [n for n in passing if variants[n]["target"] == "gpu"] or passing


def choose_variant(
    report: dict, component: str, variant: str, target: str, workload: Workload | None = None
) -> tuple[str, dict]:
    """(variant, why). `auto`: the passing variant for `target` with the lowest expected
    latency; a named variant must exist and have passed, else BuildError says why."""
    variants = report["variants"]
    if variant != "auto":
        v = variants.get(variant)
        if v is None:
            raise BuildError(
                f"--variant {variant}: not in the export of {report['model']} (has {', '.join(variants)})"
            )
        if v["passed"] is not True:
            raise BuildError(f"--variant {variant} of {report['model']} did not pass its gate: {v['reason']}")
        return variant, {"rule": "named by --variant"}
    candidates = _candidates(report, component, target)
    if not candidates:
        raise BuildError(f"no variant of {report['model']} passed its gate for {component}")
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
    return best, {"rule": rule, "latency_ms": costs}


def describe(component: str, variant: str, why: dict) -> str:
    """One readable paragraph for `aigc build` and the export report."""
    if "expected" not in why:
        return f"{component}: {variant} ({why['rule']})"
    w = why["workload"]
    lines = [
        f"{component}: {variant} - {why['rule']}: {w['streams']} streams, "
        f"{w['prompt_tokens']} prompt + {w['new_tokens']} new tokens"
    ]
    if why.get("note"):
        lines.append(f"  ({why['note']})")
    for name, e in sorted(why["expected"].items(), key=lambda kv: kv[1]["request_ms"]):
        lines.append(
            f"  {name:5s} request {e['request_ms']:9.1f} ms = prefill {e['prefill_ms']:.1f} ms x {w['streams']} "
            f"+ step {e['step_ms']:.2f} ms x {w['new_tokens'] - 1}  ({e['tokens_per_s_per_stream']} tok/s a stream)"
        )
    return "\n".join(lines)
