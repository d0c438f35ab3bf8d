"""evaluate@C's spreads with known answers: the bootstrap over photos keeps a photo's crops together (and so is
wider than a crop bootstrap when crops of one photo agree), and paired differences tell a real difference
from a tie."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from pipeline.evaluate.sets import crop_resamples, interval, paired_difference, photo_resamples


def _photos(n_photos: int, crops: int) -> list[str]:
    return [f"p{k}" for k in range(n_photos) for _ in range(crops)]


def test_a_photo_resample_keeps_every_crop_of_each_drawn_photo():
    photos = ["a", "a", "a", "b", "c", "c"]  # photos of different sizes
    for idx in photo_resamples(photos, 200, seed=0):
        drawn = Counter(photos[i] for i in idx)
        counts = Counter(idx.tolist())
        for i, p in enumerate(photos):  # each crop appears exactly as often as its photo was drawn
            assert counts.get(i, 0) * photos.count(p) == drawn.get(p, 0)
        assert sum(drawn[p] / photos.count(p) for p in drawn) == 3  # as many photos as there are, with replacement
    assert all(
        np.array_equal(a, b) for a, b in zip(photo_resamples(photos, 5, seed=1), photo_resamples(photos, 5, seed=1))
    )


def test_two_photos_whose_crops_agree_give_the_whole_range():
    """Photo A's crops all score 0, photo B's all 1: a resample of photos is AA, AB or BA, or BB (means 0, 0.5,
    1 with probability 1/4, 1/2, 1/4), so the 95 % interval is [0, 1]; resampling the 16 crops on their own
    pretends there are 16 independent samples and gives a far narrower interval around 0.5."""
    values, photos = np.repeat([0.0, 1.0], 8), _photos(2, 8)
    by_photo = interval(values, photo_resamples(photos, 2000, seed=0))
    by_crop = interval(values, crop_resamples(len(values), 2000, seed=0))
    assert by_photo == {"mean": 0.5, "ci95": {"low": 0.0, "high": 1.0}}
    assert 0.2 < by_crop["ci95"]["low"] < 0.5 < by_crop["ci95"]["high"] < 0.8


def test_the_photo_interval_is_wider_than_the_crop_interval_when_crops_of_a_photo_are_identical():
    rng = np.random.default_rng(0)
    per_photo = rng.normal(0.3, 0.05, 6)  # six photos, eight identical crops each
    values, photos = np.repeat(per_photo, 8), _photos(6, 8)
    width = lambda r: r["ci95"]["high"] - r["ci95"]["low"]  # noqa: E731
    photo_w = width(interval(values, photo_resamples(photos, 1000, seed=0)))
    crop_w = width(interval(values, crop_resamples(len(values), 1000, seed=0)))
    assert photo_w > 2 * crop_w  # about sqrt(8) times: the 48 crops are only 6 independent samples


def test_identical_photos_give_a_zero_width_interval():
    r = interval(np.full(12, 0.25), photo_resamples(_photos(3, 4), 100, seed=0))
    assert r == {"mean": 0.25, "ci95": {"low": 0.25, "high": 0.25}}


def test_a_paired_difference_that_excludes_zero_and_one_that_contains_it():
    rng = np.random.default_rng(0)
    photos = _photos(8, 4)
    base = rng.uniform(0.2, 0.6, len(photos))  # photo and crop variation far larger than the effect ...
    better = base - 0.05 + rng.normal(0, 0.005, len(photos))  # ... which pairing removes
    real = paired_difference(better, base, photos, 1000, seed=0)
    assert real["mean"] == pytest.approx(-0.05, abs=0.005) and real["ci95"]["high"] < 0
    assert real["n"] == 32 and real["photos"] == 8
    noise = base + rng.normal(0, 0.02, len(photos))  # no difference: only noise
    tie = paired_difference(noise, base, photos, 1000, seed=0)
    assert tie["ci95"]["low"] < 0 < tie["ci95"]["high"]
    const = paired_difference(base + 0.1, base, photos, 100, seed=0)  # a constant shift, known exactly
    assert const["mean"] == pytest.approx(0.1) and const["ci95"] == pytest.approx({"low": 0.1, "high": 0.1})


def test_a_paired_difference_needs_one_photo_per_crop():
    with pytest.raises(ValueError, match="3 and 3 values for 2 photos"):
        paired_difference([1, 2, 3], [1, 2, 3], ["a", "b"], 10, seed=0)


def test_cached_features_are_the_features_and_never_outlive_the_code(tmp_path, monkeypatch):
    """The cache returns exactly what clean-fid computes, computes a set once per code, misses on any changed
    pixel, and drops what other code wrote."""
    import pipeline.evaluate.sets as sets

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(3)]
    fresh = sets.inception_features(images)
    calls = []
    monkeypatch.setattr(sets, "inception_features", lambda ims: calls.append(len(ims)) or fresh.copy())
    cache = tmp_path / "features"
    first = sets.cached_features(images, cache, "a" * 64)
    again = sets.cached_features([im.copy() for im in images], cache, "a" * 64)
    assert calls == [3] and np.array_equal(first, fresh) and np.array_equal(again, fresh)
    changed = [im.copy() for im in images]
    changed[1][0, 0, 0] ^= 1
    sets.cached_features(changed, cache, "a" * 64)
    assert calls == [3, 3] and len(list(cache.glob("*.npy"))) == 2
    sets.cached_features(images, cache, "b" * 64)  # other code: computed again, the old entries removed
    assert calls == [3, 3, 3]
    assert [p.name[:16] for p in cache.glob("*.npy")] == ["b" * 16]
    assert np.array_equal(sets.cached_features(images, None, ""), fresh) and calls == [3, 3, 3, 3]
    monkeypatch.setattr(sets, "FEATURE_CACHE_ENTRIES", 2)  # bounded: the newest entries stay
    for k in range(3):
        sets.cached_features([im + k + 1 for im in images], cache, "b" * 64)
    assert len(list(cache.glob("*.npy"))) == 2
    n = len(calls)
    sets.cached_features(images, cache, "b" * 64)
    newest = max(cache.glob("*.npy"), key=lambda f: f.stat().st_mtime)
    newest.write_bytes(b"not an array")  # an unreadable entry is computed again, never trusted
    assert np.array_equal(sets.cached_features(images, cache, "b" * 64), fresh) and len(calls) == n + 2
