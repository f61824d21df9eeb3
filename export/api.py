"""The export stage: a checkpoint in, a folder of validated ONNX variants and a report out."""

from __future__ import annotations

import datetime as _dt
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from aigc import provenance, registry
from aigc.errors import AigcError, ConfigError, ExportError
from aigc.fsutil import atomic_dir
from export.report import variant_entry
from export.spec import VARIANTS, ExportSpec

logger = logging.getLogger(__name__)

REPORT_NAME = "export_report.json"
FORMAT_VERSION = 1
# Bumped whenever an exported graph changes for the same checkpoint (caches compare it).
EXPORTER_VERSION = 7


def parse_variants(text: str | Sequence[str] | None, spec: ExportSpec) -> tuple[str, ...]:
    """`None` means every variant that applies to the model; fp32 is always exported first."""
    if text is None:
        return spec.variants
    names = [v.strip() for v in (text.split(",") if isinstance(text, str) else text) if v.strip()]
    for v in names:
        if v not in VARIANTS:
            raise ConfigError(f"--variants: unknown variant {v!r}; allowed: {', '.join(VARIANTS)}")
        if v not in spec.variants:
            raise ConfigError(
                f"--variants: {v} does not apply to {spec.model}; allowed: {', '.join(spec.variants)}"
            )
    return tuple(["fp32"] + [v for v in dict.fromkeys(names) if v != "fp32"])


def export_model(
    model: str,
    checkpoint: Path,
    out: Path,
    variants: str | Sequence[str] | None = None,
    seed: int | None = None,
    quant=None,
) -> dict:
    """Export `checkpoint` (a `model` checkpoint) into `out`; returns the report.

    Every variant is run by ONNX Runtime against the PyTorch model on fresh random inputs
    (drawn from `seed`, or from fresh entropy when None). The fp32 variant must pass its
    parity check or the export fails; `quant` (`export.quantize.QuantOptions`) tunes the
    GPT-2 quantizers. Other variants that fail their gate are reported
    with the reason and not offered to the repository builder.
    """
    kind = registry.get(model)
    spec = kind.export
    if quant is not None:
        quant.validate()
    chosen = parse_variants(variants, spec)
    checkpoint = Path(checkpoint).absolute()
    rng = np.random.default_rng(seed)
    with atomic_dir(out) as tmp:
        report = registry.hook(kind.exporter)(spec, checkpoint, tmp, chosen, rng, quant)
        (tmp / REPORT_NAME).write_text(json.dumps(report, indent=2) + "\n")
    logger.info("export of %s written to %s", model, out)
    return report


def _base_report(spec: ExportSpec, checkpoint: Path) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "exporter_version": EXPORTER_VERSION,
        "model": spec.model,
        "checkpoint": str(checkpoint),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "commit": provenance.source_commit(),  # the exporter's code, and where it measured
        "machine": provenance.machine(),
        "opset": spec.opset,
        "components": list(spec.component_names),
        "variants": {},
    }


def export_images(spec: ExportSpec, checkpoint: Path, out: Path, variants, rng, quant=None) -> dict:
    """The exporter of models in our checkpoint format: every component of the spec, its
    parity check and latency, then the quantized variants (`quant` applies to GPT-2 only)."""
    from export import images
    from export.ortutil import make_session, median_ms
    from training.models import load_image_checkpoint

    module, meta = load_image_checkpoint(checkpoint, expected=spec.model)
    wrapped = images.wrap_components(spec.model, module)
    report = _base_report(spec, checkpoint)
    report["model_info"] = {"data": meta["data"], "config": meta["config"]}
    files, fidelity, latency = {}, {}, {}
    for comp in spec.components:
        path = out / "fp32" / f"{comp.name}.onnx"
        images.export_component(wrapped[comp.name], comp, spec, meta, path)
        fidelity[comp.name] = images.validate_component(wrapped[comp.name], comp, spec, meta, path, rng)
        session = make_session(path, threads=2)
        feeds = images.example_inputs(comp, meta, 1, rng)
        latency[comp.name] = round(median_ms(lambda s=session, f=feeds: s.run(None, f)), 4)
        files[comp.name] = path.relative_to(out).as_posix()
    report["variants"]["fp32"] = variant_entry("cpu", files, out, fidelity, latency)
    if len(variants) > 1:
        from export import quantize

        report["variants"].update(
            quantize.image_variants(spec, meta, out, variants[1:], rng, report["variants"]["fp32"])
        )
    return report


