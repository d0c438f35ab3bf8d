"""prepare_sources on a user folder: counts, split by photo, skips counted, atomic on failure, and a hostile
folder through the real stage command."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from pipeline.core.images import SplitError
from pipeline.data.sources import DataConfig, prepare_sources
from tests.conftest import ROOT, synthetic_photo
from tests.data.hostile import MIN_SIZE, build_hostile_folder


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
        eval_crops_per_photo=3,
        val_fraction=0.2,
        test_fraction=0.3,
    )
    out = tmp_path / "sources"
    summary = prepare_sources(cfg, out)
    assert summary["skipped"] == 2  # tiny + broken, counted not fatal
    assert [summary[f"photos_{s}"] for s in ("train", "val", "test")] == [5, 2, 3]
    assert summary["crops_train"] == 2 * summary["photos_train"]
    assert summary["crops_val"] == 3 * summary["photos_val"] and summary["crops_test"] == 3 * summary["photos_test"]
    manifest = json.loads((out / "manifest.json").read_text())
    photos = {s: {c["photo"] for c in manifest["crops"] if c["split"] == s} for s in ("train", "val", "test")}
    assert all(photos.values()) and sum(map(len, photos.values())) == len(set.union(*photos.values())) == 10
    assert all((out / c["file"]).is_file() and c["file"].startswith(f"{c['split']}/") for c in manifest["crops"])
    again = tmp_path / "again"
    prepare_sources(cfg, again)
    assert (again / "manifest.json").read_text() == (out / "manifest.json").read_text()  # deterministic


def test_failed_run_keeps_previous_output(tmp_path):
    src = _folder(tmp_path, n=4)
    out = tmp_path / "sources"
    prepare_sources(DataConfig(sources=str(src), min_size=100, image_size=64), out)
    before = (out / "manifest.json").read_text()
    with pytest.raises(SplitError, match="cannot fill train, val and test.*lower data.min_size"):
        prepare_sources(DataConfig(sources=str(src), min_size=100, image_size=64, max_photos=2), out)
    assert (out / "manifest.json").read_text() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# ----------------------------------------------------------------------------- a hostile folder, through the stage


def _stage_project(tmp_path: Path, folder: Path) -> Path:
    """A project folder whose params.yaml points data.sources at `folder` (the stage reads params from its cwd)."""
    proj = tmp_path / "proj"
    proj.mkdir()
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"].update(
        sources=str(folder),
        min_size=MIN_SIZE,
        image_size=32,
        crops_per_photo=1,
        eval_crops_per_photo=1,
    )
    (proj / "params.yaml").write_text(yaml.safe_dump(params))
    shutil.copy(ROOT / "dvc.yaml", proj / "dvc.yaml")  # what the stages declare, if the entry point asks
    return proj


@pytest.mark.timeout(300)
def test_a_hostile_folder_through_the_prepare_sources_stage(tmp_path):
    h = build_hostile_folder(tmp_path)
    proj = _stage_project(tmp_path, h.folder)
    p = subprocess.run(
        [sys.executable, "-m", "stages", "prepare_sources", "--out", "data/sources", "--metrics", "m/sources.json"],
        cwd=proj,
        env={**os.environ, "PYTHONPATH": str(ROOT), "E2GAN_PROGRESS": "0"},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr[-4000:]
    manifest = json.loads((proj / "data/sources/manifest.json").read_text())
    metrics = json.loads((proj / "m/sources.json").read_text())
    bad = h.bad + h.small  # too small is a skip here
    reasons = [e["reason"] for e in manifest["skipped"]]
    named = {rel for rel in bad for r in reasons if r.startswith(f"{h.folder / rel}: ")}
    assert named == set(bad), sorted(set(bad) - named)
    assert len(reasons) == len(bad) == metrics["skipped"] == manifest["summary"]["skipped"]  # one line per file
    used = {c["photo"].rsplit("-", 1)[0] for c in manifest["crops"]}
    assert used == {Path(rel).stem for rel in h.good}  # converted; nothing from outside the folder
    assert metrics["photos"] == len(h.good)
    assert all((proj / "data/sources" / c["file"]).is_file() for c in manifest["crops"])
    assert set(manifest["ignored"]) == set(h.ignored)
