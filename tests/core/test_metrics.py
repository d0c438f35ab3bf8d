"""Metrics with real offline weights: LPIPS sanity values, FID/KID through clean-fid, PSNR/SSIM."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from pipeline.core import metrics


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_sanity(crops128, net):
    a, b = crops128[0], crops128[5]
    blur = cv2.GaussianBlur(a, (0, 0), 3)
    d = metrics.lpips_distance([a, a, a], [a, blur, b], net=net)
    assert d[0] == pytest.approx(0.0, abs=1e-6)
    assert d[1] > 0.3, d
    assert d[2] > 0.5, d


def test_fid_kid_offline(crops128):
    a, b = crops128[:12], crops128[12:24]
    fa, fb = metrics.inception_features(a), metrics.inception_features(b)
    assert fa.shape == fb.shape == (12, 2048)
    assert metrics.fid_from_features(fa, fa) == pytest.approx(0.0, abs=1e-2)
    assert metrics.fid_from_features(fa, fb) > 50.0
    kid_same, kid_diff = metrics.kid_from_features(fa, fa), metrics.kid_from_features(fa, fb)
    assert np.isfinite(kid_diff) and kid_diff > kid_same


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
    same = compare_sets(teacher, teacher, tf, other, "p", n_boot=3, seed=0, fid=False)
    diff = compare_sets(other, teacher, tf, other, "p", n_boot=3, seed=0, fid=False)
    assert same["fid"]["value"] is None and diff["fid"]["boot_n"] == 0
    assert same["lpips"]["mean"] == 0.0 and diff["lpips"]["mean"] > 0.2
    assert diff["kid"]["value"] > same["kid"]["value"] + 0.01
