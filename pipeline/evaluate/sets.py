"""evaluate@C's statistics: a set of outputs against the teacher's edits of the same inputs (LPIPS, PSNR,
SSIM and, with a CLIP model, the directional CLIP score per crop; KID and FID per set) and their spreads.

- Per-crop metrics: the mean over the crops and a 95 % percentile interval from a bootstrap over photos.
  Each resample draws the set's photos with replacement and keeps every crop of each drawn photo, since
  crops of one photo are not independent samples (a crop bootstrap would make the interval too narrow).
- Two methods on the same crops: `paired_difference`, the mean per-crop difference and its photo-bootstrap
  95 % interval (evaluate@C: student - identity, student - base without adapter).
- KID and FID are statistics of a whole set, not means over crops: the value is computed on the whole
  set and the spread (`boot_std`) is the standard deviation over resamples of the crops, a rough guide
  only. Two methods' KIDs on the same crops get a paired difference (`paired_kid`): the whole-set
  difference and a 95 % interval from photo half-samples (`photo_halves`), the same ones for both methods.
- FID is computed only for sets of at least `EvaluateConfig.fid_min_crops` crops: below the Inception
  features' 2048 dimensions their covariance is singular and FID mostly measures the set's size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.core.metrics import fid_from_features, inception_features, kid_from_features, lpips_distance, psnr, ssim

FEATURE_CACHE_ENTRIES = 64  # feature sets kept (about 1.2 MB each for 152 crops)


def cached_features(images: list[np.ndarray], cache: Path | None, code: str) -> np.ndarray:
    """`inception_features(images)`, kept in the folder `cache` by the images' exact bytes and `code` (the
    evaluating stage's code hash; io.cached_arrays): every concept is scored on the same test inputs, so the
    identity's features are computed once for all of them, and a rerun that changes no image (e.g. another
    bootstrap count) computes none. Without a folder, the features are computed."""
    from pipeline.core.io import cached_arrays

    return cached_arrays(images, cache, code, lambda ims: inception_features(ims), FEATURE_CACHE_ENTRIES, len(images))


def _photo_crops(photos: list[str]) -> tuple[list[str], dict[str, np.ndarray]]:
    """The photo names (sorted) and each photo's crop indices (`photos[i]` names crop i's photo)."""
    names = sorted(set(photos))
    return names, {p: np.asarray([i for i, q in enumerate(photos) if q == p]) for p in names}


def photo_resamples(photos: list[str], n_boot: int, seed: int) -> list[np.ndarray]:
    """`n_boot` bootstrap resamples over photos: each draws as many photos as there are, with replacement, and
    is the indices of every crop of the drawn photos (`photos[i]` names crop i's photo)."""
    names, crops = _photo_crops(photos)
    rng = np.random.default_rng(seed)
    return [np.concatenate([crops[names[k]] for k in rng.integers(0, len(names), len(names))]) for _ in range(n_boot)]


def photo_halves(photos: list[str], n: int, seed: int) -> list[np.ndarray]:
    """`n` half-samples over photos: each draws half the photos without replacement and is the indices of their
    crops. For a mean-like statistic a half-sample's spread around the whole set's value equals the whole set's
    sampling spread (finite-population correction 1 - 1/2), and, unlike a bootstrap resample, it repeats no
    crop: a set metric such as KID stays unbiased on it."""
    names, crops = _photo_crops(photos)
    rng = np.random.default_rng(seed)
    half = max(1, len(names) // 2)
    return [
        np.concatenate([crops[names[k]] for k in sorted(rng.choice(len(names), half, replace=False))]) for _ in range(n)
    ]


def crop_resamples(n: int, n_boot: int, seed: int) -> list[np.ndarray]:
    """`n_boot` bootstrap resamples of `n` crops, each crop drawn on its own (for the set metrics)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, n, n) for _ in range(n_boot)]


def interval(values: np.ndarray, idx: list[np.ndarray]) -> dict:
    """The mean of `values` and the 95 % percentile interval of the mean over the resamples `idx` (resample means
    themselves, not interpolated: an infinite PSNR of an unchanged crop stays infinite instead of NaN)."""
    values = np.asarray(values, dtype=np.float64)
    means = np.asarray([values[i].mean() for i in idx])
    low, high = np.percentile(means, [2.5, 97.5], method="inverted_cdf")
    return {"mean": float(values.mean()), "ci95": {"low": float(low), "high": float(high)}}


def paired_difference(a, b, photos: list[str], n_boot: int, seed: int) -> dict:
    """Method a minus method b on the same crops (per-crop values in the same order, `photos[i]` crop i's photo):
    the mean difference and its 95 % interval from a bootstrap over photos. An interval that excludes 0 is a
    difference these photos support; one that contains 0 is a tie."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if not len(d) == len(photos) > 0:
        raise ValueError(f"paired_difference: {len(a)} and {len(b)} values for {len(photos)} photos' crops")
    return {**interval(d, photo_resamples(photos, n_boot, seed)), "n": len(d), "photos": len(set(photos))}


def per_crop(outputs: list[np.ndarray], teacher: list[np.ndarray], inputs=None, prompt="", clip=None) -> dict:
    """Per crop: LPIPS (alex), PSNR and SSIM of each output against the teacher's edit of the same input, and
    with a CLIP scorer the directional CLIP score of input -> output against `prompt`."""
    out = {
        "lpips": np.asarray(lpips_distance(outputs, teacher), dtype=np.float64),
        "psnr": np.asarray([psnr(a, b) for a, b in zip(outputs, teacher)]),
        "ssim": np.asarray([ssim(a, b) for a, b in zip(outputs, teacher)]),
    }
    if clip is not None:
        out["clip_direction"] = np.asarray(clip.directional(inputs, outputs, [prompt] * len(outputs)), np.float64)
    return out


def compare_sets(
    outputs: list[np.ndarray],
    teacher: list[np.ndarray],
    teacher_feats: np.ndarray,
    inputs: list[np.ndarray],
    prompt: str,
    photos: list[str],
    *,
    n_boot: int,
    set_boot: int,
    seed: int,
    clip=None,
    fid_boot: int = 0,
    fid: bool = True,
    feats: np.ndarray | None = None,
) -> tuple[dict, dict[str, np.ndarray]]:
    """All metrics of `outputs` against `teacher` (same inputs, same order; `photos[i]` names crop i's photo):
    per-crop metrics with `n_boot` photo resamples, KID over `set_boot` crop resamples and FID over the first
    `fid_boot` of those (each FID is a 2048x2048 matrix square root, seconds on a CPU). Without `fid`, FID is
    left out (value None) and KID, which needs no square root, stays. `feats`: the outputs' Inception features
    when the caller has them. Returns (the summary, the per-crop values for paired differences)."""
    values = per_crop(outputs, teacher, inputs, prompt, clip)
    by_photo = photo_resamples(photos, n_boot, seed)
    by_crop = crop_resamples(len(outputs), set_boot, seed)
    feats = inception_features(outputs) if feats is None else feats
    fid_b = [fid_from_features(feats[i], teacher_feats[i]) for i in by_crop[:fid_boot]] if fid else []
    kid_b = [kid_from_features(feats[i], teacher_feats[i], seed) for i in by_crop]
    out = {
        "n": len(outputs),
        "photos": len(set(photos)),
        "fid": {
            "value": fid_from_features(feats, teacher_feats) if fid else None,
            "boot_std": float(np.std(fid_b)) if fid_b else None,
            "boot_n": len(fid_b),
        },
        "kid": {
            "value": kid_from_features(feats, teacher_feats, seed),
            "boot_std": float(np.std(kid_b)) if kid_b else None,
            "boot_n": len(kid_b),
        },
        **{k: interval(v, by_photo) for k, v in values.items()},
    }
    return out, values


def paired_kid(
    feats_a: np.ndarray, feats_b: np.ndarray, teacher_feats: np.ndarray, photos: list[str], n_boot: int, seed: int
) -> dict:
    """KID of method a minus KID of method b, both against the teacher on the same crops (features in the same
    crop order): the whole-set difference and its 95 % interval over `n_boot` photo half-samples
    (`photo_halves`: a bootstrap's repeated crops would bias KID), each applied to both methods and the teacher
    alike. clean-fid's cross term counts each crop's own (output, teacher) pair, whose weight grows as the set
    shrinks, so half-sample differences sit a little off the whole set's: the interval is their spread around
    their median, placed around the whole set's difference. An interval that excludes 0 is a difference these
    photos support."""
    if not len(feats_a) == len(feats_b) == len(teacher_feats) == len(photos) > 0:
        raise ValueError(
            f"paired_kid: {len(feats_a)}, {len(feats_b)} and {len(teacher_feats)} features for {len(photos)} crops"
        )

    def diff(i) -> float:
        return kid_from_features(feats_a[i], teacher_feats[i], seed) - kid_from_features(
            feats_b[i], teacher_feats[i], seed
        )

    whole = diff(np.arange(len(photos)))
    means = np.asarray([diff(i) for i in photo_halves(photos, n_boot, seed)])
    ci = None
    if len(means):
        low, mid, high = np.percentile(means, [2.5, 50, 97.5], method="inverted_cdf")
        ci = {"low": float(whole + low - mid), "high": float(whole + high - mid)}
    return {
        "mean": whole,
        "ci95": ci,
        "n": len(photos),
        "photos": len(set(photos)),
        "resamples": len(means),
    }
