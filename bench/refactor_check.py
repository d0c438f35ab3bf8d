"""Does a code change leave the pipeline's results alone? The whole DAG at a reduced configuration (fewer
photos, steps and pixels, as the wiring tests use), run by two git revisions on this machine, and their outputs
compared: dvc.lock's output hashes first, then file by file (JSON key by key) where a hash differs.

    python -m bench.refactor_check --old 1a018d2 --new HEAD     ->  bench/results/refactor_compare.json

Float results differ across CPUs, so both runs happen here, one after the other (~10 min each on 2 cores).
Timings (seconds, latencies, rates) always differ between runs and are reported as such.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from pipeline.core.io import atomic_write_json
from pipeline.orchestrate.dvc import _env, dvc_cmd

TIMING = ("seconds", "latency", "median_ms", "p90_ms", "rate", "per_second")
SMALL = {  # section -> overrides; train_base/finetune_lora's loop keys may sit in a nested `train` block
    "data": {"max_photos": 10, "image_size": 48, "crops_per_photo": 2, "eval_crops_per_photo": 2},
    "expand_prompts": {"n_prompts": 3},
    "train_base": {"steps": 6, "ckpt_every": 3, "log_every": 2},
    "analyze_layers": {"probe_steps": 2, "full_steps": 2, "eval_limit": 3, "probe_batch": 2},
    "finetune_lora": {"steps": 3, "batch_size": 2, "ckpt_every": 2, "log_every": 1},
    "evaluate": {"bootstrap": 2, "kid_bootstrap": 2, "fid_bootstrap": 0, "grid": 2},
    "export_onnx": {"size": 48, "parity_images": 2, "calibration_images": 2, "latency_runs": 1},
    "select_base": {"k": 2, "n_calibration": 1},
}
CONCEPTS = {
    "sepia": {"prompt": "give it a sepia tone", "teacher": {"kind": "filters", "op": "sepia"}},
    "ink": {"prompt": "make it an ink drawing", "teacher": {"kind": "filters", "op": "ink"}},
}


def reduced_repo(rev: str, repo: Path) -> None:
    """A git+DVC repo holding revision `rev`'s pipeline with the reduced params."""
    subprocess.run(["git", "worktree", "add", "-q", "--detach", str(repo), rev], check=True)
    p = yaml.safe_load((repo / "params.yaml").read_text())
    for section, kw in SMALL.items():
        for k, v in kw.items():
            nested = p[section].get("train")
            (nested if isinstance(nested, dict) and k in nested else p[section])[k] = v
    p["concepts"] = CONCEPTS
    (repo / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    (repo / "dvc.lock").unlink(missing_ok=True)


def run_dag(repo: Path) -> None:
    env = {**_env(), "E2GAN_PROGRESS": "0"}
    res = subprocess.run(dvc_cmd("repro", "-q"), cwd=repo, env=env, capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"dvc repro failed in {repo}:\n{(res.stdout + res.stderr)[-3000:]}")


def _outs(repo: Path) -> dict[str, str]:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    return {o["path"]: o.get("md5") for s in lock.values() for o in s.get("outs", [])}


def _files(root: Path, rel: str) -> dict[str, str]:
    p = root / rel
    found = [p] if p.is_file() else sorted(p.rglob("*"))
    return {str(f.relative_to(root)): hashlib.md5(f.read_bytes()).hexdigest() for f in found if f.is_file()}


def _json_diff(a, b, pre: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += (
                [f"{pre}{k}: only in {'new' if k in b else 'old'}"]
                if k not in a or k not in b
                else _json_diff(a[k], b[k], f"{pre}{k}.")
            )
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _json_diff(x, y, f"{pre}{i}.")]
    return [] if a == b else [f"{pre[:-1]}: {str(a)[:60]} -> {str(b)[:60]}"]


def compare(old: Path, new: Path) -> dict:
    """Same / differing outputs; for a differing JSON file, its non-timing differences."""
    o, n = _outs(old), _outs(new)
    out: dict = {"same": [], "differ": {}, "only_old": sorted(set(o) - set(n)), "only_new": sorted(set(n) - set(o))}
    for path in sorted(set(o) & set(n)):
        if o[path] == n[path]:
            out["same"].append(path)
            continue
        fo, fn, detail = _files(old, path), _files(new, path), {}
        for f in sorted(set(fo) | set(fn)):
            if fo.get(f) == fn.get(f):
                continue
            if f.endswith(".json") and f in fo and f in fn:
                d = _json_diff(json.loads((old / f).read_text()), json.loads((new / f).read_text()))
                real = [x for x in d if not any(t in x.split(":")[0] for t in TIMING)]
                detail[f] = {"timing_only": not real, "differences": real[:8], "timing_differences": len(d) - len(real)}
            else:
                detail[f] = "bytes differ" if f in fo and f in fn else ("only new" if f in fn else "only old")
        out["differ"][path] = detail
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", required=True, help="git revision of the reference code")
    ap.add_argument("--new", default="HEAD", help="git revision of the changed code")
    ap.add_argument("--out", type=Path, default=Path("bench/results/refactor_compare.json"))
    args = ap.parse_args()
    revs = {
        k: subprocess.run(["git", "rev-parse", "--short", r], capture_output=True, text=True, check=True).stdout.strip()
        for k, r in (("old", args.old), ("new", args.new))
    }
    with tempfile.TemporaryDirectory(prefix="e2gan-refactor-") as tmp:
        repos = {k: Path(tmp) / k for k in revs}
        try:
            for k, repo in repos.items():
                reduced_repo(revs[k], repo)
                print(f"{k} ({revs[k]}): dvc repro at the reduced configuration ...", flush=True)
                run_dag(repo)
            result = {
                "old": revs["old"],
                "new": revs["new"],
                "machine": {"cpus": os.cpu_count()},
                "config": {"overrides": SMALL, "concepts": list(CONCEPTS)},
                **compare(repos["old"], repos["new"]),
            }
        finally:
            for repo in repos.values():
                subprocess.run(["git", "worktree", "remove", "--force", str(repo)], capture_output=True)
            shutil.rmtree(tmp, ignore_errors=True)
    atomic_write_json(args.out, result)
    print(
        json.dumps(
            {k: result[k] for k in ("old", "new", "only_old", "only_new")}
            | {"same": len(result["same"]), "differ": sorted(result["differ"])},
            indent=1,
        )
    )


if __name__ == "__main__":
    sys.exit(main())
