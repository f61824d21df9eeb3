"""An 8-bit KV cache for ONNX Runtime's graphs: ONNX Runtime's CPU `GroupQueryAttention`
stores its cache as int8 with a scale per layer (`k_quant_type` / `v_quant_type`), quantizing
each new position as it writes it and dequantizing as it reads. The scales are calibrated on
the fp32 reference graph's keys and values over the held-out windows; the graph is the
variant's own with its cache inputs and outputs retyped and the scales added."""

from __future__ import annotations

from pathlib import Path

import numpy as np

# What ONNX Runtime's GroupQueryAttention calls the granularities of its cache scales, and
# the shape of a scale at each (one per tensor, or one per head and channel).
GRANULARITIES = ("PER_TENSOR", "PER_CHANNEL")
QMAX = 127.0
# Room above the calibrated peak: text that reaches further than the calibration text is
# clipped only past 1.25x its peak, for a quarter of a step's resolution.
HEADROOM = 1.25
I8_FILE = "gpt2-kv-i8.onnx"  # beside the variant's gpt2.onnx
# The int8 cache is chosen where a long request (LONG_NEW tokens after a prompt of the
# profile's long cache, at batch 8: eight such prompts prefilled) is at least 3 % faster
# than with f32, a short one (16 prompt tokens -> LONG_NEW) at batch 8 no more than 5 %
# slower, and one alone (batch 1) no more than 10 %.
# At batch 1 the short request's cache is ~50 positions: int8 saves it next to nothing and
# the measured ratio is noise around 1 (the int4 graph on the 2-core AVX-512 EPYC, the same
# files profiled four times: 0.84, 0.99, 1.06, 1.08), where batch 8 moves by 2-5 %.
_LONG_GAIN, _SHORT_SLACK, _ALONE_SLACK, LONG_NEW = 0.97, 1.05, 1.10, 64


def calibrate(session, windows: np.ndarray) -> dict[str, np.ndarray]:
    """Largest |key| and |value| the reference graph writes to each layer's cache over the
    held-out `windows`, per head and channel: {"k": (layers, heads, head_size), "v": ...}."""
    from export import gpt2_eval as ev

    peaks: dict[str, np.ndarray] = {}
    for w in windows:
        _, presents = ev.forward(session, w[None, :])
        for name, kv in presents.items():  # past_key_3: (1, heads, T, head_size)
            kind, layer = ("k" if "_key_" in name else "v"), int(name.rsplit("_", 1)[1])
            peak = np.abs(kv[0]).max(axis=1)  # (heads, head_size)
            stack = peaks.setdefault(kind, {})
            stack[layer] = peak if layer not in stack else np.maximum(stack[layer], peak)
    return {kind: np.stack([by_layer[i] for i in sorted(by_layer)]) for kind, by_layer in peaks.items()}


def scales(peaks: dict[str, np.ndarray], granularity: str) -> dict[str, np.ndarray]:
    """The dequantization scale of each layer's keys and values: its peak (with `HEADROOM`)
    over 127, one per
    layer (`PER_TENSOR`, shape (layers, 1)) or per head and channel (`PER_CHANNEL`, shape
    (layers, heads x head_size)). A peak of 0 gets a scale that keeps zeros exact."""
    out = {}
    for kind, peak in peaks.items():
        per = peak.reshape(peak.shape[0], -1).max(axis=1, keepdims=True) if granularity == "PER_TENSOR" else (
            peak.reshape(peak.shape[0], -1)
        )
        out[kind] = np.maximum(per * HEADROOM / QMAX, np.finfo(np.float32).tiny).astype(np.float32)
    return out


