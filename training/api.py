"""`train(TrainOptions)`: the typed entry point of the training stage."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aigc import registry
from aigc.errors import ConfigError

MODELS = registry.names()
SIZES = ("tiny", "small", "124m")


@dataclass
class TrainOptions:
    model: str
    out: Path
    steps: int | None = None  # None: the model's tiny default (about a minute on 2 CPU cores)
    batch_size: int | None = None
    lr: float | None = None
    seed: int = 0
    data: Path | None = None
    size: str = "tiny"
    image_size: int = 32
    channels: int | None = None
    latent_dim: int | None = None
    progress: bool = True  # a bar on a terminal only (tqdm disable=None)

    def validate(self) -> None:
        if self.model not in MODELS:
            raise ConfigError(f"model must be one of {', '.join(MODELS)}, got {self.model!r}")
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"--steps must be >= 1, got {self.steps}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.lr is not None and not 0 < self.lr < 1:
            raise ConfigError(f"--lr must be in (0, 1), got {self.lr}")
        if self.size not in SIZES:
            raise ConfigError(f"--size must be one of {', '.join(SIZES)}, got {self.size!r}")
        if self.image_size not in (32, 64):
            raise ConfigError(f"--image-size must be 32 or 64, got {self.image_size}")
        if self.channels is not None and self.channels not in (1, 3):
            raise ConfigError(f"--channels must be 1 or 3, got {self.channels}")
        if self.latent_dim is not None and not 1 <= self.latent_dim <= 1024:
            raise ConfigError(f"--latent-dim must be in 1..1024, got {self.latent_dim}")
        if self.data is not None and not Path(self.data).is_dir():
            raise ConfigError(f"--data {self.data}: not a folder")


def train(opts: TrainOptions) -> Path:
    """Train one model; returns the checkpoint folder (written atomically)."""
    opts.validate()
    opts.out = Path(opts.out)
    return registry.hook(registry.get(opts.model).train)(opts)
