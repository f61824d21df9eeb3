"""The Triton model repository builder: export folders in, a new version of each component out.

For each component of each export it chooses the variant (`serving.variant_choice`), asks
the component's role for its config and files (the role's `build` hook in `aigc.registry`,
`serving.model_versions`), and stages the version (`serving.repository`). Every version is
staged before any becomes visible, so a failed build leaves what is being served untouched.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from aigc import registry
from aigc.errors import BuildError, ConfigError, ExportError
from engine import runtimes
from engine.config import EngineConfig
from serving.flavours import FLAVOURS, PYTHON_FLAVOUR
from serving.repository import VersionPlan, install_version, stage_version
from serving.variant_choice import Workload, choose_variant, describe, split_pair

logger = logging.getLogger(__name__)

RUNTIMES = (runtimes.AUTO, *runtimes.names())
TARGETS = ("cpu", "gpu")


@dataclass
class BuildOptions:
    flavour: str = PYTHON_FLAVOUR
    variant: str = "auto"
    runtime: str = runtimes.AUTO  # GPT-2: a name from engine.runtimes, or auto (the faster, measured)
    target: str = "cpu"  # what `auto` optimises for: cpu or gpu
    instance_count: int = 1
    max_batch_size: int = 64
    # 0: no waiting for a batch to fill; requests queued while the model is busy still batch.
    max_queue_delay_us: int = 0
    intra_op_threads: int = 0  # 0 = ONNX Runtime's default (all cores)
    accelerator: str = "tensorrt"  # onnxruntime flavour on GPUs: tensorrt | cuda | none
    engine: EngineConfig = field(default_factory=EngineConfig)  # the GPT-2 engine's settings
    workload: Workload = field(default_factory=Workload)  # what `auto` optimises GPT-2 for

    def validate(self) -> None:
        if self.flavour not in FLAVOURS:
            raise ConfigError(f"--flavour must be one of {', '.join(FLAVOURS)}, got {self.flavour!r}")
        if self.target not in TARGETS:
            raise ConfigError(f"--target must be cpu or gpu, got {self.target!r}")
        if self.runtime not in RUNTIMES:
            raise ConfigError(f"--runtime must be one of {', '.join(RUNTIMES)}, got {self.runtime!r}")
        if self.runtime != runtimes.AUTO and self.target not in runtimes.get(self.runtime).targets:
            serving_it = [r.name for r in runtimes.RUNTIMES if self.target in r.targets]
            raise ConfigError(
                f"--runtime {self.runtime} serves on {', '.join(runtimes.get(self.runtime).targets)}; "
                f"use another --target (or --runtime {' or '.join(serving_it)})"
            )
        if not 1 <= self.instance_count <= 64:
            raise ConfigError(f"--instances must be in 1..64, got {self.instance_count}")
        if not 1 <= self.max_batch_size <= 4096:
            raise ConfigError(f"--max-batch-size must be in 1..4096, got {self.max_batch_size}")
        try:
            self.engine.check(flags=True)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        self.workload.validate()


@dataclass
class BuiltModel:
    name: str
    version: int
    variant: str
    path: Path
    detail: str = ""  # why this variant; for GPT-2 the KV cache it allocates

    def __str__(self) -> str:
        text = f"{self.name} version {self.version} ({self.variant}) -> {self.path}"
        return f"{text}\n{self.detail}" if self.detail else text


def build_repository(
    exports: list[Path], repository: Path, options: BuildOptions | None = None
) -> list[BuiltModel]:
    """Add a version of every component of every export folder to `repository`."""
    from export.api import read_report

    opts = options or BuildOptions()
    opts.validate()
    repository = Path(repository).absolute()
    staging = repository.parent / f"{repository.name}.staging"
    try:
        repository.mkdir(parents=True, exist_ok=True)
        staging.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--repository {repository}: cannot write there ({exc.strerror or exc})") from exc
    # Stage every version first: nothing becomes visible unless all of them could be built.
    plans = []
    try:
        for export_dir in exports:
            export_dir = Path(export_dir).absolute()
            try:
                report = read_report(export_dir)
            except ExportError as exc:
                raise BuildError(str(exc)) from None
            for comp in report["components"]:
                variant, why = choose_variant(
                    report, comp, opts.variant, opts.target, opts.workload, opts.runtime
                )
                detail = describe(comp, variant, why)
                variant, companion = split_pair(variant)
                graph_file = export_dir / report["variants"][variant]["files"][comp]
                if not graph_file.is_file():
                    raise BuildError(f"{comp}: {graph_file} is missing (re-run `aigc export`)")
                runtime = runtimes.of_file(graph_file)
                files: dict[str, Path] = runtime.version_files_of(graph_file)
                role = registry.component(comp)[1].role
                plan = VersionPlan(comp, export_dir, report, variant, companion, why, files)
                cfg, extra = registry.hook(role.build)(plan, opts)
                detail = f"{detail}\n{extra}" if extra else detail
                meta = {
                    "model": comp,
                    "variant": variant,
                    "companion": companion,
                    "runtime": runtime.name,
                    "export": str(export_dir),
                    "flavour": opts.flavour,
                    "fidelity": report["variants"][variant].get("fidelity", {}).get(comp),
                    "export_created": report.get("created"),
                    "choice": why,
                }
                if companion:
                    meta["companion_fidelity"] = report["variants"][companion].get("fidelity", {}).get(comp)
                    variant = f"{variant}+{companion}"
                stage = stage_version(comp, files, meta, staging, plan.generated)
                plans.append((comp, variant, cfg, stage, detail))
        built = []
        for comp, variant, cfg, stage, detail in plans:
            version = install_version(repository / comp, cfg, stage)
            built.append(BuiltModel(comp, version, variant, repository / comp / str(version), detail))
            logger.info("built %s version %d from %s", comp, version, variant)
        return built
    finally:
        for *_, stage, _detail in plans:
            shutil.rmtree(stage, ignore_errors=True)
        shutil.rmtree(staging, ignore_errors=True)
