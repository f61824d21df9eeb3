"""Quantized and half-precision variants with their fidelity gates.

Each variant is derived from the validated fp32 ONNX file, then measured against it (and
through it against PyTorch) on fresh inputs. A variant that fails its gate is kept in the
report with the reason, marked `passed: false`, and never offered to the repository builder.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from aigc import registry
from aigc.errors import ExportError
from engine import runtimes
from export.ortutil import cpu_can_run, make_session, max_abs_diff, median_ms
from export.report import variant_entry
from export.spec import ExportSpec

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Gates:
    """Default fidelity gates (README, "Fidelity gates")."""

    image_psnr_db: float = 30.0
    gpt2_ppl_increase: dict | None = None

    def ppl_bound(self, variant: str) -> float:
        """OpenVINO variants (`ov-int8`) have the bound of their weight type (`int8`); f32
        weights get fp16's."""
        bounds = self.gpt2_ppl_increase or {"fp16": 0.005, "int8": 0.02, "int4": 0.05}
        weights = runtimes.weights_of(variant)
        return bounds["fp16" if weights == "fp32" else weights]


GATES = Gates()


@contextlib.contextmanager
def _quiet_quantizer():
    """ONNX Runtime's quantizers log per-tensor notes on the root logger; keep them at --verbose."""
    loggers = [logging.getLogger(), logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")]
    levels = [lg.level for lg in loggers]
    if not logger.isEnabledFor(logging.DEBUG):
        for lg in loggers:
            lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def psnr_db(reference: np.ndarray, test: np.ndarray) -> float:
    mse = float(np.mean((reference.astype(np.float64) - test.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def to_fp16(src: Path, dst: Path, keep_io_types: bool | list[str] = True) -> None:
    """fp16 weights and compute (for GPUs); inputs and outputs keep their types by default."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=keep_io_types)
    onnx.save(model, str(dst))


# -- image models -------------------------------------------------------------------------


class _Calibration:
    """Calibration feeds: latents from N(0, I) for generators, training images for encoders."""

    def __init__(self, feeds: list[dict]):
        self._it = iter(feeds)

    def get_next(self):
        return next(self._it, None)

    def rewind(self):  # pragma: no cover - required by some ORT versions' interface
        pass


def _calibration_feeds(component, meta, rng, batches: int = 16, batch: int = 16) -> list[dict]:
    from export.images import example_inputs

    if component.role is registry.IMAGE_ENCODER:  # calibrated on real images
        from training.data import DIGITS_SOURCES, load_digits_images

        data = meta["data"]
        if data.get("source", "digits") in DIGITS_SOURCES:
            x = load_digits_images(int(data["image_size"]), int(data["channels"]))
            x = ((np.clip(x, -1, 1) + 1) * 127.5).round().astype(np.uint8).transpose(0, 2, 3, 1)
            idx = rng.choice(len(x), size=min(len(x), batches * batch), replace=False)
            name = component.inputs[0].name
            return [{name: x[idx[i : i + batch]]} for i in range(0, len(idx), batch)]
        logger.warning("calibrating %s on random images: the training folder is not recorded", component.name)
    return [example_inputs(component, meta, batch, rng) for _ in range(batches)]


@_quiet_quantizer()
def to_int8_static(src: Path, dst: Path, feeds: list[dict]) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = dst.with_name(dst.stem + ".pre.onnx")
    quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    try:
        quantize_static(
            str(pre),
            str(dst),
            _Calibration(feeds),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
        )
    finally:
        pre.unlink(missing_ok=True)


def image_variants(spec: ExportSpec, meta: dict, out: Path, variants, rng, fp32: dict) -> dict:
    """Derive fp16 / int8 variants of every component and gate them by PSNR vs fp32."""
    from export.images import example_inputs

    result = {}
    for variant in variants:
        files, fidelity, latency = {}, {}, {}
        reasons, target, validated = [], ("gpu" if variant == "fp16" else "cpu"), True
        for comp in spec.components:
            src = out / fp32["files"][comp.name]
            dst = out / variant / f"{comp.name}.onnx"
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                if variant == "fp16":
                    to_fp16(src, dst)
                elif variant == "int8":
                    to_int8_static(src, dst, _calibration_feeds(comp, meta, rng))
                else:
                    raise ExportError(f"variant {variant} does not apply to {spec.model}")
            except ExportError:
                raise
            except Exception as exc:  # quantizer failures of any type: report, do not ship
                reasons.append(f"{comp.name}: {variant} conversion failed: {exc}")
                continue
            files[comp.name] = dst.relative_to(out).as_posix()
            if not cpu_can_run(dst):
                validated = False
                continue
            ref, got = make_session(src), make_session(dst, threads=2)
            feeds = example_inputs(comp, meta, 64, rng)
            names = [t.name for t in comp.outputs]
            r_out, g_out = ref.run(names, feeds), got.run(names, feeds)
            fid = {}
            for t, r, g in zip(comp.outputs, r_out, g_out, strict=True):
                if t.dtype == "uint8":
                    fid["psnr_db"] = round(psnr_db(r, g), 2)
                    fid["max_abs_diff"] = max_abs_diff(r, g)
                    if fid["psnr_db"] < GATES.image_psnr_db:
                        reasons.append(
                            f"{comp.name}: PSNR {fid['psnr_db']:.1f} dB < {GATES.image_psnr_db:.0f} dB vs fp32"
                        )
                else:
                    fid[f"{t.name}_max_abs_diff"] = max_abs_diff(r, g)
            if comp.gated_through:
                # Encoders: gate on the decoded images of their mu, via the fp32 decoder.
                fid.update(_encoder_gate(out, fp32, spec, comp, r_out[0], g_out[0], reasons))
            fidelity[comp.name] = fid
            one = example_inputs(comp, meta, 1, rng)
            latency[comp.name] = round(median_ms(lambda s=got, f=one: s.run(None, f)), 4)
        passed = not reasons and validated and len(files) == len(spec.components)
        reason = "; ".join(reasons) or (
            None if validated else f"not validated: CPU ONNX Runtime cannot run {variant}"
        )
        result[variant] = variant_entry(
            target,
            files,
            out,
            fidelity,
            latency,
            passed=passed if validated else None,
            reason=reason,
            validated_on="cpu" if validated else None,
        )
        logger.info("%s %s: %s", spec.model, variant, "passed" if passed else reason)
    return result


def _encoder_gate(
    out: Path, fp32: dict, spec, comp, mu_ref: np.ndarray, mu_got: np.ndarray, reasons: list
) -> dict:
    """PSNR of the images the fp32 decoder (`comp.gated_through`) makes from the reference's
    and the variant's latent means."""
    decoder_file = fp32["files"].get(comp.gated_through)
    if decoder_file is None:
        return {}
    decoder = next(c for c in spec.components if c.name == comp.gated_through)
    dec = make_session(out / decoder_file)
    latent, image = decoder.inputs[0].name, decoder.outputs[0].name
    a = dec.run([image], {latent: mu_ref.astype(np.float32)})[0]
    b = dec.run([image], {latent: mu_got.astype(np.float32)})[0]
    value = round(psnr_db(a, b), 2)
    if value < GATES.image_psnr_db:
        reasons.append(f"{comp.name}: PSNR of decoded mu {value:.1f} dB < {GATES.image_psnr_db:.0f} dB")
    return {"decoded_psnr_db": value}


# -- GPT-2 ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class QuantOptions:
    """Knobs of the GPT-2 weight quantizers (`aigc export --int4-block-size ...`)."""

    # 64: one fp32 scale per 64 weights (4.5 bits a weight); a faster decode step than 32 on
    # the CPU (fewer scale bytes and per-block work; benchmarks/choices.md).
    int4_block_size: int = 64
    int4_accuracy_level: int = 4  # 4 = int8 compute of the int4 weights: the fast CPU path
    int8_kv_cache: bool = True  # ONNX Runtime variants: a second graph with an int8 KV cache
    eval_windows: int = 8
    eval_window_tokens: int = 128
    greedy_prompts: int = 4
    greedy_tokens: int = 16

    def validate(self) -> None:
        from aigc.errors import ConfigError

        if self.int4_block_size not in (16, 32, 64, 128, 256):
            raise ConfigError(
                f"--int4-block-size must be one of 16, 32, 64, 128, 256, got {self.int4_block_size}"
            )
        if self.int4_accuracy_level not in (0, 1, 2, 3, 4):
            raise ConfigError(f"--int4-accuracy-level must be in 0..4, got {self.int4_accuracy_level}")


@_quiet_quantizer()
def to_int8_dynamic(src: Path, dst: Path, op_types=("MatMul", "Gemm")) -> None:
    """Dynamic int8: weights int8 per tensor, activations quantized at run time.

    MatMul (the QKV, projection, MLP and vocabulary weights) becomes DynamicQuantizeMatMul
    after ORT's graph optimizer; attention over the cache stays float. `DefaultTensorType`
    gets the quantizer past tensors whose type its shape inference cannot derive
    (contrib-op outputs).
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(src),
        str(dst),
        op_types_to_quantize=list(op_types),
        weight_type=QuantType.QInt8,
        per_channel=False,
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT, "MatMulConstBOnly": True},
    )


@_quiet_quantizer()
def to_int4(src: Path, dst: Path, block_size: int, accuracy_level: int) -> None:
    """Weight-only int4 (MatMulNBits) for every MatMul: QKV, projections, MLP, vocabulary."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    q = MatMulNBitsQuantizer(
        onnx.load(str(src)), block_size=block_size, is_symmetric=True, accuracy_level=accuracy_level
    )
    q.process()
    q.model.save_model_to_file(str(dst), use_external_data_format=False)


def _heldout_text(checkpoint: Path) -> str:
    path = checkpoint / "heldout.txt"
    if path.is_file():
        return path.read_text(encoding="utf-8", errors="replace")
    from training.data import load_text_corpus

    return load_text_corpus(None)[1]


def gpt2_variants(checkpoint: Path, info: dict, out: Path, variants, rng, fp32: dict, options=None) -> dict:
    """Derive fp16 / int8 / int4 GPT-2 variants and gate them on held-out perplexity."""
    from tokenizers import Tokenizer

    from export import gpt2_eval as ev

    options = options or QuantOptions()
    tok = Tokenizer.from_file(str(out / "assets" / "tokenizer.json"))
    window = min(options.eval_window_tokens, int(info["n_positions"]))
    windows = ev.token_windows(tok.encode(_heldout_text(checkpoint)).ids, window, options.eval_windows)
    if len(windows) == 0:
        raise ExportError(f"held-out text of {checkpoint} is shorter than one {window}-token window")
    # Fixed prompt set: the opening tokens of held-out windows (same for every variant).
    prompts = [w[:8].tolist() for w in windows[: options.greedy_prompts]]
    src = out / fp32["files"]["gpt2"]
    ref = make_session(src, threads=2)
    ref_logits = ev.window_logits(ref, windows)
    ppl_ref = ev.perplexity(ref_logits, windows)
    ref_greedy = [ev.greedy(ref, p, options.greedy_tokens) for p in prompts]
    fp32["fidelity"]["gpt2"]["perplexity"] = round(ppl_ref, 4)
    fp32["fidelity"]["gpt2"]["eval_tokens"] = int(windows.size)

    # The int8 KV cache's scales come from the reference graph's keys and values on text the
    # gate does not read (the training split of the bundled corpus).
    from export import kv_cache
    from training.data import load_text_corpus

    kv_peaks = None
    if options.int8_kv_cache:
        calibration = ev.token_windows(tok.encode(load_text_corpus(None)[0]).ids, window, options.eval_windows)
        kv_peaks = kv_cache.calibrate(ref, calibration if len(calibration) else windows)

    result = {}
    gate = _Gate(ref_logits, ref_greedy, ppl_ref, windows)
    job = VariantJob(checkpoint, out, src, windows, prompts, options, gate, kv_peaks)
    for variant in variants:
        result[variant] = registry.hook(runtimes.of_variant(variant).converter)(variant, job)
    return result


@dataclass(frozen=True)
class VariantJob:
    """What a runtime's converter (`engine.runtimes`) gets to make and judge a GPT-2 variant:
    the checkpoint, the export folder, the fp32 ONNX reference, the held-out windows and
    greedy prompts, and the gate."""

    checkpoint: Path
    out: Path
    src: Path
    windows: np.ndarray
    prompts: list
    options: QuantOptions
    gate: _Gate
    kv_peaks: dict | None = None  # the reference's largest |key|, |value| per layer, head, channel


def onnxruntime_variant(variant: str, job: VariantJob) -> dict:
    """An fp16 / int8 / int4 ONNX graph derived from the fp32 one, run by ONNX Runtime and
    judged by the gate (fp16, which the CPU cannot run, is reported as not validated)."""
    from export import gpt2_eval as ev

    out, src, options = job.out, job.src, job.options
    dst = out / variant / "gpt2.onnx"
    dst.parent.mkdir(parents=True, exist_ok=True)
    target = "gpu" if variant == "fp16" else "cpu"
    files = {"gpt2": dst.relative_to(out).as_posix()}
    if variant == "int8":
        to_int8_dynamic(src, dst)
    elif variant == "int4":
        to_int4(src, dst, options.int4_block_size, options.int4_accuracy_level)
    elif variant == "fp16":
        to_fp16(src, dst, keep_io_types=["logits", "last_logits"])
    else:
        raise ExportError(f"variant {variant} does not apply to gpt2")
    extra = {"quantization": _describe(variant, options), "kv_dtype": ev.kv_dtype(dst)}
    if not cpu_can_run(dst):
        return variant_entry(
            target,
            files,
            out,
            {},
            {},
            passed=None,
            reason=f"not validated: CPU ONNX Runtime cannot run {variant}; validate on its target",
            validated_on=None,
            **extra,
        )
    sess = make_session(dst, threads=2)
    logits = ev.window_logits(sess, job.windows)
    greedy = [ev.greedy(sess, p, options.greedy_tokens) for p in job.prompts]
    fid, passed, reason = job.gate.judge(variant, logits, greedy)
    if passed and options.int8_kv_cache and target == "cpu" and extra["kv_dtype"] == "float32":
        i8 = int8_cache(variant, dst, job)
        extra["kv_cache"] = {"i8": i8}
        if not i8["passed"]:
            extra["kv_cache"].update(choice="f32", why=f"f32: the int8 cache fails the gate ({i8['reason']})")
    return variant_entry(
        target,
        files,
        out,
        {"gpt2": fid},
        {},  # latency: measured for all variants together (export.api._profile_gpt2)
        passed=passed,
        reason=reason,
        validated_on="cpu",
        **extra,
    )


def int8_cache(variant: str, dst: Path, job: VariantJob) -> dict:
    """The variant's graph with an int8 KV cache (`export.kv_cache`), judged by the same gate
    as the weights: one scale per layer first (ONNX Runtime's faster kernel), one per head
    and channel where that fails. Its file stays only when it passes; the decode profile
    (`export.api`) then measures it against the f32 cache and `kv_cache.choose` decides."""
    from export import gpt2_eval as ev
    from export import kv_cache

    path = dst.with_name(kv_cache.I8_FILE)
    bytes_per_token = 2 * int(job.kv_peaks["k"].size)  # a byte per layer, head and channel, k and v
    for granularity in kv_cache.GRANULARITIES:
        kv_cache.quantized_cache_graph(dst, path, kv_cache.scales(job.kv_peaks, granularity), granularity)
        sess = make_session(path, threads=2)
        logits = ev.window_logits(sess, job.windows)
        greedy = [ev.greedy(sess, p, job.options.greedy_tokens) for p in job.prompts]
        del sess
        label = f"{variant} with an int8 KV cache ({granularity.lower().replace('_', ' ')} scales)"
        fid, passed, reason = job.gate.judge(variant, logits, greedy, label=label)
        if passed:
            return {
                "file": path.relative_to(job.out).as_posix(),
                "granularity": granularity,
                "fidelity": fid,
                "passed": True,
                "bytes_per_token": bytes_per_token,
            }
    path.unlink(missing_ok=True)
    return {"passed": False, "reason": reason, "fidelity": fid, "bytes_per_token": bytes_per_token}


@dataclass
class _Gate:
    """A variant's logits and greedy tokens against the fp32 ONNX reference's."""

    ref_logits: list
    ref_greedy: list
    ppl_ref: float
    windows: np.ndarray

    def judge(
        self, variant: str, logits: list, greedy: list, label: str = ""
    ) -> tuple[dict, bool, str | None]:
        """(fidelity, passed, why not) of `variant`'s outputs (`label`: what the log calls it)."""
        from export import gpt2_eval as ev

        ppl = ev.perplexity(logits, self.windows)
        increase = ppl / self.ppl_ref - 1.0
        bound = GATES.ppl_bound(variant)
        pairs = zip(self.ref_logits, logits, strict=True)
        top1 = float(np.mean([np.mean(a.argmax(-1) == b.argmax(-1)) for a, b in pairs]))
        agree = float(
            np.mean(
                [
                    np.mean(np.asarray(a) == np.asarray(b))
                    for a, b in zip(self.ref_greedy, greedy, strict=True)
                ]
            )
        )
        fid = {
            "perplexity": round(ppl, 4),
            "perplexity_fp32": round(self.ppl_ref, 4),
            "perplexity_increase": round(increase, 5),
            "perplexity_bound": bound,
            "top1_agreement": round(top1, 4),
            "greedy_agreement": round(agree, 4),
            "max_logit_diff": max(max_abs_diff(a, b) for a, b in zip(self.ref_logits, logits, strict=True)),
            "eval_tokens": int(self.windows.size),
        }
        passed = increase <= bound
        reason = None
        if not passed:
            reason = (
                f"perplexity {ppl:.3f} is {increase:+.2%} vs fp32 {self.ppl_ref:.3f} (bound +{bound:.1%})"
            )
        logger.info(
            "gpt2 %s: ppl %.3f (%+.2f%%), %s",
            label or variant,
            ppl,
            100 * increase,
            "passed" if passed else reason,
        )
        return fid, passed, reason


def openvino_variant(variant: str, job: VariantJob) -> dict:
    """An OpenVINO IR of the checkpoint, compressed, run by the engine's paged runner and
    judged by the same gate; reported as not validated when OpenVINO is not installed."""
    from export import gpt2_eval as ev
    from export import openvino as ovx

    out, windows, prompts, options = job.out, job.windows, job.prompts, job.options
    compression = ovx.VARIANT_COMPRESSION[variant]
    extra = {"quantization": compression.describe(), "runtime": runtimes.of_variant(variant).name}
    why = ovx.available()
    if why:
        return variant_entry("cpu", {}, out, {}, {}, passed=None, reason=f"not built: {why}", **extra)
    xml = ovx.convert_ir(job.checkpoint, out / variant, compression)
    files = {"gpt2": xml.relative_to(out).as_posix()}
    max_len = max(int(windows.shape[1]), max(len(p) for p in prompts) + options.greedy_tokens)
    with ev.slot_runner(xml, slots=1, max_len=max_len, kv_cache_precision="f32") as runner:
        logits = ovx.window_logits(runner, windows)
        greedy = [ev.greedy(runner, p, options.greedy_tokens) for p in prompts]
        extra["kv_dtype"] = runner.caps.kv_dtype.name
    fid, passed, reason = job.gate.judge(variant, logits, greedy)
    if passed:
        extra["kv_cache"] = compressed_cache(variant, xml, job, max_len)
    return variant_entry(
        "cpu", files, out, {"gpt2": fid}, {}, passed=passed, reason=reason, validated_on="cpu", **extra
    )


# a compressed cache must be this much faster at the long context to be chosen, and no more
# than `_KV_SHORT_SLACK` slower at the short one (measurement noise on a shared CPU is ~2 %)
_KV_LONG_GAIN, _KV_SHORT_SLACK = 0.97, 1.05


def compressed_cache(variant: str, xml: Path, job: VariantJob, window: int) -> dict:
    """Whether an OpenVINO variant's cache is stored in u8 (a scale and zero point per group,
    a quarter of f32's bytes): judged by the same gate as the weights (the variant's logits
    and greedy tokens with a u8 cache against the fp32 reference), and measured against f32
    at batch 8 with a short and a long cache, the two alternating. Chosen when it passes and
    wins; the report's `kv_cache` says which and why, and `aigc build` serves it (its
    `--kv-cache-precision auto`)."""
    from export import gpt2_eval as ev
    from export import openvino as ovx

    with ev.slot_runner(xml, slots=1, max_len=window, kv_cache_precision="u8") as runner:
        logits = ovx.window_logits(runner, job.windows)
        greedy = [ev.greedy(runner, p, job.options.greedy_tokens) for p in job.prompts]
        per_token = {"u8": runner.kv.block_bytes // runner.kv.block_size}
    fid, passed, reason = job.gate.judge(variant, logits, greedy, label=f"{variant} with a u8 KV cache")
    info = json.loads((job.out / "assets" / "model_info.json").read_text())
    n_positions = int(info["n_positions"])
    per_token["f32"] = 2 * int(info["n_layer"]) * int(info["n_head"]) * int(info["head_size"]) * 4
    profile = ev.decode_profiles(
        {"f32": xml, "u8": xml},
        n_positions,
        batches={"f32": (8,), "u8": (8,)},
        prefill_lens=(),
        kv_precisions={"f32": "f32", "u8": "u8"},
    )
    steps = {k: profile[k]["step_ms"]["8"] for k in profile}
    pasts = profile["f32"]["past_lens"]
    short, long = str(pasts[0]), str(pasts[-1])
    wins = steps["u8"][long] <= _KV_LONG_GAIN * steps["f32"][long] and (
        steps["u8"][short] <= _KV_SHORT_SLACK * steps["f32"][short]
    )
    if not passed:
        why = f"f32: the u8 cache fails the gate ({reason})"
    elif not wins:
        why = (
            f"f32: the u8 cache passes the gate but is not faster at batch 8 "
            f"({steps['u8'][long]:.2f} vs {steps['f32'][long]:.2f} ms at {long} cached tokens, "
            f"{steps['u8'][short]:.2f} vs {steps['f32'][short]:.2f} ms at {short})"
        )
    else:
        why = (
            f"u8: passes the gate and the batch-8 step at {long} cached tokens is "
            f"{steps['u8'][long] / steps['f32'][long]:.2f}x f32's ({steps['u8'][long]:.2f} vs "
            f"{steps['f32'][long]:.2f} ms), at {short} {steps['u8'][short] / steps['f32'][short]:.2f}x"
        )
    logger.info("gpt2 %s KV cache: %s", variant, why)
    return {
        "choice": "u8" if passed and wins else "f32",
        "why": why,
        "u8": {"fidelity": fid, "passed": passed, "step_ms": steps["u8"], "bytes_per_token": per_token["u8"]},
        "f32": {"step_ms": steps["f32"], "bytes_per_token": per_token["f32"]},
        "batch": 8,
    }


def _describe(variant: str, options: QuantOptions) -> dict:
    if variant == "int8":
        return {"method": "dynamic", "weights": "int8 per-tensor", "ops": ["MatMul", "Gemm"]}
    if variant == "int4":
        return {
            "method": "weight-only MatMulNBits",
            "block_size": options.int4_block_size,
            "accuracy_level": options.int4_accuracy_level,
        }
    return {"method": "fp16 weights, compute and KV cache", "io": "logits kept fp32"}