def export_gpt2(spec: ExportSpec, checkpoint: Path, out: Path, variants, rng, quant=None) -> dict:
    """The exporter of a Hugging Face GPT-2 folder: the KV-cache graph, its tokenizer and
    parity check, the quantized and OpenVINO variants, and every variant's decode profile."""
    from export import gpt2, gpt2_eval

    hf_model = gpt2.load_gpt2_checkpoint(checkpoint)
    path = out / "fp32" / "gpt2.onnx"
    info = gpt2.export_gpt2_fp32(checkpoint, path, hf_model=hf_model)
    info = gpt2.write_gpt2_assets(checkpoint, out / "assets", info)
    fidelity = gpt2.validate_gpt2(path, hf_model, rng)
    report = _base_report(spec, checkpoint)
    report["model_info"] = info
    files = {"gpt2": path.relative_to(out).as_posix()}
    report["variants"]["fp32"] = variant_entry(
        "cpu", files, out, {"gpt2": fidelity}, {}, kv_dtype=gpt2_eval.kv_dtype(path)
    )
    if len(variants) > 1:
        from export import quantize

        report["variants"].update(
            quantize.gpt2_variants(
                checkpoint, info, out, variants[1:], rng, report["variants"]["fp32"], quant
            )
        )
    _profile_gpt2(report, out, int(info["n_positions"]))
    return report


I8_SUFFIX = "@kv-i8"  # a variant's int8-cache graph among the decode profiles


def _profile_gpt2(report: dict, out: Path, n_positions: int) -> None:
    """Every variant's decode profile, measured in turns so they compare like with like;
    variants made for GPUs get the batch-1 step only (their CPU speed ranks nothing)."""
    from export import kv_cache
    from export.gpt2_eval import decode_profiles

    variants = report["variants"]
    # passed None: the variant cannot run on this machine's execution provider
    paths = {
        name: out / v["files"]["gpt2"]
        for name, v in variants.items()
        if v.get("files") and v["passed"] is not None
    }
    batches = {name: (1,) if variants[name]["target"] == "gpu" else (1, 4, 8) for name in paths}
    # each int8-cache graph that passed its gate, measured in the same turns at batch 1 and 8
    caches = {
        f"{name}{I8_SUFFIX}": out / variants[name]["kv_cache"]["i8"]["file"]
        for name in paths
        if variants[name].get("kv_cache", {}).get("i8", {}).get("passed")
    }
    batches.update({name: (1, 8) for name in caches})
    # each int8-cache graph measured right after its variant's own, so that the two meet
    # the machine's load as nearly alike as turns allow (`kv_cache.choose` weighs them)
    order = [n for name in paths for n in (name, f"{name}{I8_SUFFIX}") if n in paths or n in caches]
    files = {**paths, **caches}
    logger.info("gpt2: timing the decode step of %s", ", ".join(order))
    profiles = decode_profiles({n: files[n] for n in order}, n_positions, batches=batches)
    for name in paths:
        profile = profiles[name]
        short = str(profile["past_lens"][0])
        variants[name]["latency_ms"] = {"gpt2": profile["step_ms"]["1"][short]}
        variants[name]["decode_profile"] = profile
        i8 = profiles.get(f"{name}{I8_SUFFIX}")
        if i8 is not None:
            cache = variants[name]["kv_cache"]
            cache["i8"]["decode_profile"] = i8
            cache.update(kv_cache.choose(profile, i8))
            logger.info("gpt2 %s KV cache: %s", name, cache["why"])
    from export.latency_model import Workload, rank

    cpu = {n: variants[n]["decode_profile"] for n in paths if variants[n]["target"] == "cpu"}
    report["expected_latency"] = rank(cpu, Workload())
    logger.info("gpt2: expected latency %s", report["expected_latency"])


def read_report(export_dir: Path) -> dict:
    """Read and check an export folder's report (used by the repository builder)."""
    path = Path(export_dir) / REPORT_NAME
    try:
        report = json.loads(path.read_text())
    except FileNotFoundError:
        raise ExportError(f"{path}: missing; is {export_dir} an export folder from `aigc export`?") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ExportError(f"{path}: unreadable report ({exc})") from exc
    if report.get("format_version") != FORMAT_VERSION or "variants" not in report:
        raise ExportError(f"{path}: not an aigc export report (format_version {FORMAT_VERSION})")
    return report


__all__ = ["AigcError", "export_model", "parse_variants", "read_report"]
