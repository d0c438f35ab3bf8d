"""Rank search (greedy on dW spectra), random ranks, data subsets: checked on constructed cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.adapt.lora import lora_parameters
from pipeline.adapt.ranks import SearchRanksConfig, count, greedy_ranks, random_ranks, spectra
from pipeline.adapt.subset import choose_subset, coverage, image_features, kmeans_subset, random_subset
from pipeline.core.errors import E2GANError


def _low_rank(out: int, inp: int, rank: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(out, rank, generator=g) @ torch.randn(rank, inp, generator=g)


def _layers():
    return {"a": nn.Linear(64, 64), "b": nn.Linear(64, 64), "c": nn.Conv2d(16, 32, 3)}


def test_spectra_are_normalised_cumulative_energy():
    deltas = {"x/a": _low_rank(64, 64, 2, 0), "x/b": _low_rank(64, 64, 8, 1), "x/c": torch.randn(32, 16, 3, 3)}
    e = spectra(deltas, ["a", "b", "c"], ["x"])
    assert sum(e[n][-1] for n in e) == pytest.approx(1.0)
    assert all(np.all(np.diff(v) >= -1e-12) for v in e.values())
    assert e["a"][2] == pytest.approx(e["a"][-1])  # a rank-2 change is all in its top 2 directions
    with pytest.raises(E2GANError, match="rerun analyze_layers"):
        spectra(deltas, ["a", "zz"], ["x"])


def test_greedy_gives_rank_where_the_change_needs_it():
    # 'a' changes in 1 direction, 'b' in 8 strong ones: b must end with the higher rank
    deltas = {
        "x/a": _low_rank(64, 64, 1, 0),
        "x/b": 3 * _low_rank(64, 64, 8, 1),
        "x/c": 0.01 * torch.randn(32, 16, 3, 3),
    }
    mods = _layers()
    e = spectra(deltas, list(mods), ["x"])
    cfg = SearchRanksConfig(ranks=[1, 2, 4, 8, 16], energy=0.99)
    budget = 4000
    ranks, trace = greedy_ranks(mods, e, cfg, budget)
    assert ranks["b"] == 8 and ranks["a"] == 1 and ranks["c"] == 1
    assert count(mods, ranks) <= budget and trace[-1]["params"] == count(mods, ranks)
    assert [t["energy"] for t in trace] == sorted(t["energy"] for t in trace)
    tight, _ = greedy_ranks(mods, e, cfg, 1200)  # a tighter budget stops earlier
    assert count(mods, tight) <= 1200 and tight["b"] < 8
    with pytest.raises(E2GANError, match="over the budget"):
        greedy_ranks(mods, e, cfg, 100)


def test_random_ranks_match_the_parameter_count():
    mods = _layers()
    target = count(mods, {"a": 4, "b": 2, "c": 8})
    r = random_ranks(mods, target, [1, 2, 4, 8], seed=0)
    assert set(r) == set(mods) and abs(count(mods, r) - target) / target < 0.15
    assert r == random_ranks(mods, target, [1, 2, 4, 8], seed=0)
    assert lora_parameters(mods["c"], 2) == 2 * (16 * 9 + 32)
    # many small layers (the text norms): independent draws overshoot; the allocation stays at the target
    many = {f"n{i}": nn.Linear(384, 32) for i in range(24)}
    small = count(many, {n: 1 for n in many}) * 5 // 4
    r = random_ranks(many, small, [1, 2, 4, 8, 16], seed=3)
    assert abs(count(many, r) - small) <= 0.1 * small
    assert len(set(r.values())) > 1 and r != random_ranks(many, small, [1, 2, 4, 8, 16], seed=4)


def test_kmeans_subset_covers_every_cluster():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 8)) * 20
    sizes = [40, 10, 5, 3]  # a random subset of 4 would likely miss the small clusters
    feats = np.concatenate([c + rng.normal(size=(n, 8)) for c, n in zip(centres, sizes)])
    labels = np.repeat(np.arange(4), sizes)
    kept = kmeans_subset(feats, 4, seed=0)
    assert len(kept) == 4 and sorted(labels[kept].tolist()) == [0, 1, 2, 3]
    rand = random_subset(len(feats), 4, seed=0)
    assert coverage(feats, kept) < coverage(feats, rand)
    assert kmeans_subset(feats, 100) == list(range(len(feats)))


def test_choose_subset_strategies():
    imgs = torch.randint(0, 255, (10, 3, 32, 32), dtype=torch.uint8)
    assert choose_subset(imgs, "all", 0.3) == list(range(10))
    r = choose_subset(imgs, "random", 0.3, seed=1)
    assert len(r) == 3 and r == choose_subset(imgs, "random", 0.3, seed=1)
    k = choose_subset(imgs, "kmeans", 0.5)
    assert len(k) == 5 and len(set(k)) == 5
    assert image_features(imgs[:2]).shape == (2, 64 + 192 + 384 + 256 + 256)  # AlexNet's five LPIPS layers
    with pytest.raises(E2GANError, match="no training pairs"):
        choose_subset(imgs[:0], "kmeans", 0.5)
