"""Orchestration costs on the default pipeline, as ratios in one run:

- no-op `dvc repro` (everything up to date) vs the recorded cost of a full run (the stages' own
  timings), and vs `dvc status` (the least DVC can do);
- a new concept end to end (`dvc repro` of its five stages after adding it to params.yaml)
  vs pix2pix from scratch to its best LPIPS (bench/results/baselines.json) and vs
  the full default run.

    python -m bench.dvc_timing                 # no-op timing only
    python -m bench.dvc_timing --new-concept   # also the new-concept run (~8 min on 2 cores)

The new-concept run adds the filters concept `sepia` to params.yaml, runs `dvc repro` on its stages, and
restores params.yaml and dvc.lock and removes its outputs afterwards (they stay in the DVC cache). Results go to
bench/results/dvc_timing.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

from pipeline.orchestrate.dvc import PER_CONCEPT, _env, dvc_cmd

RESULTS = Path("bench/results")


def _timed(args: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    res = subprocess.run(args, env=_env(), capture_output=True, text=True, check=False)
    dt = time.perf_counter() - t0
    if res.returncode:
        raise SystemExit(f"{' '.join(args)} failed:\n{res.stdout[-2000:]}{res.stderr[-2000:]}")
    return dt, res.stdout


def _untracked() -> set[str]:
    """Paths git does not track (ignored included), as `git status` names them."""
    out = subprocess.run(
        ["git", "status", "--porcelain", "--ignored=traditional", "--untracked-files=all"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {line[3:].rstrip("/") for line in out.splitlines() if line[:2] in ("??", "!!")}


def _is_concept_output(path: str, concept: str) -> bool:
    """A file the concept's stages wrote: under data/, models/ or reports/, with the concept in its path."""
    parts = Path(path).parts
    return parts[0] in ("data", "models", "reports") and any(p == concept or p.startswith(f"{concept}.") for p in parts)


def time_new_concept(name: str, prompt: str) -> tuple[float, list[str]]:
    """Add a filters concept to params.yaml, `dvc repro` its stages, then restore params.yaml and dvc.lock and
    remove its outputs (they stay in the DVC cache). Returns (seconds, the stages that ran)."""
    params_text, lock_text = Path("params.yaml").read_text(), Path("dvc.lock").read_text()
    params = yaml.safe_load(params_text)
    params["concepts"][name] = {"prompt": prompt, "teacher": {"kind": "filters", "op": name}}
    before = _untracked()
    staged = subprocess.run(["git", "diff", "--cached", "--quiet", "--", "dvc.lock"], check=False).returncode
    try:
        Path("params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        dt, out = _timed(dvc_cmd("repro", *[f"{s}@{name}" for s in PER_CONCEPT]))
        ran = [line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage '")]
    finally:
        Path("params.yaml").write_text(params_text)
        Path("dvc.lock").write_text(lock_text)
        if not staged:  # core.autostage staged the temporary dvc.lock: unstage it again
            subprocess.run(["git", "reset", "-q", "--", "dvc.lock"], check=False)
        new = sorted(p for p in _untracked() - before if _is_concept_output(p, name))
        for path in new:
            Path(path).unlink(missing_ok=True)
        for d in sorted({str(p) for f in new for p in Path(f).parents if str(p) != "."}, key=len, reverse=True):
            if Path(d).is_dir() and not any(Path(d).iterdir()):
                Path(d).rmdir()
    return dt, ran


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--new-concept", action="store_true", help="Also time a new concept end to end (~8 min).")
    ap.add_argument(
        "--full-run-minutes",
        type=float,
        default=50.0,
        help="Measured wall time of `make run` on the default (for the ratios).",
    )
    args = ap.parse_args(argv)
    stale = json.loads(_timed(dvc_cmd("status", "--json"))[1] or "{}")
    if stale:
        raise SystemExit(f"the pipeline is not up to date ({', '.join(sorted(stale))}): run `dvc repro` first")
    status_s = statistics.median(_timed(dvc_cmd("status"))[0] for _ in range(args.repeats))
    noop = [_timed(dvc_cmd("repro"))[0] for _ in range(args.repeats)]
    result: dict = {
        "noop_repro_s": round(statistics.median(noop), 2),
        "noop_repro_runs_s": [round(t, 2) for t in noop],
        "dvc_status_s": round(status_s, 2),
        "full_run_s": args.full_run_minutes * 60,
    }
    result["noop_vs_status"] = round(result["noop_repro_s"] / status_s, 2)
    result["noop_vs_full_run"] = round(result["noop_repro_s"] / result["full_run_s"], 5)
    if args.new_concept:
        dt, ran = time_new_concept("sepia", "give the photo a warm sepia tone")
        result["new_concept"] = {
            "concept": "sepia",
            "seconds": round(dt, 1),
            "stages_ran": ran,
            "vs_full_run": round(dt / result["full_run_s"], 3),
        }
        baselines = RESULTS / "baselines.json"
        if baselines.is_file():
            rows = [
                r for c in json.loads(baselines.read_text())["concepts"] for r in c["rows"] if r["key"] == "pix2pix"
            ]
            best = rows[0]["seconds_to_best"] if rows else None
            if best:
                result["new_concept"]["pix2pix_seconds_to_best"] = best
                result["new_concept"]["vs_pix2pix_to_best"] = round(dt / best, 3)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "dvc_timing.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
