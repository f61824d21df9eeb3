"""The subjects of `aigc bench`: which served models it measures, and the local checkpoints
and exports their in-process baselines run, made and cached where none is given."""

from __future__ import annotations

import logging
from pathlib import Path

from aigc import registry
from aigc.errors import ConfigError
from aigc.registry import ModelKind
from benchmarks.options import BenchOptions, Subject, bench_kind

logger = logging.getLogger(__name__)

TINY_IMAGE_STEPS = 20  # speed does not depend on how well the generator was trained


def newest_mtime(folder: Path) -> float:
    return max((p.stat().st_mtime for p in Path(folder).iterdir() if p.is_file()), default=0.0)


def _cached_export(exp: Path, ckpt: Path, variants: str) -> bool:
    """Whether `exp` is an export of `ckpt` (as it is now) by this version of the exporter."""
    from export.api import EXPORTER_VERSION, read_report

    try:
        report = read_report(exp)
        return (
            report.get("exporter_version") == EXPORTER_VERSION
            and Path(report["checkpoint"]).resolve() == Path(ckpt).resolve()
            and set(variants.split(",")) <= set(report["variants"])
            and (exp / "export_report.json").stat().st_mtime >= newest_mtime(ckpt)
        )
    except Exception:  # noqa: BLE001 - missing, unreadable or stale: export again
        return False


def export_cached(kind: ModelKind, ckpt: Path, opts: BenchOptions) -> Path:
    """An export of `ckpt` with the kind's bench variants, made once into the cache."""
    from export.api import export_model

    ckpt = Path(ckpt)
    exp = opts.cache / f"export-{ckpt.name}-{kind.name}"
    if not _cached_export(exp, ckpt, kind.bench.variants):
        logger.info("exporting %s (%s) to %s", ckpt, kind.bench.variants, exp)
        export_model(kind.name, ckpt, exp, variants=kind.bench.variants, seed=0)
    return exp


def random_gpt2_checkpoint(kind: ModelKind, opts: BenchOptions) -> Path:
    """The GPT-2 124M architecture with random weights (speed does not depend on the weights)."""
    from training.gpt2 import create_random_gpt2

    ckpt = opts.cache / f"{kind.name}-124m"
    if not (ckpt / "model.safetensors").is_file():
        logger.info("creating the GPT-2 124M architecture with random weights in %s", ckpt)
        create_random_gpt2(ckpt, preset="124m", seed=0)
    return ckpt


def tiny_checkpoint(kind: ModelKind, opts: BenchOptions) -> Path:
    """A tiny model trained here (speed does not depend on how well it was trained)."""
    from training.api import TrainOptions, train

    ckpt = opts.cache / kind.name
    if not (ckpt / "model.safetensors").is_file():
        logger.info("training a tiny %s (%d steps) in %s", kind.name, TINY_IMAGE_STEPS, ckpt)
        train(TrainOptions(model=kind.name, out=ckpt, steps=TINY_IMAGE_STEPS, progress=False))
    return ckpt


def subjects(opts: BenchOptions) -> list[Subject]:
    """What to measure and where its local files come from; prepares the missing ones."""
    from export.api import read_report

    given: dict[str, tuple[Path | None, Path]] = {}
    for e in opts.exports:
        report = read_report(e)
        kind = registry.KINDS.get(report["model"])
        if kind is None or kind.bench is None:
            raise ConfigError(f"--exports {e}: a {report['model']!r} export has nothing to benchmark")
        ckpt = Path(report["checkpoint"]) if report.get("checkpoint") else None
        given[kind.name] = (ckpt if ckpt is not None and ckpt.is_dir() else None, Path(e))
    named = opts.models is not None
    wanted = [bench_kind(m) for m in opts.models] if named else list(registry.benchmarked())
    embedded = opts.url is None
    out = []
    for kind in dict.fromkeys(wanted):
        model = kind.bench.component
        bench = registry.hook(kind.component(model).role.bench)
        ckpt, exp = given.get(kind.name, (None, None))
        ckpt = opts.checkpoints.get(kind.name) or ckpt
        optional = not named and not kind.bench.required  # measured where available
        if ckpt is None and exp is None:
            if bench.LOCAL_CHECKPOINT and not embedded:
                raise ConfigError(
                    f"--url needs --{kind.name} CHECKPOINT or --exports EXPORT of {kind.name}: "
                    "the baselines run the same checkpoint in-process"
                )
            if embedded and not named and not kind.bench.unasked:
                logger.info("%s: no --%s checkpoint or export given; not measured", model, kind.name)
                continue
            if embedded:
                ckpt = registry.hook(kind.bench.default)(kind, opts)
            # with --url and no local files: the served figures only
        if exp is None and ckpt is not None and (embedded or not bench.LOCAL_CHECKPOINT):
            exp = export_cached(kind, ckpt, opts)
        out.append(Subject(kind, model, Path(ckpt) if ckpt else None, exp, optional))
    return out
