"""Models in our checkpoint format rebuilt from their checkpoints (the inverse of the
trainers' saves); the kind's registry entry names its config and model classes."""

from __future__ import annotations

import json
from pathlib import Path

from aigc import registry
from aigc.errors import CheckpointError, ConfigError
from training.checkpoint import FORMAT_VERSION, detect_checkpoint_kind


def load_image_checkpoint(path: Path, expected: str | None = None):
    """Rebuild the model from the checkpoint alone; returns (module in eval mode, meta)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    kind = detect_checkpoint_kind(path)
    if expected is not None and kind != expected:
        raise CheckpointError(f"checkpoint at {path} is a {kind!r} checkpoint, expected {expected!r}")
    entry = registry.get(kind)
    if entry.image_model is None:
        raise CheckpointError(f"checkpoint at {path} is a {kind!r} checkpoint, not an image model")
    meta = json.loads((path / "config.json").read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path}: format_version {meta.get('format_version')} is not supported"
        )
    Config, Model = (registry.hook(ref) for ref in entry.image_model)
    try:
        config = Config(**meta["config"])
        config.validate()
    except (TypeError, KeyError, ConfigError) as exc:
        raise CheckpointError(f"checkpoint {path / 'config.json'}: bad model config ({exc})") from exc
    weights = path / "model.safetensors"
    try:
        state = load_file(str(weights))
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path}: model.safetensors missing") from None
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {weights}: corrupt model.safetensors ({exc})") from exc
    module = Model(config)
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {weights}: weights do not match config.json ({exc})") from exc
    return module.eval(), meta
