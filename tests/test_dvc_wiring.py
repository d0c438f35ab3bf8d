"""dvc.yaml in a temp git+dvc repo: a new or changed concept makes exactly its own stages stale, and
never the shared stages (the base model is not retrained for a new concept)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import ROOT


def _run(cmd: list[str], cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1",
           "E2GAN_PROGRESS": "0"}
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert res.returncode == 0, f"{cmd}: {res.stdout}\n{res.stderr}"
    return res.stdout


def _stale(repo: Path) -> set[str]:
    return set(json.loads(_run([sys.executable, "-m", "dvc", "status", "--json"], repo)))


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("dvcrepo")
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, repo / name)
    for d in ("pipeline", "stages"):
        shutil.copytree(ROOT / d, repo / d, ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data"].update(max_photos=6, image_size=32, crops_per_photo=1, heldout_crops_per_photo=2)
    params["expand_prompts"]["n_prompts"] = 2
    params["train_base"].update(steps=4, ckpt_every=2, log_every=2)
    params["analyze_layers"].update(probe_steps=1, full_steps=1, eval_limit=2, probe_batch=2)
    params["search_ranks"].update(compare_steps=1, compare_batch=2, eval_limit=2)
    params["finetune_lora"].update(steps=2, batch_size=2, ckpt_every=2, log_every=1)
    params["evaluate"].update(bootstrap=2, fid_bootstrap=1, grid=2)
    params["export_onnx"].update(size=32, parity_images=2, calibration_images=2, latency_runs=1, quantize=False)
    params["select_base"].update(k=2, n_calibration=1)  # fewer base pairs, probes and comparison runs
    params["concepts"] = {"sepia": {"prompt": "give it a sepia tone", "teacher": {"kind": "filters", "op": "sepia"}},
                          "ink": {"prompt": "make it an ink drawing", "teacher": {"kind": "filters", "op": "ink"}}}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run(["git", "init", "-q"], repo)
    _run([sys.executable, "-m", "dvc", "init", "-q"], repo)
    _run([sys.executable, "-m", "dvc", "repro", "-q"], repo)
    assert _stale(repo) == set()
    return repo


def _edit_params(repo: Path, fn) -> str:
    original = (repo / "params.yaml").read_text()
    params = yaml.safe_load(original)
    fn(params)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return original


@pytest.mark.slow
def test_new_concept_makes_only_its_stages_stale(repo):
    original = _edit_params(repo, lambda p: p["concepts"].__setitem__(
        "night", {"prompt": "turn the scene into night", "teacher": {"kind": "filters", "op": "night"}}))
    try:
        assert _stale(repo) == {"expand_prompts@night", "generate_pairs@night", "finetune_lora@night", "evaluate@night", "export_onnx@night", "report"}
    finally:
        (repo / "params.yaml").write_text(original)


@pytest.mark.slow
def test_changed_prompt_reruns_only_its_concept(repo):
    original = _edit_params(repo, lambda p: p["concepts"]["ink"].__setitem__("prompt", "make it a pen drawing"))
    try:
        assert _stale(repo) == {"expand_prompts@ink", "generate_pairs@ink", "finetune_lora@ink", "evaluate@ink", "export_onnx@ink",
                                "report"}
        out = _run([sys.executable, "-m", "dvc", "repro"], repo)
        ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage '")}
        assert ran == {"expand_prompts@ink", "generate_pairs@ink", "finetune_lora@ink", "evaluate@ink", "export_onnx@ink",
                       "report"}, out
    finally:
        (repo / "params.yaml").write_text(original)
        _run([sys.executable, "-m", "dvc", "repro", "-q"], repo)  # back to a clean state for the other tests


@pytest.mark.slow
def test_shared_section_change_makes_every_concept_stale(repo):
    original = _edit_params(repo, lambda p: p["generate_pairs"].__setitem__("min_lpips", 0.03))
    try:  # the base pairs use the same quality filter
        assert _stale(repo) == {"generate_pairs@sepia", "generate_pairs@ink", "generate_base_pairs"}
    finally:
        (repo / "params.yaml").write_text(original)


@pytest.mark.slow
def test_concept_flow_runs_only_the_new_concepts_stages(repo):
    """The Prefect flow for a new concept (against a real temporary Prefect server) runs exactly its chain."""
    from prefect.testing.utilities import prefect_test_harness

    original = _edit_params(repo, lambda p: p["concepts"].__setitem__(
        "dusk", {"prompt": "make it dusk", "teacher": {"kind": "filters", "op": "night"}}))
    try:
        with prefect_test_harness(server_startup_timeout=90):
            from pipeline.flows import concept_flow

            ran = concept_flow("dusk", str(repo))
            again = concept_flow("dusk", str(repo))
        assert set(ran) == {"expand_prompts@dusk", "generate_pairs@dusk", "finetune_lora@dusk", "evaluate@dusk", "export_onnx@dusk"}
        assert again == [] and _stale(repo) == {"report"}  # the cross-concept report is all_concepts_flow's
    finally:
        (repo / "params.yaml").write_text(original)


@pytest.mark.slow
def test_ci_retrain_in_a_fresh_clone_runs_only_the_new_concept(repo, tmp_path):
    """`e2gan ci retrain` with a local-folder DVC remote: a fresh clone with a new concept pulls what that
    concept's stages need, runs exactly them (and the report), and pushes the results."""
    remote, clone = tmp_path / "remote", tmp_path / "clone"
    _run([sys.executable, "-m", "dvc", "remote", "add", "-d", "store", str(remote)], repo)
    _run([sys.executable, "-m", "dvc", "push", "-q"], repo)
    _run(["git", "add", "-A"], repo)
    _run(["git", "-c", "user.email=ci@e2gan", "-c", "user.name=ci", "commit", "-qm", "pipeline"], repo)
    _run(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    _edit_params(clone, lambda p: p["concepts"].__setitem__(
        "noir", {"prompt": "make it film noir", "teacher": {"kind": "filters", "op": "sepia"}}))
    summary = tmp_path / "summary.md"
    env = {**os.environ, "PYTHONPATH": str(clone), "GITHUB_STEP_SUMMARY": str(summary), "E2GAN_PROGRESS": "0",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    res = subprocess.run([sys.executable, "-m", "pipeline.cli", "ci", "retrain", "--baseline", "HEAD"], cwd=clone,
                         env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    ran = json.loads(res.stdout.strip().splitlines()[-1])["ran"]
    assert set(ran) == {"expand_prompts@noir", "generate_pairs@noir", "finetune_lora@noir", "evaluate@noir",
                        "export_onnx@noir", "report"}, ran
    assert not (clone / "data/base_pairs").exists()  # not needed by the new concept's stages: never pulled
    assert (clone / "models/base/generator.safetensors").is_file()  # needed: pulled
    text = summary.read_text()
    assert "Stages that ran" in text and "noir" in text and "params diff" in text
