"""A thin wrapper over the DVC command line: the stages of dvc.yaml, their status, and `repro -s`.

DVC owns staleness: every run goes through `dvc --wait-for-lock repro -s <stage>`, so dvc.lock is the
only cache and the command line, CI and the Prefect UI always agree.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import yaml

from pipeline.core.env import set_quiet_env
from pipeline.core.errors import E2GANError

SHARED = [
    "prepare_sources",
    "select_base",
    "generate_base_pairs",
    "train_base",
    "analyze_layers",
    "search_ranks",
    "export_base_onnx",
]
PER_CONCEPT = ["expand_prompts", "generate_pairs", "finetune_lora", "evaluate", "export_onnx"]
AFTER_ALL = ["report"]  # stages over all concepts


class DvcError(E2GANError):
    """A dvc command failed; the message holds the end of its output."""


def _env() -> dict[str, str]:
    set_quiet_env()
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # stages run `python`
    return env


def dvc_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "dvc", *args]


def stage_names(root: Path = Path(".")) -> dict[str, bool]:
    """dvc.yaml's stages: name -> whether it is a per-concept matrix stage."""
    doc = yaml.safe_load((root / "dvc.yaml").read_text())
    return {name: "matrix" in body for name, body in doc["stages"].items()}


def stage_paths(stage: str, concept: str | None = None, root: Path = Path(".")) -> dict[str, Path]:
    """The paths dvc.yaml's `cmd` passes to a stage (`--name value` pairs, `${item.concept}` filled in), so
    code outside the stages finds a stage's outputs without restating them; relative to `root`."""
    doc = yaml.safe_load((root / "dvc.yaml").read_text())
    body = doc["stages"].get(stage)
    if body is None:
        raise DvcError(f"dvc.yaml has no stage {stage!r}; stages: {', '.join(doc['stages'])}")
    if "matrix" in body and concept is None:
        raise DvcError(f"stage {stage!r} runs per concept; give the concept")
    words = body["cmd"].replace("${item.concept}", concept or "").split()
    return {
        w[2:].replace("-", "_"): root / v for w, v in zip(words, words[1:]) if w.startswith("--") and w != "--concept"
    }


def status(targets: list[str] | None = None, root: Path = Path(".")) -> set[str]:
    """The stale stages among `targets` (all when None), from `dvc status --json`, queued behind other DVC
    processes (several flows check at once)."""
    res = subprocess.run(
        dvc_cmd("--wait-for-lock", "status", "--json", *(targets or [])),
        cwd=root,
        env=_env(),
        capture_output=True,
        text=True,
    )
    if res.returncode:
        raise DvcError(f"dvc status failed: {res.stderr.strip()[-500:]}")
    return set(json.loads(res.stdout or "{}"))


def repro_stage(
    stage: str, root: Path = Path("."), on_line: Callable[[str], None] | None = None, force: bool = False
) -> list[str]:
    """`dvc --wait-for-lock repro -s <stage>`, streaming its output; returns the stages that ran."""
    args = ["--wait-for-lock", "repro", "-s", stage] + (["-f"] if force else [])
    proc = subprocess.Popen(
        dvc_cmd(*args), cwd=root, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    ran, tail = [], []
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip()
        tail = (tail + [line])[-40:]
        if line.startswith("Running stage '"):
            ran.append(line.split("'")[1])
        if on_line:
            on_line(line)
    if proc.wait():
        raise DvcError(f"dvc repro -s {stage} failed (exit {proc.returncode}):\n" + "\n".join(tail))
    return ran
