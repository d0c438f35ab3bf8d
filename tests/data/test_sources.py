"""prepare_sources on a user folder: counts, split by photo, skips counted, atomic on failure."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from pipeline.core.images import ImageLoadError
from pipeline.data.sources import DataConfig, prepare_sources
from tests.conftest import synthetic_photo


def _folder(tmp_path, n=10):
    src = tmp_path / "photos"
    (src / "sub").mkdir(parents=True)
    for i in range(n):
        Image.fromarray(synthetic_photo(200 + 10 * i, 260, seed=i)).save(src / ("sub" if i % 2 else "") / f"p{i}.jpg")
    Image.fromarray(synthetic_photo(40, 40)).save(src / "tiny.png")
    (src / "broken.png").write_bytes(b"\x89PNG broken")
    return src


def test_prepare_sources_from_a_folder(tmp_path):
    cfg = DataConfig(
        sources=str(_folder(tmp_path)),
        min_size=100,
        image_size=64,
        crops_per_photo=2,
        heldout_crops_per_photo=3,
        heldout_fraction=0.3,
    )
    out = tmp_path / "sources"
    summary = prepare_sources(cfg, out)
    assert summary["skipped"] == 2  # tiny + broken, counted not fatal
    assert summary["photos_train"] + summary["photos_heldout"] == 10
    assert summary["crops_train"] == 2 * summary["photos_train"]
    assert summary["crops_heldout"] == 3 * summary["photos_heldout"]
    manifest = json.loads((out / "manifest.json").read_text())
    train = {c["photo"] for c in manifest["crops"] if c["split"] == "train"}
    held = {c["photo"] for c in manifest["crops"] if c["split"] == "heldout"}
    assert train and held and not train & held
    assert all((out / c["file"]).is_file() for c in manifest["crops"])
    again = tmp_path / "again"
    prepare_sources(cfg, again)
    assert (again / "manifest.json").read_text() == (out / "manifest.json").read_text()  # deterministic


def test_failed_run_keeps_previous_output(tmp_path):
    src = _folder(tmp_path, n=4)
    out = tmp_path / "sources"
    prepare_sources(DataConfig(sources=str(src), min_size=100, image_size=64), out)
    before = (out / "manifest.json").read_text()
    with pytest.raises(ImageLoadError, match="lower data.min_size"):
        prepare_sources(
            DataConfig(sources=str(src), min_size=100, image_size=64, heldout_fraction=0.01, max_photos=1), out
        )
    assert (out / "manifest.json").read_text() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
