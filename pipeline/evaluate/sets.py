"""evaluate@C: the student's held-out outputs against the teacher's (FID, KID, LPIPS, PSNR, SSIM and,
with a CLIP model, the directional CLIP score), beside the base model without the adapter and the
identity mapping. Spread: bootstrap resamples of the held-out set (mean and standard deviation)."""

from __future__ import annotations

import numpy as np

from pipeline.core.metrics import fid_from_features, inception_features, kid_from_features, lpips_distance, psnr, ssim


def _boot(values: np.ndarray, idx: list[np.ndarray]) -> dict[str, float]:
    means = [float(values[i].mean()) for i in idx]
    return {"mean": float(values.mean()), "boot_std": float(np.std(means))}


def compare_sets(
    outputs: list[np.ndarray],
    teacher: list[np.ndarray],
    teacher_feats: np.ndarray,
    inputs: list[np.ndarray],
    prompt: str,
    n_boot: int,
    seed: int,
    clip=None,
    fid_boot: int = 0,
    fid: bool = True,
) -> dict:
    """All metrics of `outputs` against `teacher` (same inputs, same order). FID's spread uses only the
    first `fid_boot` resamples: each FID is a 2048x2048 matrix square root, seconds on a CPU. Without
    `fid`, FID is left out (value None) and KID, which needs no square root, stays."""
    rng = np.random.default_rng(seed)
    n = len(outputs)
    idx = [rng.integers(0, n, n) for _ in range(n_boot)]
    feats = inception_features(outputs)
    lp = np.asarray(lpips_distance(outputs, teacher), dtype=np.float64)
    ps = np.asarray([psnr(a, b) for a, b in zip(outputs, teacher)])
    ss = np.asarray([ssim(a, b) for a, b in zip(outputs, teacher)])
    fid_b = [fid_from_features(feats[i], teacher_feats[i]) for i in idx[:fid_boot]] if fid else []
    kid_b = [kid_from_features(feats[i], teacher_feats[i], seed) for i in idx]
    out = {
        "n": n,
        "fid": {
            "value": fid_from_features(feats, teacher_feats) if fid else None,
            "boot_std": float(np.std(fid_b)) if fid_b else None,
            "boot_n": len(fid_b),
        },
        "kid": {"value": kid_from_features(feats, teacher_feats, seed), "boot_std": float(np.std(kid_b))},
        "lpips": _boot(lp, idx),
        "psnr": _boot(ps, idx),
        "ssim": _boot(ss, idx),
    }
    if clip is not None:
        d = np.asarray(clip.directional(inputs, outputs, [prompt] * n), dtype=np.float64)
        out["clip_direction"] = _boot(d, idx)
    return out
