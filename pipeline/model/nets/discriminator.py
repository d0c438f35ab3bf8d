"""pix2pix's conditional 70x70 PatchGAN discriminator and the GAN losses, as small pure functions."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PatchDiscriminator(nn.Module):
    """D(input, output): concatenated (B, 6, H, W) -> (B, 1, H/8-2, W/8-2) patch logits (70x70 receptive field)."""

    def __init__(self, ndf: int = 64, n_layers: int = 3, in_channels: int = 6):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        ch = ndf
        for i in range(1, n_layers + 1):
            nxt = ndf * min(2**i, 8)
            stride = 2 if i < n_layers else 1
            layers += [nn.Conv2d(ch, nxt, 4, stride, 1), nn.InstanceNorm2d(nxt, affine=True), nn.LeakyReLU(0.2, True)]
            ch = nxt
        layers.append(nn.Conv2d(ch, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, src: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([src, out], dim=1))


# LSGAN (Mao et al. 2017): D pushes real -> 1, fake -> 0; G pushes fake -> 1
def lsgan_d(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.mse_loss(real, torch.ones_like(real)) + F.mse_loss(fake, torch.zeros_like(fake)))


def lsgan_g(fake: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(fake, torch.ones_like(fake))


# hinge (Lim & Ye 2017; SAGAN)
def hinge_d(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()


def hinge_g(fake: torch.Tensor) -> torch.Tensor:
    return -fake.mean()


GAN_LOSSES = {"lsgan": (lsgan_d, lsgan_g), "hinge": (hinge_d, hinge_g)}


def l1(fake: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.l1_loss(fake, target)