def quantized_cache_graph(src: Path, dst: Path, layer_scales: dict[str, np.ndarray], granularity: str) -> None:
    """`src`'s graph with an int8 cache: every GroupQueryAttention node takes its layer's
    scales (initializers `kv_scale_k_<layer>` / `kv_scale_v_<layer>`) and the cache
    inputs `past_*` and outputs `present_*` are int8."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {', '.join(GRANULARITIES)}, got {granularity!r}")
    model = onnx.load(str(src))
    graph = model.graph
    attention = [n for n in graph.node if n.op_type == "GroupQueryAttention"]
    if not attention:
        raise ValueError(f"{src} has no GroupQueryAttention node: not a KV-slot graph")
    for node in attention:
        layer = int(node.input[3].rsplit("_", 1)[1])  # past_key_<layer>
        names = []
        for kind in ("k", "v"):
            name = f"kv_scale_{kind}_{layer}"
            graph.initializer.append(numpy_helper.from_array(layer_scales[kind][layer], name))
            names.append(name)
        while len(node.input) < 12:  # the optional inputs before k_scale, v_scale
            node.input.append("")
        node.input.extend(names)
        for attr in [a for a in node.attribute if a.name in ("k_quant_type", "v_quant_type", "kv_cache_bit_width")]:
            node.attribute.remove(attr)
        node.attribute.extend(
            [
                helper.make_attribute("k_quant_type", granularity),
                helper.make_attribute("v_quant_type", granularity),
                helper.make_attribute("kv_cache_bit_width", 8),
            ]
        )
    for value in [*graph.input, *graph.output]:
        if value.name.startswith(("past_", "present_")):
            value.type.tensor_type.elem_type = TensorProto.INT8
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dst))


def choose(f32: dict, i8: dict) -> dict:
    """Whether a variant serves its int8 cache, from the two decode profiles measured in turns
    (`export.gpt2_eval.decode_profiles`): a request of LONG_NEW tokens after a prompt as long
    as the long cache (steps there) and one after a 16-token prompt (steps at the short
    cache), each at batch 8 and, where both profiles have it, batch 1. At batch b the b
    requests' prompts are all prefilled on the one machine, so a request pays b prefills (as
    `export.latency_model` counts them). The prefill of the long prompt is the profile's
    (measured at the long cache's length since the profile has it; older profiles: the
    latency model's extrapolation). The long request at batch 8 must gain and the short ones
    must not lose (beyond what the measurement moves: `_SHORT_SLACK`, `_ALONE_SLACK` at
    batch 1). ONNX Runtime's int8 kernels read a quarter of the bytes a step but prefill
    slower, and their prompt attention slows with the prompt's length (the int8 graph of
    GPT-2 124M on a 2-core EPYC: 1.13x f32's prefill at 128 tokens, 1.8x at 496), so both
    are weighed."""
    from export.latency_model import prefill_ms_at

    pasts = f32["past_lens"]
    short, long = str(pasts[0]), str(pasts[-1])
    shortest = min(f32["prefill_ms"], key=int)
    batches = [b for b in ("8", "1") if b in f32["step_ms"] and b in i8["step_ms"]]

    def request(p: dict, batch: str, past: str, prompt: int) -> float:
        return int(batch) * prefill_ms_at(p, prompt) + LONG_NEW * p["step_ms"][batch][past]

    gain = {}
    for b in batches:
        for kind, past, prompt in (("long", long, int(long)), ("short", short, int(shortest))):
            costs = [request(p, b, past, prompt) for p in (i8, f32)]
            gain[f"{kind}_b{b}"] = costs[0] / costs[1]
    figures = (
        f"batch-8 step {i8['step_ms']['8'][long]:.2f} vs {f32['step_ms']['8'][long]:.2f} ms at {long} cached "
        f"tokens, {i8['step_ms']['8'][short]:.2f} vs {f32['step_ms']['8'][short]:.2f} at {short}"
        + (
            f"; batch 1 {i8['step_ms']['1'][short]:.2f} vs {f32['step_ms']['1'][short]:.2f} at {short}"
            if "1" in batches
            else ""
        )
        + f"; {long}-token prefill {prefill_ms_at(i8, int(long)):.1f} vs "
        + f"{prefill_ms_at(f32, int(long)):.1f} ms"
        + ("" if long in f32["prefill_ms"] and long in i8["prefill_ms"] else " (extrapolated)")
    )
    # A long prompt alone (batch 1) pays the slower prefill with little step gain to win it
    # back; it is reported, not held against the cache: a served cache is for many requests.
    slack = {"short_b8": _SHORT_SLACK, "short_b1": _ALONE_SLACK}
    wins = gain["long_b8"] <= _LONG_GAIN and all(gain[k] <= bound for k, bound in slack.items() if k in gain)
    said = ", ".join(f"{k.replace('_b', ' at batch ')} {v:.2f}x" for k, v in gain.items())
    if wins:
        why = f"i8: requests take this share of f32's time: {said} ({figures})"
    else:
        why = (
            f"f32: with the int8 cache requests take {said} of f32's time (chosen where the long one at "
            f"batch 8 is <= {_LONG_GAIN}, the short one <= {_SHORT_SLACK} and alone <= {_ALONE_SLACK}; {figures})"
        )
        if gain["short_b8"] < 1.0 and gain["long_b8"] > _LONG_GAIN:
            why += "; short prompts would gain: `aigc build --kv-cache-precision i8` serves it"
    return {"choice": "i8" if wins else "f32", "why": why, "request_vs_f32": {k: round(v, 3) for k, v in gain.items()}}
