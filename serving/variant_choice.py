"""Which exported variant `aigc build --variant auto` serves, and why.

GPT-2 variants are ranked by the expected latency of a stated workload (prompt tokens, new
tokens, concurrent streams) from the decode profile the export measured on this machine
(`export.latency_model`). Image models, and GPT-2 exports without a profile, rank by their
batch-1 latency.
"""

from __future__ import annotations

from aigc.errors import BuildError
from engine import runtimes
from export.latency_model import Workload, expected_request, expected_request_pair

PAIR = "+"  # "int4+int8": int4's graph with int8's as its companion (shared KV slots)
# Expected latencies within this share of the best are a tie. A profile measured on a shared
# machine moves a variant's figure by up to 5 % from one export to the next (two exports on the
# 2-core EPYC: ov-int4 838 / 881 ms, int4+int8 866 / 869 ms at 4 streams), which flipped the
# served variant between runtimes whose one-stream steps differ by half (2.5 against 3.8 ms).
TIE = 0.05


def split_pair(name: str) -> tuple[str, str | None]:
    main, _, companion = name.partition(PAIR)
    return main, companion or None


def _pairs(report: dict, candidates: list[str]) -> list[tuple[str, str]]:
    """Two profiled CPU variants of a runtime that pairs graphs can share the KV slots (same
    cache layout)."""
    variants = report["variants"]
    pairable = [n for n in candidates if runtime_of(variants[n]).pairs and variants[n]["target"] == "cpu"]
    return [
        (a, b)
        for a in pairable
        for b in pairable
        if a != b and runtime_of(variants[a]) is runtime_of(variants[b])
    ]


def runtime_of(variant: dict) -> runtimes.Runtime:
    """The runtime an export report's variant entry runs on."""
    return runtimes.get(variant.get("runtime", runtimes.DEFAULT.name))


def _candidates(report: dict, component: str, target: str, runtime: str = "auto") -> list[str]:
    variants = report["variants"]
    passing = [
        name
        for name, v in variants.items()
        if v["passed"] is True
        and v["target"] in (target, "cpu")
        and component in v["files"]
        and runtime in (runtimes.AUTO, runtime_of(v).name)
        and target in runtime_of(v).targets
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
    if variant != "auto" and PAIR in variant:
        return _named_pair(report, component, variant, target, workload or Workload(), runtime)
    if variant != "auto":
        v = variants.get(variant)
        if v is None:
            raise BuildError(
                f"--variant {variant}: not in the export of {report['model']} (has {', '.join(variants)})"
            )
        if v["passed"] is not True:
            raise BuildError(f"--variant {variant} of {report['model']} did not pass its gate: {v['reason']}")
        if runtime not in ("auto", runtime_of(v).name):
            raise BuildError(f"--variant {variant} runs on {runtime_of(v).name}, not on --runtime {runtime}")
        return variant, {"rule": "named by --variant", "runtime": runtime_of(v).name}
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
        for main, companion in _pairs(report, candidates):
            pair = expected_request_pair(
                variants[main]["decode_profile"], variants[companion]["decode_profile"], workload
            )
            route = pair["routing"]
            companion_used = route["companion_prefill"] or route["companion_from_rows"]
            main_used = route["companion_from_rows"] != 1  # 1: the companion decodes every step
            if companion_used and main_used:
                costs[f"{main}{PAIR}{companion}"] = pair
        # Ties at the workload's stream count (within TIE of the best; a pair whose companion
        # decodes those steps is one) go to the lower latency for one stream, then to a single
        # graph (less memory).
        alone = Workload(workload.prompt_tokens, workload.new_tokens, 1)
        one = {n: _cost(variants, n, alone) for n in costs}
        fastest = min(c["request_ms"] for c in costs.values())
        tied = [n for n in costs if costs[n]["request_ms"] <= fastest * (1 + TIE)]
        best = min(tied, key=lambda n: (one[n], PAIR in n, costs[n]["request_ms"], n))
        why = {
            "rule": (
                "lowest expected request latency for the workload (profile measured at export); within "
                f"{TIE:.0%} of it, the lowest for one stream"
            ),
            "runtime": runtime_of(variants[split_pair(best)[0]]).name,
            "runtimes_considered": sorted({runtime_of(variants[n]).name for n in candidates}),
            "workload": workload.as_dict(),
            "expected": costs,
        }
        if PAIR in best:
            why["routing"] = costs[best]["routing"]
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
    return best, {"rule": rule, "runtime": runtime_of(variants[best]).name, "latency_ms": costs}


def _cost(variants: dict, name: str, workload: Workload) -> float:
    main, companion = split_pair(name)
    if companion is None:
        return expected_request(variants[main]["decode_profile"], workload)["request_ms"]
    pair = expected_request_pair(
        variants[main]["decode_profile"], variants[companion]["decode_profile"], workload
    )
    return pair["request_ms"]


def _named_pair(report, component, name, target, workload, runtime) -> tuple[str, dict]:
    variants = report["variants"]
    main, companion = split_pair(name)
    for v in (main, companion):
        if v not in variants:
            raise BuildError(
                f"--variant {name}: {v} is not in the export of {report['model']} (has {', '.join(variants)})"
            )
        if variants[v]["passed"] is not True:
            raise BuildError(f"--variant {name}: {v} did not pass its gate: {variants[v]['reason']}")
        if not runtime_of(variants[v]).pairs or variants[v]["target"] != "cpu" or target != "cpu":
            pairing = ", ".join(r.name for r in runtimes.RUNTIMES if r.pairs)
            raise BuildError(f"--variant {name}: a pair needs two CPU variants of {pairing} and --target cpu")
        if runtime_of(variants[v]) is not runtime_of(variants[main]):
            raise BuildError(f"--variant {name}: both graphs of a pair must run on one runtime")
        if not isinstance(variants[v].get("decode_profile", {}).get("step_ms"), dict):
            raise BuildError(
                f"--variant {name}: {v} has no decode profile to route calls by (re-run `aigc export`)"
            )
    served_by = runtime_of(variants[main]).name
    if runtime not in (runtimes.AUTO, served_by):
        raise BuildError(f"--variant {name} runs on {served_by}, not on --runtime {runtime}")
    pair = expected_request_pair(
        variants[main]["decode_profile"], variants[companion]["decode_profile"], workload
    )
    return name, {"rule": "named by --variant", "runtime": served_by, "routing": pair["routing"]}


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
    if why.get("routing"):
        main, companion = split_pair(variant)
        r = why["routing"]
        parts = (["prefills"] if r["companion_prefill"] else []) + (
            [f"decode steps of {r['companion_from_rows']}+ streams"] if r["companion_from_rows"] else []
        )
        lines.append(f"  {main} decodes; {companion} (sharing its KV slots) runs the {' and '.join(parts)}")
    for name, e in sorted(why["expected"].items(), key=lambda kv: kv[1]["request_ms"]):
        lines.append(
            f"  {name:9s} request {e['request_ms']:9.1f} ms = prefill {e['prefill_ms']:.1f} ms x {w['streams']} "
            f"+ step {e['step_ms']:.2f} ms x {w['new_tokens'] - 1}  ({e['tokens_per_s_per_stream']} tok/s a stream)"
        )
    return "\n".join(lines)
