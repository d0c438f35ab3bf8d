"""pix2pix's ResNet-9 generator (Isola et al. 2017; Johnson et al. 2016): the from-scratch baseline.

Same layers as junyanz/pytorch-CycleGAN-and-pix2pix `ResnetGenerator(ngf=64, n_blocks=9)` with
instance norm and ConvTranspose2d upsampling (11.4 M params). It ignores the text: one model per
concept, as in the paper's baseline.
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.model.nets.generator import ConvBlock, ResBlock, make_norm


class ResnetGenerator(nn.Module):
    def __init__(self, ngf: int = 64, n_blocks: int = 9, norm: str = "instance"):
        super().__init__()
        self.down = nn.Sequential(
            ConvBlock(3, ngf, 7, norm=norm),
            ConvBlock(ngf, 2 * ngf, 3, stride=2, norm=norm),
            ConvBlock(2 * ngf, 4 * ngf, 3, stride=2, norm=norm),
        )
        self.res = nn.Sequential(*[ResBlock(4 * ngf, norm) for _ in range(n_blocks)])
        self.up = nn.Sequential(
            nn.ConvTranspose2d(4 * ngf, 2 * ngf, 3, stride=2, padding=1, output_padding=1),
            make_norm(norm, 2 * ngf),
            nn.ReLU(True),
            nn.ConvTranspose2d(2 * ngf, ngf, 3, stride=2, padding=1, output_padding=1),
            make_norm(norm, ngf),
            nn.ReLU(True),
        )
        self.out = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(ngf, 3, 7))

    def forward(
        self, x: torch.Tensor, text: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        return torch.tanh(self.out(self.up(self.res(self.down(x)))))
