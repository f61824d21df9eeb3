"""Convolutional VAE: encoder to (mu, logvar), reparameterisation, decoder to [-1, 1] images."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from aigc.errors import ConfigError

logger = logging.getLogger(__name__)


@dataclass
class VAEConfig:
    latent_dim: int = 16
    channels: int = 1
    image_size: int = 32
    hidden: int = 32

    def validate(self) -> None:
        if self.image_size not in (32, 64):
            raise ConfigError(f"--image-size must be 32 or 64 for the VAE, got {self.image_size}")
        if self.channels not in (1, 3):
            raise ConfigError(f"--channels must be 1 or 3, got {self.channels}")
        if self.latent_dim < 1 or self.hidden < 1:
            raise ConfigError(f"--latent-dim must be >= 1, got {self.latent_dim}")


class VAEEncoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        h, n_down = cfg.hidden, {32: 3, 64: 4}[cfg.image_size]
        layers, c = [], cfg.channels
        for i in range(n_down):
            layers += [nn.Conv2d(c, h * 2**i, 4, 2, 1), nn.LeakyReLU(0.2, True)]
            c = h * 2**i
        self.conv = nn.Sequential(*layers, nn.Flatten())
        feat = c * 4 * 4
        self.mu = nn.Linear(feat, cfg.latent_dim)
        self.logvar = nn.Linear(feat, cfg.latent_dim)

    def forward(self, x: torch.Tensor):
        h = self.conv(x)  # (N, C*4*4)
        return self.mu(h), self.logvar(h)


class VAEDecoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        n_up = {32: 3, 64: 4}[cfg.image_size]
        c = cfg.hidden * 2 ** (n_up - 1)
        self.c = c
        self.fc = nn.Linear(cfg.latent_dim, c * 4 * 4)
        layers = []
        for _ in range(n_up - 1):
            layers += [nn.ConvTranspose2d(c, c // 2, 4, 2, 1), nn.ReLU(True)]
            c //= 2
        layers += [nn.ConvTranspose2d(c, cfg.channels, 4, 2, 1), nn.Tanh()]
        self.deconv = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.deconv(self.fc(z).view(-1, self.c, 4, 4))  # (N, C, H, W) in [-1, 1]


class VAE(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.encoder = VAEEncoder(cfg)
        self.decoder = VAEDecoder(cfg)

    def encode(self, x):
        return self.encoder(x)

    def decode(self, z):
        return self.decoder(z)

    def forward(self, x, generator: torch.Generator | None = None):
        mu, logvar = self.encoder(x)
        eps = torch.randn(mu.shape, generator=generator)
        return self.decoder(mu + eps * torch.exp(0.5 * logvar)), mu, logvar


def vae_loss(recon, x, mu, logvar) -> torch.Tensor:
    """Per-sample sum of squared error on the [-1, 1] scale + KL(q(z|x) || N(0, I)), batch mean."""
    rec = ((recon - x) ** 2).flatten(1).sum(1)
    kl = -0.5 * (1 + logvar - mu**2 - logvar.exp()).sum(1)
    return (rec + kl).mean()


SIZES = {"tiny": 32, "small": 64, "124m": 64}


def train(opts) -> Path:
    from tqdm import tqdm

    from training.checkpoint import atomic_dir, save_image_checkpoint
    from training.common import batches, grid_png, image_data, seed_everything

    gen = seed_everything(opts.seed)
    x, data_meta = image_data(opts)
    cfg = VAEConfig(
        latent_dim=opts.latent_dim or 16,
        channels=data_meta["channels"],
        image_size=opts.image_size,
        hidden=SIZES[opts.size],
    )
    cfg.validate()
    steps, bs, lr = opts.steps or 600, opts.batch_size or 64, opts.lr or 1e-3
    with atomic_dir(opts.out) as tmp:
        vae = VAE(cfg)
        opt = torch.optim.Adam(vae.parameters(), lr=lr)
        data = batches(torch.from_numpy(x), bs, gen)
        bar = tqdm(range(steps), desc="vae", disable=None if opts.progress else True)
        for _ in bar:
            real = next(data)
            recon, mu, logvar = vae(real, generator=gen)
            loss = vae_loss(recon, real, mu, logvar)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            bar.set_postfix(loss=f"{loss.item():.2f}")
        vae.eval()
        with torch.no_grad():
            real = torch.from_numpy(x[:32])
            recon = vae.decode(vae.encode(real)[0])
            samples = vae.decode(torch.randn(32, cfg.latent_dim, generator=gen))
        grid = grid_png(torch.cat([real[:16], recon[:16], samples]))
        save_image_checkpoint(tmp, "vae", vae, cfg, data_meta, steps, opts.seed, files={"samples.png": grid})
    logger.info("vae checkpoint written to %s (loss %.2f)", opts.out, loss.item())
    return Path(opts.out)
