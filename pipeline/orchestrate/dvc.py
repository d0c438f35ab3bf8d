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
PER_CONCEPT = ["expand_prompts", "generate_pairs", "finetune_lora", "evaluate", "export_onnx", "export_mobile"]
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


CODE_ROOTS = ("pipeline", "stages")  # deps under these are code: they key the stages' work folders


PROJECT = Path(__file__).resolve().parents[2]  # the checkout whose code is running (editable install or cwd)


def _root(root: Path | None) -> Path:
    """`root` when given; else the running checkout when it has a dvc.yaml, else the working folder."""
    if root is not None:
        return root
    return PROJECT if (PROJECT / "dvc.yaml").is_file() else Path(".")


def _stage(stage: str, root: Path) -> dict:
    if not (root / "dvc.yaml").is_file():
        raise DvcError(f"no dvc.yaml in {root.resolve()}; run stages from the repository root (dvc repro does)")
    doc = yaml.safe_load((root / "dvc.yaml").read_text())
    body = doc["stages"].get(stage)
    if body is None:
        raise DvcError(f"dvc.yaml has no stage {stage!r}; stages: {', '.join(doc['stages'])}")
    return body


def code_deps(stage: str, root: Path | None = None) -> list[str]:
    """The stage's deps in dvc.yaml that are code (files or package folders under pipeline/ or stages/)."""
    return [d for d in _stage(stage, _root(root)).get("deps", []) if d.split("/")[0] in CODE_ROOTS]


def code_hash(stage: str, root: Path | None = None) -> str:
    """A hash of every file of the stage's code deps (path and bytes), minus what .dvcignore drops (bytecode,
    editor files): what DVC hashes for them, so a work folder keyed on it never outlives a code change.
    By default the files of the running checkout, the code that actually runs."""
    import hashlib

    import pathspec

    root = _root(root)

    ignore_file = root / ".dvcignore"
    spec = pathspec.PathSpec.from_lines(
        "gitwildmatch", ignore_file.read_text().splitlines() if ignore_file.is_file() else []
    )
    h = hashlib.sha256()
    for dep in sorted(code_deps(stage, root)):
        path = root / dep
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            rel = f.relative_to(root).as_posix()
            if not spec.match_file(rel):
                h.update(f"{rel}\0{hashlib.sha256(f.read_bytes()).hexdigest()}\n".encode())
    return h.hexdigest()


def stage_params(stage: str, concept: str | None = None, root: Path | None = None) -> list[str]:
    """The params.yaml keys a stage declares in dvc.yaml (`${item.concept}` filled in): by default the
    working folder's dvc.yaml (where DVC runs the stage), else the running checkout's."""
    if root is None:
        root = Path(".") if Path("dvc.yaml").is_file() else _root(None)
    return [
        str(p).replace("${item.concept}", concept or "")
        for p in _stage(stage, root).get("params", [])
        if isinstance(p, str)
    ]


def stage_paths(stage: str, concept: str | None = None, root: Path = Path(".")) -> dict[str, Path]:
    """The paths dvc.yaml's `cmd` passes to a stage (`--name value` pairs, `${item.concept}` filled in), so
    code outside the stages finds a stage's outputs without restating them; relative to `root`."""
    body = _stage(stage, root)
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
