"""The E²GAN core end to end on a tiny project: analyze_layers -> search_ranks -> finetune_lora@C
through the stage CLIs, then the adapter checked with peft against its base."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from pipeline.adapt.lora import adaptable_layers, load_adapter, spec_ranks
from pipeline.core.errors import E2GANError
from pipeline.core.io import atomic_write_json
from pipeline.data.dataset import read_pairs
from pipeline.data.pairs import GeneratePairsConfig, generate_pairs
from pipeline.data.sources import DataConfig, prepare_sources
from pipeline.data.teachers import ConceptConfig, build_teacher
from pipeline.model.checkpoint import load_generator, save_generator
from pipeline.model.nets.generator import E2GANGenerator, GeneratorConfig
from pipeline.model.nets.tone import load_tone
from tests.conftest import ROOT

CALIB = {"sepia": "make it sepia toned", "negative": "invert the colours"}


def _pairs(op: str, prompt: str, sources: Path, out: Path, work: Path) -> None:
    concept = ConceptConfig(prompt=prompt, teacher={"kind": "filters", "op": op})
    prompts = {"concept": op, "instructions": [prompt, prompt + " please"]}
    generate_pairs(
        op,
        concept,
        GeneratePairsConfig(min_lpips=0.0, min_change=0.0),
        build_teacher(concept.teacher),
        sources,
        prompts,
        out,
        work,
    )
    atomic_write_json(out.parent / f"{out.name}.prompts.json", prompts)


@pytest.fixture(scope="module")
def project(tmp_path_factory, crops128) -> Path:
    root = tmp_path_factory.mktemp("core")
    photos = root / "photos"
    photos.mkdir()
    for i, c in enumerate(crops128[:10]):
        Image.fromarray(c).resize((96, 96)).save(photos / f"p{i}.png")
    sources = root / "data" / "sources"
    prepare_sources(
        DataConfig(
            sources=str(photos),
            min_size=64,
            image_size=32,
            crops_per_photo=2,
            eval_crops_per_photo=2,
            val_fraction=0.2,
            test_fraction=0.2,
        ),
        sources,
    )
    for op, prompt in CALIB.items():
        out = root / "data" / "base_pairs" / op
        _pairs(op, prompt, sources, out, root / "work")
        (out.parent / f"{op}.prompts.json").rename(out / "prompts.json")
    _pairs("winter", "make it winter", sources, root / "data" / "pairs" / "demo", root / "work")
    (root / "data" / "prompts" / "demo").mkdir(parents=True)
    (root / "data" / "pairs" / "demo.prompts.json").rename(root / "data" / "prompts" / "demo" / "prompts.json")
    atomic_write_json(root / "reports" / "select_base.json", {"base": [], "calibration": list(CALIB)})
    torch.manual_seed(0)
    G = E2GANGenerator(GeneratorConfig(ngf=8, heads=2))
    for p in G.parameters():  # a "trained" base: non-zero head, so every layer matters
        p.data.add_(0.02 * torch.randn_like(p))
    save_generator(G, root / "models" / "base", {"text_encoder": "minilm", "image_size": 32})
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["analyze_layers"].update(probe_steps=2, full_steps=3, probe_batch=4, eval_limit=4, top_k=3)
    params["search_ranks"].update(budget=0.1, uniform_rank=1)
    params["finetune_lora"]["train"].update(steps=4, batch_size=4, ckpt_every=2, ndf=8)
    params["finetune_lora"]["subset_fraction"] = 0.5
    params["evaluate"].update(bootstrap=200, kid_bootstrap=2, fid_bootstrap=0, grid=2)
    params["concepts"] = {"demo": {"prompt": "make it winter", "teacher": {"kind": "filters", "op": "winter"}}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


def _stage(proj: Path, stage: str, concept: str | None = None, **paths: str) -> subprocess.CompletedProcess:
    """The stage as dvc.yaml runs it (its paths from dvc.yaml, some overridden), in the tiny project."""
    from pipeline.orchestrate.dvc import stage_paths

    args = {k: str(v.relative_to(ROOT)) for k, v in stage_paths(stage, concept, ROOT).items()} | paths
    argv = (["--concept", concept] if concept else []) + [w for k, v in args.items() for w in (f"--{k}", v)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "E2GAN_PROGRESS": "0"}
    return subprocess.run(
        [sys.executable, "-m", "stages", stage, *argv], cwd=proj, env=env, capture_output=True, text=True
    )


@pytest.mark.slow
def test_analyze_search_finetune(project):
    from peft import LoraConfig, PeftModel

    base, _ = load_generator(project / "models/base")
    n_base = sum(p.numel() for p in base.parameters())

    # 1. analyze_layers: every group scored by both scorers; crucial layers are real layers
    p = _stage(project, "analyze_layers")
    assert p.returncode == 0, p.stderr
    table = json.loads((project / "reports/analyze_layers/table.json").read_text())
    assert len(table["groups"]) == 10 and len(table["crucial_groups"]) == 3 and table["split"] == "val"
    assert {r["probe_rank"] for r in table["groups"]} == set(range(1, 11))
    assert all(r["delta_rel_change"] > 0 and set(r["probe_gain_per_concept"]) == set(CALIB) for r in table["groups"])
    crucial = json.loads((project / "models/analysis/crucial.json").read_text())["crucial_layers"]
    assert crucial and set(crucial) <= set(adaptable_layers(base))
    assert (project / "reports/analyze_layers/importance.png").stat().st_size > 0

    # 2. search_ranks: exactly peft's arguments, within the budget; the comparison rows (bench.rank_rows) on them
    p = _stage(project, "search_ranks")
    assert p.returncode == 0, p.stderr
    spec = json.loads((project / "models/ranks/lora.json").read_text())
    searched = json.loads((project / "models/ranks/searched.json").read_text())
    LoraConfig(**spec), LoraConfig(**searched)
    # the default ships rank 1 on every adaptable layer; the greedy allocation on the crucial layers beside it
    assert sorted(spec["target_modules"]) == sorted(adaptable_layers(base)) and set(spec_ranks(spec).values()) == {1}
    assert sorted(searched["target_modules"]) == sorted(crucial)
    report = json.loads((project / "reports/search_ranks/table.json").read_text())
    assert report["params"] <= report["budget_params"] == int(0.1 * n_base) and "comparison" not in report
    assert report["allocation"] == "uniform_all" and report["shipped_params"] <= report["budget_params"]
    from pipeline.adapt.ranks import RowsConfig, compare_rows
    from pipeline.config import load_params
    from pipeline.data.dataset import load_concepts

    cfg = load_params(project / "params.yaml")
    calib = load_concepts({c: project / "data/base_pairs" / c for c in CALIB}, "minilm")
    rows_cfg = RowsConfig(steps=2, batch=4, eval_limit=4)
    result = compare_rows(
        base, crucial, spec_ranks(searched), calib, cfg.search_ranks, rows_cfg, cfg.finetune_lora, project / "rows"
    )
    assert result["split"] == "val" and set(result["base_lpips"]) == set(CALIB)
    rows = {r["row"]: r for r in result["rows"]}
    assert rows["every layer 1x"]["ranks"] == spec_ranks(spec)
    assert rows["every layer 1x"]["params"] == report["shipped_params"]
    assert {
        "searched",
        "uniform 1x",
        "uniform 4x",
        "random ranks",
        "searched, random subset",
        "searched, all data",
    } <= set(rows)
    assert rows["searched"]["ranks"] == spec_ranks(searched)
    assert rows["uniform 1x"]["params"] < rows["uniform 4x"]["params"]
    assert rows["searched, all data"]["pairs"]["sepia"] > rows["searched"]["pairs"]["sepia"]

    # 3. finetune_lora@demo: a standard peft adapter that reproduces itself on a fresh base
    p = _stage(project, "finetune_lora", "demo")
    assert p.returncode == 0, p.stderr
    out = project / "models/lora/demo"
    saved = json.loads((out / "adapter_config.json").read_text())
    assert saved["rank_pattern"] == spec["rank_pattern"] and saved["r"] == spec["r"]
    m = json.loads((project / "reports/finetune_lora/demo/metrics.json").read_text())
    biases = sum(p.numel() for n, p in base.named_parameters() if n.endswith(".bias")) if spec["bias"] == "all" else 0
    knots = cfg.finetune_lora.tone_knots  # the output curve: 3 channels x (knots + 1) points, stored beside it,
    assert (out / "tone_curve.safetensors").is_file() == bool(knots)  # and the outline gate's knots + 1
    tone = (3 + bool(cfg.finetune_lora.tone_window)) * (knots + 1) if knots else 0
    assert m["trainable_params"] == report["shipped_params"] + biases + tone and m["pairs_used"] == round(
        0.5 * m["pairs_total"]
    )
    files = ["adapter_model.safetensors", *(["tone_curve.safetensors"] if knots else [])]
    assert m["adapter_bytes"] == sum((out / f).stat().st_size for f in files)
    assert m["split"] == "val" and {"lora", "identity"} <= set(m["val"]) and m["val"]["lora"]["n"] > 0
    fresh, _ = load_generator(project / "models/base")
    peft_model = PeftModel.from_pretrained(fresh, str(out)).eval()
    load_tone(peft_model.base_model.model, out, E2GANError)  # peft's own loader, and the curve beside it
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    t = torch.randn(2, 3, 384)
    with torch.no_grad():
        adapted = peft_model(x, t)
        merged = load_adapter(load_generator(project / "models/base")[0], out, merge=True)(x, t)
        plain = base.eval()(x, t)
    assert torch.allclose(adapted, merged, atol=1e-5) and not torch.allclose(adapted, plain, atol=1e-4)

    # 4. the same stage again into a fresh folder: bit-for-bit the same adapter (seeded CPU run), its subset's
    # image features read from the shared cache that the first run wrote (the training inputs are the same)
    cache = project / "data/.work/finetune_lora/features"
    entries = sorted(cache.glob("*.npy"))
    assert len(entries) == 1
    p = _stage(project, "finetune_lora", "demo", out="models/lora_again", reports="reports/again")
    assert p.returncode == 0, p.stderr
    assert sorted(cache.glob("*.npy")) == entries
    again = json.loads((project / "reports/again/metrics.json").read_text())
    assert again["subset_coverage"] == m["subset_coverage"] and again["pairs_used"] == m["pairs_used"]
    assert (out / "adapter_model.safetensors").read_bytes() == (
        project / "models/lora_again/adapter_model.safetensors"
    ).read_bytes()

    # 5. evaluate@demo: test photos only, per-crop metrics with photo intervals, paired differences
    p = _stage(project, "evaluate", "demo")
    assert p.returncode == 0, p.stderr
    ev = json.loads((project / "reports/evaluate/demo.json").read_text())
    test = [r for r in read_pairs(project / "data/pairs/demo") if r["split"] == "test"]
    assert ev["split"] == "test" and ev["test_pairs"] == len(test) == 4 and ev["test_photos"] == 2
    for name in ("student", "base_without_adapter", "identity"):
        lp = ev[name]["lpips"]
        assert lp["ci95"]["low"] <= lp["mean"] <= lp["ci95"]["high"] and ev[name]["photos"] == 2
    assert set(ev["paired"]) == {"student_minus_identity", "student_minus_base_without_adapter"}
    d = ev["paired"]["student_minus_identity"]["lpips"]
    assert d["mean"] == pytest.approx(ev["student"]["lpips"]["mean"] - ev["identity"]["lpips"]["mean"])
    assert d["ci95"]["low"] <= d["mean"] <= d["ci95"]["high"] and d["photos"] == 2
    k = ev["paired"]["student_minus_base_without_adapter"]["kid"]  # the whole-set KIDs' difference
    assert k["mean"] == pytest.approx(ev["student"]["kid"]["value"] - ev["base_without_adapter"]["kid"]["value"])
    assert k["resamples"] == 2 and ev["fid"] == {"computed": False, "min_crops": 2048}
    assert ev["student"]["fid"]["value"] is None  # 4 test crops: no FID, KID only


@pytest.mark.slow
def test_core_stages_refuse_bad_input(project, tmp_path):
    p = _stage(project, "finetune_lora", "demo", ranks=str(tmp_path / "none.json"))
    assert p.returncode == 2 and "run 'dvc repro search_ranks' first" in p.stderr and "Traceback" not in p.stderr
    p = _stage(project, "finetune_lora", "../etc")
    assert p.returncode == 2 and "not a lowercase slug" in p.stderr
    p = _stage(project, "finetune_lora", "nosuch")
    assert p.returncode == 2 and "not in params.yaml concepts" in p.stderr
    p = _stage(project, "search_ranks", analysis=str(tmp_path))
    assert p.returncode == 2 and "run 'dvc repro analyze_layers' first" in p.stderr
    # rank 16 on every layer of the tiny base is far over a 10 % budget: one line that names both fixes
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["search_ranks"]["uniform_rank"] = 16
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    p = _stage(project, "analyze_layers")
    assert p.returncode == 0, p.stderr
    p = _stage(project, "search_ranks", out=str(tmp_path / "ranks"))
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert "rank 16 on every layer needs" in p.stderr and "lower search_ranks.uniform_rank" in p.stderr
    assert not (tmp_path / "ranks").exists()
