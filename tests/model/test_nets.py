"""Networks: shapes, stable module names, size and MACs against the ResNet-9 baseline, loss functions."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from pipeline.model.nets.discriminator import PatchDiscriminator, hinge_d, hinge_g, lsgan_d, lsgan_g
from pipeline.model.nets.generator import E2GANGenerator, GeneratorConfig, TextNorm, freeze_text_norms
from pipeline.model.nets.pix2pix import ResnetGenerator


def macs(model, size: int) -> float:
    x, t = torch.randn(1, 3, size, size), torch.randn(1, 7, 384)
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model.eval()(x, t)
    return fc.get_total_flops() / 2


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "size,norm", [(64, "instance"), (128, "instance"), (256, "instance"), (64, "film"), (128, "film")]
)
def test_generator_shapes_and_range(size, norm):
    G = E2GANGenerator(GeneratorConfig(ngf=16, norm=norm))
    y = G(torch.randn(2, 3, size, size), torch.randn(2, 5, 384), torch.ones(2, 5))
    assert y.shape == (2, 3, size, size) and y.abs().max() <= 1.0


def test_module_names_are_stable():
    names = {n for n, _ in E2GANGenerator().named_modules()}
    expected = {
        "down.0.conv",
        "down.1.conv",
        "down.2.conv",
        "res.0.conv1",
        "res.1.conv2",
        "res.2.conv1",
        "ds.conv",
        "tb.attn_self.to_q",
        "tb.attn_cross.to_k",
        "tb.attn_cross.to_v",
        "tb.attn_cross.to_out",
        "tb.mlp.fc1",
        "tb.mlp.fc2",
        "us.conv",
        "up.0.conv",
        "up.1.conv",
        "out",
    }
    assert expected <= names
    assert not any(isinstance(m, torch.nn.ConvTranspose2d) for m in E2GANGenerator().modules())


@pytest.mark.parametrize("norm", ["instance", "film"])
def test_generator_is_much_smaller_than_resnet9(norm):
    G, R = E2GANGenerator(GeneratorConfig(ngf=32, norm=norm)), ResnetGenerator(ngf=64)
    assert 11.0e6 < n_params(R) < 11.8e6  # pix2pix's ResNet-9: ~11.4 M
    assert n_params(G) < (0.2 if norm == "instance" else 0.3) * n_params(R)
    ratio = macs(G, 256) / macs(R, 256)
    assert ratio <= 0.5, ratio


def test_text_norm_starts_as_instance_norm_and_carries_the_prompt():
    torch.manual_seed(0)
    inst = E2GANGenerator(GeneratorConfig(ngf=8, heads=2, residual=False, norm="instance", skip=False)).eval()
    torch.manual_seed(0)
    film = E2GANGenerator(GeneratorConfig(ngf=8, heads=2, residual=False, norm="film", skip=False)).eval()
    shared = {k: v for k, v in inst.state_dict().items() if k in film.state_dict()}
    film.load_state_dict(shared, strict=False)
    missing = set(film.state_dict()) - set(shared)
    assert missing and all(".to_scale." in k or ".to_shift." in k for k in missing)
    # instance-norm affines (weight 1, bias 0 at init) == text norms with zero weights, bias 1 / 0
    x, t = torch.rand(2, 3, 32, 32) * 2 - 1, torch.randn(2, 5, 384)
    with torch.no_grad():
        assert torch.allclose(inst(x, t), film(x, t), atol=1e-5)
        film.up[0].norm.to_scale.weight.normal_(0, 0.1)  # the prompt now sets the channel scales
        a, b = film(x[:1], t[:1]), film(x[:1], t[1:])
    assert (a - b).abs().max() > 1e-3
    assert isinstance(film.res[2].norm1, TextNorm)


@pytest.mark.parametrize("norm", ["instance", "film"])
def test_mask_hides_padding_tokens(norm):
    G = E2GANGenerator(GeneratorConfig(ngf=8, norm=norm)).eval()
    if norm == "film":
        with torch.no_grad():
            for n, p in G.named_parameters():
                if ".to_scale." in n or ".to_shift." in n:
                    p.normal_(0, 0.05)
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


def test_freezing_the_text_norms_for_one_prompt_keeps_the_output():
    torch.manual_seed(0)
    G = E2GANGenerator(GeneratorConfig(ngf=8, heads=2, norm="film")).eval()
    with torch.no_grad():
        for n, p in G.named_parameters():
            if ".to_scale." in n or ".to_shift." in n:
                p.normal_(0, 0.05)
    x, t, m = torch.rand(2, 3, 32, 32) * 2 - 1, torch.randn(1, 6, 384), torch.tensor([[1.0] * 4 + [0.0] * 2])
    frozen = freeze_text_norms(G, t, m)
    assert not any(isinstance(mod, TextNorm) for mod in frozen.modules())
    assert any(isinstance(mod, TextNorm) for mod in G.modules())  # the original is untouched
    with torch.no_grad():
        want = G(x, t.expand(2, -1, -1), m.expand(2, -1))
        assert torch.allclose(frozen(x, t.expand(2, -1, -1), m.expand(2, -1)), want, atol=1e-6)
    assert n_params(frozen) < n_params(G) - 20 * 384  # the text Linear layers are gone


def test_stem_skip_starts_at_identity_and_makes_sharpening_learnable(tmp_path):
    """Sharpening is a full-resolution edit: with the stem skip a short run learns it; the 1/4-resolution
    body alone barely moves from the identity in the same steps."""
    from torchvision.transforms.functional import gaussian_blur

    from pipeline.data.dataset import PairData
    from pipeline.model.train import TrainConfig, build_models, fit
    from tests.conftest import synthetic_photo

    imgs = torch.stack([torch.from_numpy(synthetic_photo(32, 32, seed=i)).permute(2, 0, 1) for i in range(40)])
    g = torch.Generator().manual_seed(0)
    imgs = (imgs.float() + torch.randn(40, 1, 32, 32, generator=g) * 20).clamp(0, 255)  # grain to sharpen
    x = imgs / 127.5 - 1
    y = (x + 1.5 * (x - gaussian_blur(x, 5, 1.0))).clamp(-1, 1)  # an unsharp mask
    to_u8 = lambda t: ((t + 1) * 127.5).round().to(torch.uint8)  # noqa: E731
    train = PairData(to_u8(x[:32]), to_u8(y[:32]), [[0]] * 32, torch.randn(1, 3, 384, generator=g), torch.ones(1, 3))
    xt, yt = x[32:], y[32:]
    errors = {}
    for skip in (False, True):
        torch.manual_seed(0)
        G = E2GANGenerator(GeneratorConfig(ngf=16, heads=2, norm="film", skip=skip))
        with torch.no_grad():
            assert torch.allclose(G(xt, train.tokens[:1].expand(8, -1, -1)), xt, atol=2e-3)  # identity at init
        cfg = TrainConfig(steps=120, batch_size=8, lr_g=1e-3, lambda_gan=0.0, lambda_l1=10.0, ckpt_every=1000)
        fit(build_models(G, cfg), train, cfg, tmp_path / str(skip))
        with torch.no_grad():
            errors[skip] = float((G.eval()(xt, train.tokens[:1].expand(8, -1, -1)) - yt).abs().mean())
    identity = float((xt - yt).abs().mean())
    assert errors[True] < 0.7 * identity, (errors, identity)
    assert errors[True] < 0.8 * errors[False], (errors, identity)
