"""Networks: shapes, stable module names, size and MACs against the ResNet-9 baseline, loss functions."""
from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from pipeline.nets.discriminator import PatchDiscriminator, hinge_d, hinge_g, lsgan_d, lsgan_g
from pipeline.nets.generator import E2GANGenerator, GeneratorConfig
from pipeline.nets.pix2pix import ResnetGenerator


def macs(model, size: int) -> float:
    x, t = torch.randn(1, 3, size, size), torch.randn(1, 7, 384)
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model.eval()(x, t)
    return fc.get_total_flops() / 2


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("size", [64, 128, 256])
def test_generator_shapes_and_range(size):
    G = E2GANGenerator(GeneratorConfig(ngf=16))
    y = G(torch.randn(2, 3, size, size), torch.randn(2, 5, 384), torch.ones(2, 5))
    assert y.shape == (2, 3, size, size) and y.abs().max() <= 1.0


def test_module_names_are_stable():
    names = {n for n, _ in E2GANGenerator().named_modules()}
    expected = {"down.0.conv", "down.1.conv", "down.2.conv", "res.0.conv1", "res.1.conv2", "res.2.conv1", "ds.conv",
                "tb.attn_self.to_q", "tb.attn_cross.to_k", "tb.attn_cross.to_v", "tb.attn_cross.to_out", "tb.mlp.fc1",
                "tb.mlp.fc2", "us.conv", "up.0.conv", "up.1.conv", "out"}
    assert expected <= names
    assert not any(isinstance(m, torch.nn.ConvTranspose2d) for m in E2GANGenerator().modules())


def test_generator_is_much_smaller_than_resnet9():
    G, R = E2GANGenerator(GeneratorConfig(ngf=32)), ResnetGenerator(ngf=64)
    assert 11.0e6 < n_params(R) < 11.8e6  # pix2pix's ResNet-9: ~11.4 M
    assert n_params(G) < 0.2 * n_params(R)
    ratio = macs(G, 256) / macs(R, 256)
    assert ratio <= 0.5, ratio


def test_mask_hides_padding_tokens():
    G = E2GANGenerator(GeneratorConfig(ngf=8)).eval()
    x, t = torch.randn(1, 3, 32, 32), torch.randn(1, 4, 384)
    padded = torch.cat([t, torch.randn(1, 3, 384)], 1)
    mask = torch.tensor([[1.0] * 4 + [0.0] * 3])
    with torch.no_grad():
        assert torch.allclose(G(x, t), G(x, padded, mask), atol=1e-5)


def test_patch_discriminator():
    D = PatchDiscriminator(ndf=16)
    out = D(torch.randn(2, 3, 128, 128), torch.randn(2, 3, 128, 128))
    assert out.shape == (2, 1, 14, 14)


def test_losses():
    ones, zeros = torch.ones(4), torch.zeros(4)
    assert lsgan_d(ones, zeros) == 0 and lsgan_g(ones) == 0 and lsgan_g(zeros) == 1
    assert hinge_d(ones, -ones) == 0 and hinge_g(ones) == -1
    assert hinge_d(zeros, zeros) == 2
