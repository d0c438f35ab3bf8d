"""The per-concept output curve (nets/tone.py): the identity at the start, any piecewise-linear curve through its
points (a staircase included), it learns at its own rate, and it saves and loads with the adapter."""

from __future__ import annotations

import pytest
import torch

from pipeline.core.errors import E2GANError
from pipeline.model.nets.generator import E2GANGenerator, GeneratorConfig
from pipeline.model.nets.tone import FILE, ToneCurve, load_tone, save_tone, with_tone


def _x(seed: int = 0) -> torch.Tensor:
    return torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_a_new_curve_is_the_identity_and_passes_through_its_points():
    x = _x()
    curve = ToneCurve(8)
    with torch.no_grad():
        assert (curve(x) - x).abs().max() < 1e-6
        curve.values.copy_(torch.stack([curve.grid**2, -curve.grid, torch.zeros_like(curve.grid)]))
        y = curve(x)
    # linear interpolation between the points: exact at the points, the chord in between
    k = ((x[:, 0] + 1) / 0.25).floor().clamp(max=7)
    lo, hi = -1 + 0.25 * k, -1 + 0.25 * (k + 1)
    chord = lo**2 + (x[:, 0] - lo) / 0.25 * (hi**2 - lo**2)
    assert (y[:, 0] - chord).abs().max() < 1e-5
    assert (y[:, 1] + x[:, 1]).abs().max() < 1e-5  # a falling line
    assert y[:, 2].abs().max() == 0  # a constant
    with pytest.raises(ValueError, match="at least 1 segment"):
        ToneCurve(0)


def test_a_staircase_quantises_and_the_output_stays_in_range():
    """Six flat levels with steep steps between them: what a quantising edit needs and a conv net rarely grows."""
    curve = ToneCurve(60)
    levels = torch.linspace(-1, 1, 6)
    with torch.no_grad():
        idx = ((curve.grid + 1) / 2 * 6).floor().clamp(max=5).long()
        curve.values.copy_(levels[idx].repeat(3, 1) * 1.5)  # beyond [-1, 1]: clamped
        y = curve(_x())
    assert y.abs().max() <= 1.0
    assert len(torch.unique(torch.round(y * 1e3))) > 6  # the steps themselves are ramps ...
    inner = y[(y.abs() < 0.99)]
    flat = torch.isclose(inner.unsqueeze(-1), levels[1:-1] * 1.5, atol=1e-5).any(-1)
    assert flat.float().mean() > 0.8  # ... but most values sit on a level


def test_the_generator_runs_its_curve_and_the_base_has_none():
    torch.manual_seed(0)
    G = E2GANGenerator(GeneratorConfig(ngf=8, heads=2)).eval()
    assert G.tone is None and not any(k.startswith("tone") for k in G.state_dict())
    x, text = _x(), torch.randn(2, 5, 384)
    with torch.no_grad():
        before = G(x, text)
        with_tone(G, 4)
        assert (G(x, text) - before).abs().max() < 1e-6  # identity
        G.tone.values.mul_(0.5)
        assert (G(x, text) - 0.5 * before).abs().max() < 1e-5


def test_save_and_load_round_trip_and_bad_files(tmp_path):
    G = with_tone(E2GANGenerator(GeneratorConfig(ngf=8, heads=2)), 8)
    with torch.no_grad():
        G.tone.values.add_(0.1 * torch.randn(G.tone.values.shape))
    assert save_tone(G, tmp_path) == (tmp_path / FILE).stat().st_size > 0
    H = load_tone(E2GANGenerator(GeneratorConfig(ngf=8, heads=2)), tmp_path, E2GANError)
    assert torch.equal(H.tone.values, G.tone.values)
    assert load_tone(E2GANGenerator(GeneratorConfig(ngf=8, heads=2)), tmp_path / "none", E2GANError).tone is None
    assert save_tone(E2GANGenerator(GeneratorConfig(ngf=8, heads=2)), tmp_path / "x") == 0
    (tmp_path / FILE).write_bytes(b"not safetensors")
    with pytest.raises(E2GANError, match="not a readable tone curve.*rerun 'dvc repro finetune_lora'"):
        load_tone(E2GANGenerator(GeneratorConfig(ngf=8, heads=2)), tmp_path, E2GANError)
    from safetensors.torch import save_file

    save_file({"values": torch.zeros(2, 5)}, str(tmp_path / FILE))
    with pytest.raises(E2GANError, match=r"shape \(2, 5\) does not fit"):
        load_tone(E2GANGenerator(GeneratorConfig(ngf=8, heads=2)), tmp_path, E2GANError)


