"""Self-describing checkpoints: safetensors weights + the constructor arguments in JSON."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from aigc import registry
from aigc.errors import CheckpointError
from aigc.fsutil import atomic_dir  # noqa: F401 - re-exported for the trainers

FORMAT = "aigc-checkpoint"
FORMAT_VERSION = 1


def save_image_checkpoint(
    out_dir: Path,
    kind: str,
    module,
    config,
    data_meta: dict,
    step: int,
    seed: int,
    extra_modules: dict | None = None,
    files: dict | None = None,
) -> None:
    """Write weights + config.json (+ `files`: name -> bytes) into `out_dir` (already a temp dir)."""
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(out_dir / "model.safetensors"))
    for name, extra in (extra_modules or {}).items():
        save_file(
            {k: v.contiguous() for k, v in extra.state_dict().items()}, str(out_dir / f"{name}.safetensors")
        )
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": kind,
        "config": dataclasses.asdict(config),
        "data": data_meta,
        "step": step,
        "seed": seed,
    }
    (out_dir / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
    for name, payload in (files or {}).items():
        (out_dir / name).write_bytes(payload)


def detect_checkpoint_kind(path: Path) -> str:
    """The registered kind of the checkpoint: ours (`config.json` names it) or a Hugging Face
    folder whose `model_type` a kind registers."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path}: no such folder")
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path}: not a folder")
    cfg = path / "config.json"
    try:
        meta = json.loads(cfg.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path}: config.json missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"checkpoint {cfg}: unreadable JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint {cfg}: not a checkpoint config")
    model = meta.get("model") if meta.get("format") == FORMAT else None
    ours = registry.KINDS.get(model) if isinstance(model, str) else None
    if ours is not None and ours.hf_model_type is None:
        return ours.name
    hf = registry.by_hf_model_type(meta.get("model_type"))
    if hf is not None:
        return hf.name
    hf_types = ", ".join(k.hf_model_type for k in registry.KINDS.values() if k.hf_model_type)
    raise CheckpointError(
        f"checkpoint {cfg}: neither an aigc checkpoint nor a Hugging Face config of model_type {hf_types}"
    )
