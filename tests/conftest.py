"""Shared fixtures: real cached photos (fetched by `make test`), tiny synthetic images, a params dict."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.core import assets
from pipeline.core.images import center_crop, load_rgb

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def photo_paths() -> list[Path]:
    entries = assets.cached_photos()
    if len(entries) < 8:
        pytest.fail(f"only {len(entries)} photos in {assets.cache_dir()}; run 'e2gan assets fetch' (make test does)")
    return [Path(e["path"]) for e in entries]


@pytest.fixture(scope="session")
def crops128(photo_paths) -> list[np.ndarray]:
    """Centre crops (128 px) of the first 24 cached colour photos."""
    return [center_crop(load_rgb(p), 128) for p in photo_paths[:24]]


@pytest.fixture(scope="session")
def base_params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


@pytest.fixture
def params_dict(base_params) -> dict:
    return copy.deepcopy(base_params)


def synthetic_photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth random colour image with some edges (for fast, photo-free tests)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.stack([np.sin(6 * x + rng.uniform(0, 6)), np.cos(5 * y + rng.uniform(0, 6)), x * y], -1)
    img = (img - img.min()) / (np.ptp(img) + 1e-9) * 255
    img[h // 3 : h // 2, w // 4 : w // 2] = rng.integers(0, 255, 3)
    return img.astype(np.uint8)


@pytest.fixture(autouse=True)
def cpu_reference_runs(monkeypatch):
    """The suite's references are CPU runs (bit-for-bit repeatable); a test that trains on a GPU says so."""
    monkeypatch.setenv("E2GAN_DEVICE", "cpu")
