"""generate_pairs: metadata in the InstructPix2Pix layout, quality filter, resumable after a kill, bad inputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from pipeline.core.images import ImageLoadError
from pipeline.data.pairs import GeneratePairsConfig, generate_pairs, read_pairs, write_grid
from pipeline.data.sources import DataConfig, prepare_sources
from pipeline.data.teachers import ConceptConfig, build_teacher
from tests.conftest import ROOT, synthetic_photo
from tests.data.tiny_diffusers import build_tiny_pipeline

PROMPTS = {"instructions": ["make it autumn", "turn it into autumn"], "concept": "autumn"}


@pytest.fixture
def sources(tmp_path, crops128) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, c in enumerate(crops128[:8]):
        Image.fromarray(c).resize((96, 96)).save(folder / f"p{i}.png")
    out = tmp_path / "sources"
    prepare_sources(
        DataConfig(
            sources=str(folder),
            min_size=64,
            image_size=32,
            crops_per_photo=2,
            eval_crops_per_photo=2,
            val_fraction=0.125,
            test_fraction=0.125,
        ),
        out,
    )
    return out


def _concept(op="autumn"):
    return ConceptConfig(prompt="make it autumn", teacher={"kind": "filters", "op": op})


def test_pairs_layout_and_quality_filter(tmp_path, sources):
    cfg = GeneratePairsConfig(shard_size=5, min_lpips=0.02)
    out = tmp_path / "pairs"
    s = generate_pairs(
        "autumn", _concept(), cfg, build_teacher(_concept().teacher), sources, PROMPTS, out, tmp_path / "work"
    )
    rows = read_pairs(out)
    assert s["pairs"] == 16 and s["kept"] == len(rows) and s["kept"] + s["dropped"] == 16
    assert sum(s["dropped_reasons"].values()) == s["dropped"]
    for r in rows:
        assert {"input_image", "edit_prompt", "edited_image", "seed", "photo", "split", "lpips", "teacher"} <= set(r)
        assert r["split"] in ("train", "val", "test") and Path(r["input_image"]).stem.startswith(r["photo"] + "_")
        assert r["edit_prompt"] in PROMPTS["instructions"] and r["lpips"] >= cfg.min_lpips
        assert Path(r["input_path"]).is_file() and Path(r["edited_path"]).is_file()
    assert len({(r["photo"], r["split"]) for r in rows}) == len({r["photo"] for r in rows})  # one split per photo
    assert len(pd.read_parquet(out / "index.parquet")) == len(rows)
    rejected = [json.loads(x) for x in (out / "rejected.jsonl").read_text().splitlines()]
    assert all(r["rejected"] == "edit too weak" for r in rejected) and len(rejected) == s["dropped"]
    assert not (tmp_path / "work").exists() or not any((tmp_path / "work").iterdir())  # scratch cleaned
    write_grid(out, tmp_path / "grid.png", n=4)
    assert Image.open(tmp_path / "grid.png").size[1] == 64


def _stage_env():
    return {**os.environ, "PYTHONPATH": str(ROOT), "E2GAN_PROGRESS": "0"}


def _project(tmp_path: Path, sources: Path, teacher: dict, name="proj") -> Path:
    proj = tmp_path / name
    (proj / "data").mkdir(parents=True)
    os.symlink(sources, proj / "data" / "sources")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["generate_pairs"]["shard_size"] = 1  # many shards: the kill test always lands mid-run
    params["expand_prompts"]["n_prompts"] = 3
    params["concepts"] = {"demo": {"prompt": "make it a watercolor painting", "teacher": teacher}}
    (proj / "params.yaml").write_text(yaml.safe_dump(params))
    return proj


def _run_stage(proj: Path, module: str, *args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=proj,
        env=_stage_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


GEN_ARGS = [
    "generate_pairs",
    "--concept",
    "demo",
    "--sources",
    "data/sources",
    "--prompts",
    "data/prompts/demo",
    "--out",
    "data/pairs/demo",
    "--metrics",
    "reports/demo.json",
    "--grid",
    "reports/demo.png",
    "--work",
    "data/.work/generate_pairs",
]


def _expand(proj):
    p = _run_stage(proj, "stages", "expand_prompts", "--concept", "demo", "--out", "data/prompts/demo")
    assert p.wait() == 0, p.stderr.read()


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_result(tmp_path, sources):
    teacher = {"kind": "filters", "op": "watercolor"}
    ref, killed = _project(tmp_path, sources, teacher, "ref"), _project(tmp_path, sources, teacher, "killed")
    for proj in (ref, killed):
        _expand(proj)
    p = _run_stage(ref, "stages", *GEN_ARGS)
    assert p.wait() == 0, p.stderr.read()

    # kill -9 once at least two shards are recorded
    p = _run_stage(killed, "stages", *GEN_ARGS)
    shards = killed / "data" / ".work" / "generate_pairs"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(shards.glob("*/shards/shard-*.jsonl"))) < 2 and p.poll() is None:
        time.sleep(0.05)
    assert p.poll() is None, "finished before it could be killed; raise the pair count"
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not (killed / "data" / "pairs" / "demo").exists()  # nothing half-written in the output
    partial = killed / "data/.work/generate_pairs"
    next(partial.glob("*/input")).joinpath(".x.png.abc.tmp").write_bytes(b"half")  # as a kill mid-write leaves

    p = _run_stage(killed, "stages", *GEN_ARGS)
    assert p.wait() == 0, p.stderr.read()
    assert not list((killed / "data").rglob("*.tmp"))
    summary = json.loads((killed / "reports" / "demo.json").read_text())
    assert summary["resumed"] >= 2 and summary["made"] == summary["pairs"] - summary["resumed"]
    for f in ("metadata.jsonl", "rejected.jsonl"):
        assert (killed / "data/pairs/demo" / f).read_text() == (ref / "data/pairs/demo" / f).read_text()
    for f in sorted((ref / "data/pairs/demo/edited").iterdir()):
        assert f.read_bytes() == (killed / "data/pairs/demo/edited" / f.name).read_bytes()


@pytest.mark.slow
def test_diffusers_teacher_through_the_stage_cli(tmp_path, sources):
    """The tiny random InstructPix2Pix edits every pair: its edits (LPIPS about 0.2-0.6 from their inputs) pass the
    default filter (params.yaml's generate_pairs: LPIPS in [0.02, 1.2], mean change in [0.005, 0.95]), so all
    16 pairs are kept and none rejected; a teacher that did nothing would have them all rejected as too weak."""
    model = build_tiny_pipeline(tmp_path / "tiny-ip2p")
    teacher = {"kind": "diffusers", "model": str(model), "steps": 2, "batch_size": 4}
    proj = _project(tmp_path, sources, teacher)
    _expand(proj)
    p = _run_stage(proj, "stages", *GEN_ARGS)
    assert p.wait() == 0, p.stderr.read()
    s = json.loads((proj / "reports/demo.json").read_text())
    assert s["pairs"] == 16 and s["teacher"] == "diffusers" and s["made"] == 16
    assert s["kept"] == 16 and s["dropped"] == 0 and s["dropped_reasons"] == {}, s
    assert s["kept_train"] + s["kept_val"] + s["kept_test"] == 16 and s["kept_val"] > 0 and s["kept_test"] > 0
    out = proj / "data/pairs/demo"
    rows, rej = read_pairs(out), [json.loads(x) for x in (out / "rejected.jsonl").read_text().splitlines()]
    assert len(rows) == s["kept"] and len(rej) == s["dropped"]
    assert len(pd.read_parquet(out / "index.parquet")) == len(rows)
    for sub, col in (("input", "input_path"), ("edited", "edited_path")):
        assert sorted(f.name for f in (out / sub).iterdir()) == sorted(Path(r[col]).name for r in rows)
    assert all(r["teacher"]["model"] == str(model) and r["teacher"]["name"] == "diffusers" for r in rows + rej)
    cfg = GeneratePairsConfig(**yaml.safe_load((proj / "params.yaml").read_text())["generate_pairs"])
    edited = []
    for r in rows:  # the teacher ran: each edited image is its own, and unlike its source
        src, out_img = (np.asarray(Image.open(r[k]).convert("RGB")) for k in ("input_path", "edited_path"))
        assert src.shape == out_img.shape == (32, 32, 3)
        change = np.abs(out_img.astype(np.float32) - src.astype(np.float32)).mean() / 255
        assert cfg.min_change <= change <= cfg.max_change and cfg.min_lpips <= r["lpips"] <= cfg.max_lpips, r
        edited.append(out_img.tobytes())
    assert len(set(edited)) == len(rows)


def test_missing_diffusers_model_fails_the_stage_cleanly(tmp_path, sources):
    proj = _project(tmp_path, sources, {"kind": "diffusers", "model": str(tmp_path / "missing-model")})
    _expand(proj)
    p = _run_stage(proj, "stages", *GEN_ARGS)
    assert p.wait() == 2
    err = p.stderr.read()
    assert "Traceback" not in err and "missing-model' does not exist" in err
    assert not (proj / "data/pairs/demo").exists()


# ----------------------------------------------------------------------------- bad source files


def _write_bad_folder(folder: Path) -> dict[str, str]:
    """Every kind of bad or unusual file; returns name -> expected outcome ('ok' or 'skip')."""
    folder.mkdir()
    good = synthetic_photo(300, 400)
    Image.fromarray(good).save(folder / "good.jpg")
    Image.fromarray(synthetic_photo(280, 300, seed=2)).save(folder / "good2.png")
    Image.fromarray(good).convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray(good).convert("RGBA").save(folder / "rgba.png")
    Image.fromarray(good).convert("L").save(folder / "grey.png")
    Image.fromarray((np.asarray(Image.fromarray(good).convert("L")).astype(np.uint16) * 257)).save(
        folder / "deep16.png"
    )
    Image.fromarray(synthetic_photo(8000, 300, seed=3)).save(folder / "huge.png")
    Image.fromarray(synthetic_photo(20, 20)).save(folder / "tiny.png")
    full = (folder / "good.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(full[: len(full) // 3])
    (folder / "zero.png").write_bytes(b"")
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    (folder / "notes.txt").write_text("not an image")
    (folder / "fake.jpg").write_text("<html>not an image</html>")
    return {
        "good": "ok",
        "good2": "ok",
        "cmyk": "ok",
        "rgba": "ok",
        "grey": "ok",
        "deep16": "ok",
        "huge": "ok",
        "tiny": "skip",
        "truncated": "skip",
        "zero": "skip",
        "corrupt": "skip",
        "fake": "skip",
    }


def test_bad_source_files_are_counted_skips_with_names(tmp_path):
    expected = _write_bad_folder(tmp_path / "photos")
    cfg = DataConfig(
        sources=str(tmp_path / "photos"),
        min_size=64,
        image_size=32,
        include_grey=True,
        crops_per_photo=1,
        eval_crops_per_photo=1,
    )
    s = prepare_sources(cfg, tmp_path / "out")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    skipped = {e["photo"].rsplit("-", 1)[0]: e["reason"] for e in manifest["skipped"]}
    assert set(skipped) == {k for k, v in expected.items() if v == "skip"}
    for name, reason in skipped.items():
        assert name in reason  # the file is named in the reason
    used = {c["photo"].rsplit("-", 1)[0] for c in manifest["crops"]}
    assert used == {k for k, v in expected.items() if v == "ok"}
    assert s["skipped"] == 5


def test_empty_folder_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageLoadError, match="no images"):
        prepare_sources(DataConfig(sources=str(tmp_path / "empty")), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_directional_clip_filter_with_a_configured_clip(tmp_path, sources):
    from tests.data.tiny_diffusers import build_tiny_clip

    clip = build_tiny_clip(tmp_path / "tiny-clip")
    keep_all = GeneratePairsConfig(clip_model=str(clip), min_clip_direction=-1.0, min_lpips=0.0, min_change=0.0)
    s = generate_pairs(
        "autumn",
        _concept("sepia"),
        keep_all,
        build_teacher(_concept("sepia").teacher),
        sources,
        PROMPTS,
        tmp_path / "a",
        tmp_path / "work",
    )
    rows = read_pairs(tmp_path / "a")
    scores = [r["clip_direction"] for r in rows]
    assert s["dropped"] == 0 and all(-1.0 <= c <= 1.0 for c in scores) and len(set(scores)) > 1
    strict = keep_all.model_copy(update={"min_clip_direction": float(np.median(scores))})
    s2 = generate_pairs(
        "autumn",
        _concept("sepia"),
        strict,
        build_teacher(_concept("sepia").teacher),
        sources,
        PROMPTS,
        tmp_path / "b",
        tmp_path / "work",
    )
    assert s2["dropped_reasons"] == {"edit does not follow the instruction (directional CLIP)": s2["dropped"]}
    assert 0 < s2["dropped"] < 16
