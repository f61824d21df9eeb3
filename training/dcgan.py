"""DCGAN (Radford et al.): transposed-convolution generator, strided-convolution critic."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from aigc.errors import ConfigError

logger = logging.getLogger(__name__)


@dataclass
class DCGANConfig:
    latent_dim: int = 100
    channels: int = 1
    image_size: int = 32
    g_features: int = 64
    d_features: int = 64

    def validate(self) -> None:
        if self.image_size not in (32, 64):
            raise ConfigError(f"--image-size must be 32 or 64 for DCGAN, got {self.image_size}")
        if self.channels not in (1, 3):
            raise ConfigError(f"--channels must be 1 or 3, got {self.channels}")
        if self.latent_dim < 1 or self.g_features < 1 or self.d_features < 1:
            raise ConfigError("--latent-dim and feature widths must be >= 1")


def _init(m: nn.Module) -> None:
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


class Generator(nn.Module):
    def __init__(self, cfg: DCGANConfig):
        super().__init__()
        f = cfg.g_features
        n_up = {32: 3, 64: 4}[cfg.image_size]  # 4x4 -> image_size
        mult = 2 ** (n_up - 1)
        layers = [
            nn.ConvTranspose2d(cfg.latent_dim, f * mult, 4, 1, 0, bias=False),
            nn.BatchNorm2d(f * mult),
            nn.ReLU(True),
        ]
        for _ in range(n_up - 1):
            layers += [
                nn.ConvTranspose2d(f * mult, f * mult // 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(f * mult // 2),
                nn.ReLU(True),
            ]
            mult //= 2
        layers += [nn.ConvTranspose2d(f * mult, cfg.channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.apply(_init)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z[:, :, None, None])  # (N, latent) -> (N, C, H, W) in [-1, 1]


class Discriminator(nn.Module):
    def __init__(self, cfg: DCGANConfig):
        super().__init__()
        f = cfg.d_features
        n_down = {32: 3, 64: 4}[cfg.image_size]
        layers = [nn.Conv2d(cfg.channels, f, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)]
        mult = 1
        for _ in range(n_down - 1):
            layers += [
                nn.Conv2d(f * mult, f * mult * 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(f * mult * 2),
                nn.LeakyReLU(0.2, True),
            ]
            mult *= 2
        layers += [nn.Conv2d(f * mult, 1, 4, 1, 0, bias=False)]
        self.net = nn.Sequential(*layers)
        self.apply(_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten(1)  # (N, 1) logits


SIZES = {"tiny": (32, 32), "small": (64, 64), "124m": (64, 64)}


def train(opts) -> Path:
    from tqdm import tqdm

    from training.checkpoint import atomic_dir, save_image_checkpoint
    from training.common import batches, grid_png, image_data, seed_everything

    gen = seed_everything(opts.seed)
    x, data_meta = image_data(opts)
    gf, df = SIZES[opts.size]
    cfg = DCGANConfig(
        latent_dim=opts.latent_dim or 100,
        channels=data_meta["channels"],
        image_size=opts.image_size,
        g_features=gf,
        d_features=df,
    )
    cfg.validate()
    steps, bs, lr = opts.steps or 400, opts.batch_size or 64, opts.lr or 2e-4
    with atomic_dir(opts.out) as tmp:
        g, d = Generator(cfg), Discriminator(cfg)
        opt_g = torch.optim.Adam(g.parameters(), lr=lr, betas=(0.5, 0.999))
        opt_d = torch.optim.Adam(d.parameters(), lr=lr, betas=(0.5, 0.999))
        bce = nn.BCEWithLogitsLoss()
        data = batches(torch.from_numpy(x), bs, gen)
        bar = tqdm(range(steps), desc="dcgan", disable=None if opts.progress else True)
        for _ in bar:
            real = next(data)
            z = torch.randn(len(real), cfg.latent_dim, generator=gen)
            fake = g(z)
            loss_d = bce(d(real), torch.ones(len(real), 1)) + bce(d(fake.detach()), torch.zeros(len(real), 1))
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
            loss_g = bce(d(fake), torch.ones(len(real), 1))
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
            bar.set_postfix(loss_d=f"{loss_d.item():.3f}", loss_g=f"{loss_g.item():.3f}")
        g.eval()
        with torch.no_grad():
            samples = g(torch.randn(64, cfg.latent_dim, generator=gen))
        save_image_checkpoint(
            tmp,
            "dcgan",
            g,
            cfg,
            data_meta,
            steps,
            opts.seed,
            extra_modules={"discriminator": d},
            files={"samples.png": grid_png(samples)},
        )
    logger.info(
        "dcgan checkpoint written to %s (loss_d %.3f, loss_g %.3f)", opts.out, loss_d.item(), loss_g.item()
    )
    return Path(opts.out)