def test_the_curve_learns_at_its_own_rate_and_the_rest_at_lr_g():
    """finetune_models with tone_lr: Adam's first step moves every weight by about its group's rate."""
    from pipeline.adapt.lora import finetune_models
    from pipeline.model.train import TrainConfig

    torch.manual_seed(0)
    base = with_tone(E2GANGenerator(GeneratorConfig(ngf=8, heads=2)), 8)
    cfg = TrainConfig(lr_g=1e-4, lambda_gan=0.0, lambda_lpips=0.0)
    m = finetune_models(base, None, cfg, tone_lr=1e-2)
    assert [g["lr"] for g in m.opt_g.param_groups] == [1e-4, 1e-2]
    x, text = _x(), torch.randn(2, 5, 384)
    before = {n: p.detach().clone() for n, p in m.G.named_parameters()}
    m.opt_g.zero_grad()
    (m.G(x, text) - x.flip(-1)).abs().mean().backward()
    m.opt_g.step()
    moved = {n: (p.detach() - before[n]).abs().max().item() for n, p in m.G.named_parameters()}
    assert 0.5e-2 < moved["tone.values"] <= 1.01e-2
    assert max(v for n, v in moved.items() if n != "tone.values") <= 1.01e-4
    assert torch.equal(base.tone.values, torch.linspace(-1, 1, 9).repeat(3, 1))  # the start is left as it is


def test_the_outline_gate_reads_the_inputs_local_contrast_and_blackens_by_its_curve():
    """tone_window: the gate's input is the input's luminance minus its box mean (OpenCV's box filter with
    replicated borders as the reference), times GAIN; a new gate changes nothing; a step curve turns the pixels
    darker than their neighbourhood black, the others unchanged, whatever the curved output is."""
    import cv2
    import numpy as np

    from pipeline.model.nets.tone import GAIN, LUMA

    x = _x(3)
    curve = ToneCurve(16, window=5)
    assert curve.values.shape == (4, 17) and torch.equal(curve.values[3], torch.ones(17))
    y = np.einsum("bchw,c->bhw", x.numpy().astype(np.float64), np.array(LUMA))
    box = np.stack([cv2.blur(im, (5, 5), borderType=cv2.BORDER_REPLICATE) for im in y])
    want = np.clip((y - box) * GAIN, -1, 1)
    assert np.abs(curve.contrast(x)[:, 0].numpy() - want).max() < 1e-5
    out = _x(4)
    with torch.no_grad():
        assert (curve(out, x) - out).abs().max() < 1e-6  # the identity at the start
        curve.values[3] = (curve.grid > -0.25).float()  # black where contrast * GAIN <= -0.25
        gated = curve(out, x)
    dark = torch.from_numpy(want < -0.25 - 1e-4).unsqueeze(1).expand_as(out)
    light = torch.from_numpy(want > -0.25 + 0.125 + 1e-4).unsqueeze(1).expand_as(out)
    assert 0.02 < dark.float().mean() < 0.98
    assert (gated[dark] + 1).abs().max() < 1e-6  # black
    assert (gated[light] - out[light]).abs().max() < 1e-6  # unchanged
    with pytest.raises(ValueError, match="pass the generator's input"):
        curve(out)
    for bad in (2, 4, 1):
        with pytest.raises(ValueError, match="odd and at least 3"):
            ToneCurve(8, window=bad)


def test_the_generator_feeds_its_input_to_the_gate_and_the_gate_saves_with_its_window(tmp_path):
    torch.manual_seed(0)
    G = E2GANGenerator(GeneratorConfig(ngf=8, heads=2)).eval()
    x, text = _x(), torch.randn(2, 5, 384)
    with torch.no_grad():
        before = G(x, text)
        with_tone(G, 8, 3)
        assert (G(x, text) - before).abs().max() < 1e-6
        G.tone.values[3] = torch.linspace(0, 1, 9)  # darker where the input is darker than around it
        after = G(x, text)
        want = ((before + 1) * G.tone.lookup(G.tone.contrast(x), 27.0) - 1).clamp(-1, 1)
    assert (after - want).abs().max() < 1e-6 and (after - before).abs().max() > 0.1
    save_tone(G, tmp_path)
    H = load_tone(E2GANGenerator(GeneratorConfig(ngf=8, heads=2)), tmp_path, E2GANError)
    assert H.tone.window == 3 and torch.equal(H.tone.values, G.tone.values)
    from safetensors.torch import save_file

    for meta, match in (({"window": "4"}, "odd and at least 3"), ({"window": "0"}, r"shape \(4, 9\) does not fit")):
        save_file({"values": G.tone.values.detach()}, str(tmp_path / FILE), meta)
        with pytest.raises(E2GANError, match=match):
            load_tone(E2GANGenerator(GeneratorConfig(ngf=8, heads=2)), tmp_path, E2GANError)
