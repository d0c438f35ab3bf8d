"""select_base and the text conditioning of the base generator."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.core.errors import E2GANError
from pipeline.core.tensors import to_signed
from pipeline.data.dataset import PairData, patch_pairs
from pipeline.data.teachers.filters import FILTERS, apply_filter
from pipeline.model.nets.generator import E2GANGenerator, GeneratorConfig
from pipeline.model.select_base import SelectBaseConfig, select_base
from pipeline.model.train import TrainConfig, build_models, fit

POOL = [op for op in FILTERS if op not in ("watercolor", "cartoon", "winter")]


@pytest.mark.slow
def test_kmeans_selection_is_deterministic_and_disjoint():
    cfg = SelectBaseConfig(k=4, n_calibration=2, pool=POOL)
    a, b = select_base(POOL, cfg, "minilm"), select_base(POOL, cfg, "minilm")
    assert a["base"] == b["base"] and a["calibration"] == b["calibration"]
    assert len(set(a["base"])) == 4 and len(a["calibration"]) == 2 and not set(a["base"]) & set(a["calibration"])
    assert len({a["clusters"][op] for op in a["base"]}) == 4  # one representative per cluster
    assert sum(a["cluster_sizes"]) == len(POOL)
    r = select_base(POOL, SelectBaseConfig(strategy="random", k=4, n_calibration=2, pool=POOL, seed=3), "minilm")
    assert len(r["base"]) == 4 and r["strategy"] == "random"
    with pytest.raises(E2GANError, match="exceeds the pool"):
        select_base(POOL[:3], SelectBaseConfig(k=3, n_calibration=1, pool=POOL[:3]), "minilm")


@pytest.mark.slow
def test_text_conditioning_selects_the_edit(crops128):
    """One tiny generator, two concepts: each prompt's output is closer to its own teacher than the other's."""
    imgs = [np.asarray(c[::4, ::4]) for c in crops128[:20]]  # 32 px
    ops = ["negative", "sepia"]
    inputs = torch.from_numpy(np.stack(imgs * 2)).permute(0, 3, 1, 2).contiguous()
    targets = (
        torch.from_numpy(np.stack([apply_filter(op, im) for op in ops for im in imgs])).permute(0, 3, 1, 2).contiguous()
    )
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(2, 4, 384, generator=g)
    data = PairData(inputs[:32], targets[:32], [[0]] * 16 + [[1]] * 16, tokens, torch.ones(2, 4))
    data.inputs, data.targets = torch.cat([inputs[:16], inputs[20:36]]), torch.cat([targets[:16], targets[20:36]])
    torch.manual_seed(0)
    G = E2GANGenerator(GeneratorConfig(ngf=16, heads=2))
    cfg = TrainConfig(steps=250, batch_size=8, lr_g=1e-3, lambda_gan=0.0, ndf=8, ckpt_every=1000)
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        fit(build_models(G, cfg), data, cfg, Path(tmp))
    G.eval()
    held = inputs[16:20].float().div(127.5).sub(1)
    err = np.zeros((2, 2))
    with torch.no_grad():
        for j in range(2):  # condition on concept j, compare with teacher i
            out = G(held, tokens[j : j + 1].expand(4, -1, -1))
            for i in range(2):
                ref = targets[[20 * i + k for k in range(16, 20)]].float().div(127.5).sub(1)
                err[i, j] = (out - ref).abs().mean()
    assert err[0, 0] < err[0, 1] and err[1, 1] < err[1, 0], err


@pytest.mark.parametrize("patch, side", [(32, 32), (0, 64)])
def test_train_base_trains_on_windows_of_the_pairs_when_patch_is_set(monkeypatch, tmp_path, patch, side):
    """train_base.patch: the base trains on patch_pairs' windows of its pairs (whole crops for 0; the windows
    themselves: tests/data/test_dataset.py); the returned generator runs on whole images."""
    import pipeline.model.train_base as tb

    g = torch.Generator().manual_seed(0)
    imgs = torch.randint(0, 256, (6, 3, 64, 64), generator=g, dtype=torch.uint8)
    pairs = PairData(imgs, 255 - imgs, [[0], [1]] * 3, torch.randn(2, 5, 8, generator=g), torch.ones(2, 5))
    monkeypatch.setattr(tb, "load_pair_data", lambda folders, encoder: pairs)
    seen = []
    real_fit = tb.fit

    def spy(m, data, cfg, work, **kw):
        seen.append(data.batch(3, 4, cfg.seed, cfg.flip))
        return real_fit(m, data, cfg, work, **kw)

    monkeypatch.setattr(tb, "fit", spy)
    cfg = tb.TrainBaseConfig(
        generator=GeneratorConfig(ngf=8, heads=2),
        train=TrainConfig(steps=2, batch_size=2, lambda_lpips=0.0, ckpt_every=1),
        patch=patch,
    )
    G, history = tb.train_base({"a": tmp_path}, cfg, "minilm", tmp_path / "work")
    x, y, tokens, mask = seen[0]
    assert x.shape == y.shape == (4, 3, side, side)
    windows = patch_pairs(pairs, patch).batch(3, 4, cfg.train.seed, cfg.train.flip)  # the one window code
    assert all(torch.equal(a, b) for a, b in zip((x, y, tokens, mask), windows))
    assert len(history) >= 1 and G(to_signed(imgs[:1]), pairs.tokens[:1], pairs.mask[:1]).shape == (1, 3, 64, 64)
    with pytest.raises(ValueError, match="multiple of 16"):
        tb.TrainBaseConfig(patch=40)
