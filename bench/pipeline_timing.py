"""Where the default pipeline's time goes, on this machine: `dvc repro` timed stage by stage.

    python -m bench.pipeline_timing repro         # whatever is stale now (e.g. after a code or params change)
    python -m bench.pipeline_timing full          # the whole DAG from scratch (`dvc repro --force`; asset cache filled)
    python -m bench.pipeline_timing new-concept   # a concept added to params.yaml: `dvc repro` of its stages, three
                                                  # fresh runs (--repeats): the median run, with every run's seconds
    python -m bench.pipeline_timing noop          # `dvc repro` with everything up to date (and `dvc status`)

Each mode runs the real `dvc repro` (output streamed as it runs), reads which stage started when from its log,
and merges its record into bench/results/pipeline_timing.json under its mode's name, with the machine (`cores`,
`cpu`) and the commit it ran at. Every stage also runs under cProfile (`E2GAN_PROFILE`, a small overhead on
Python-level code only): its `top_costs` are the package functions with the most cumulative time (nested calls
count in their callers too, so the list reads as where the time goes, outermost first). `full` sets `full_run_s`, `new-concept` sets `new_concept_s` and `noop` sets
`noop_repro_s`; a record made at another commit or on another machine says so in its own `commit` and `cpu`.
The top level holds the latest run of each mode; `machines` keeps, per CPU model, the latest run of each mode there
(seconds, commit, date), so a run on another machine does not erase this one's figures.

    python -m bench.pipeline_timing import --rev b83f2d8   # the records of the file at that git revision, into
                                                            # `machines` where a machine has no record of that mode

`new-concept` adds the filters concept `sepia` to params.yaml, runs `dvc repro --no-run-cache` on its stages (so
an earlier run's outputs are not restored from DVC's run cache), then restores params.yaml and dvc.lock and
removes its outputs (they stay in the DVC cache) and the Inception features its evaluation added to
evaluate's feature cache (the test inputs' features, shared by every concept, stay: a real new concept finds
them there).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import RESULTS, code_version, cpu_model
from pipeline.core.io import atomic_write_json
from pipeline.orchestrate.dvc import PER_CONCEPT, _env, dvc_cmd, stage_paths

OUT = RESULTS / "pipeline_timing.json"
STARTED = re.compile(r"^Running stage '([^']+)'")
SKIPPED = re.compile(r"^Stage '([^']+)' didn't change")
RESTORED = re.compile(r"^Stage '([^']+)' is cached - skipping run")  # DVC's run cache: checked out, not run


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


def top_costs(prof: Path, n: int = 6) -> list[dict]:
    """The `n` functions of the package (pipeline/) with the most cumulative seconds in a stage's profile,
    leaving out anything holding nearly all of it (the stage's entry points)."""
    import pstats

    stats = pstats.Stats(str(prof)).stats  # {(file, line, name): (calls, primitive, tottime, cumtime, callers)}
    total = max(v[3] for v in stats.values())
    rows = []
    for (file, _, name), (calls, _, _, cum, _) in stats.items():
        if "/pipeline/" in file and cum < 0.97 * total:
            where = file[file.rindex("/pipeline/") + 1 :]
            rows.append({"function": f"{where}:{name}", "seconds": round(cum, 1), "calls": calls})
    return sorted(rows, key=lambda r: -r["seconds"])[:n]


def timed_repro(*args: str) -> dict:
    """Run `dvc repro *args`, echoing its output, and time it stage by stage: {seconds, stages: {name: s},
    skipped: [names]}, and `restored_from_run_cache` where DVC checked a stage's earlier outputs out instead.
    A stage's time runs from its "Running stage" line to the next one (or the end: the last stage's time
    includes DVC's lock-file update, a fraction of a second)."""
    profiles = Path(tempfile.mkdtemp(prefix="e2gan-profile-"))
    env = {**_env(), "E2GAN_PROFILE": str(profiles)}
    t0 = time.perf_counter()
    starts: list[tuple[str, float]] = []
    skipped: list[str] = []
    restored: list[str] = []
    with subprocess.Popen(
        dvc_cmd("repro", *args), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            if m := STARTED.match(line):
                starts.append((m.group(1), time.perf_counter()))
            elif m := SKIPPED.match(line):
                skipped.append(m.group(1))
            elif m := RESTORED.match(line):
                restored.append(m.group(1))
        rc = proc.wait()
    end = time.perf_counter()
    if rc:
        raise SystemExit(f"dvc repro {' '.join(args)} failed (exit {rc}); nothing recorded")
    stages = {
        name: round(((starts[i + 1][1] if i + 1 < len(starts) else end) - t), 1) for i, (name, t) in enumerate(starts)
    }
    costs = {name: top_costs(profiles / f"{name}.prof") for name in stages if (profiles / f"{name}.prof").is_file()}
    out = {"seconds": round(end - t0, 1), "stages": stages, "top_costs": costs, "skipped": skipped}
    return {**out, "restored_from_run_cache": restored} if restored else out


def time_noop(repeats: int) -> dict:
    def once(*cmd: str) -> float:
        t0 = time.perf_counter()
        subprocess.run(dvc_cmd(*cmd), env=_env(), capture_output=True, check=True)
        return time.perf_counter() - t0

    stale = subprocess.run(dvc_cmd("status", "--json"), env=_env(), capture_output=True, text=True, check=True)
    if stale.stdout.strip() not in ("", "{}"):
        raise SystemExit("the pipeline is not up to date: run `python -m bench.pipeline_timing repro` first")
    runs = [once("repro") for _ in range(repeats)]
    return {
        "seconds": round(statistics.median(runs), 2),
        "runs_s": [round(r, 2) for r in runs],
        "dvc_status_s": round(statistics.median(once("status") for _ in range(repeats)), 2),
    }


def time_new_concept(name: str, prompt: str) -> dict:
    """Add a filters concept to params.yaml, time `dvc repro` of its stages, then restore params.yaml and
    dvc.lock and remove its outputs."""
    import yaml

    params_text, lock_text = Path("params.yaml").read_text(), Path("dvc.lock").read_text()
    params = yaml.safe_load(params_text)
    params["concepts"][name] = {"prompt": prompt, "teacher": {"kind": "filters", "op": name}}
    before = _untracked()
    features = stage_paths("evaluate", name)["work"] / "features"  # evaluate@C's Inception feature cache
    cached = set(features.glob("*.npy"))
    index = subprocess.run(
        ["git", "rev-parse", ":dvc.lock"], capture_output=True, text=True, check=False
    ).stdout.strip()
    try:
        Path("params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        # --no-run-cache: a concept this machine has made before would otherwise be restored from DVC's run
        # cache (its stages "cached - skipping run"), and the record would time a checkout, not the work
        record = timed_repro("--no-run-cache", *[f"{s}@{name}" for s in PER_CONCEPT])
    finally:
        Path("params.yaml").write_text(params_text)
        Path("dvc.lock").write_text(lock_text)
        if index:  # core.autostage staged the temporary dvc.lock: put the index's entry back as it was
            subprocess.run(["git", "update-index", "--cacheinfo", f"100644,{index},dvc.lock"], check=False)
        for f in set(features.glob("*.npy")) - cached:  # the concept's feature sets: a rerun must compute them
            f.unlink(missing_ok=True)
        new = sorted(p for p in _untracked() - before if _is_concept_output(p, name))
        for path in new:
            Path(path).unlink(missing_ok=True)
        for d in sorted({str(p) for f in new for p in Path(f).parents if str(p) != "."}, key=len, reverse=True):
            if Path(d).is_dir() and not any(Path(d).iterdir()):
                Path(d).rmdir()
    return {"concept": name, **record}


MODES = ("full", "new_concept", "noop", "repro")


def summary(record: dict) -> dict:
    """What `machines` keeps of a run: its figure and where it came from."""
    return {k: record[k] for k in ("seconds", "commit", "date", "cores", "concept", "note") if k in record}


def import_records(result: dict, source: dict) -> dict:
    """Each run of `source` (its top-level records and its `machines`) into `result["machines"]`, where that machine
    has no record of that mode yet. Returns what was added, {cpu: {mode: summary}}."""
    machines, added = result.setdefault("machines", {}), {}
    found = [(r["cpu"], m, summary(r)) for m in MODES if isinstance(r := source.get(m), dict) and r.get("cpu")]
    found += [(cpu, m, r) for cpu, modes in source.get("machines", {}).items() for m, r in modes.items()]
    for cpu, mode, rec in found:
        if mode not in machines.setdefault(cpu, {}):
            machines[cpu][mode] = rec
            added.setdefault(cpu, {})[mode] = rec
    return added


def earlier_file(rev: str, path: Path) -> dict:
    """The results file as committed at git revision `rev`."""
    rel = path.resolve().relative_to(Path.cwd().resolve()).as_posix()
    out = subprocess.run(["git", "show", f"{rev}:{rel}"], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"git show {rev}:{rel} failed: {out.stderr.strip()}; give a revision where the file exists")
    return json.loads(out.stdout)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=("repro", "full", "new-concept", "noop", "import"))
    ap.add_argument("--repeats", type=int, default=3, help="noop, new-concept: runs (the median run is recorded)")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--note", default=None, help="a caveat stored with the record (e.g. other load on the machine)")
    ap.add_argument("--rev", default=None, help="import: the git revision whose results file to read")
    args = ap.parse_args(argv)
    if args.mode == "import":
        if not args.rev:
            ap.error("import needs --rev (a git revision of the results file)")
        result = json.loads(args.out.read_text()) if args.out.is_file() else {}
        import_records(result, result)  # this file's own records first: they are the newer
        added = import_records(result, earlier_file(args.rev, args.out))
        atomic_write_json(args.out, dict(sorted(result.items())))
        print(json.dumps(added, indent=1))
        return 0
    commit = code_version()  # before the run: a repro rewrites dvc.lock
    if args.mode == "repro":
        record = timed_repro()
    elif args.mode == "full":
        record = timed_repro("--force")
    elif args.mode == "new-concept":  # the machine's speed drifts by several per cent: the median of fresh runs
        runs = [time_new_concept("sepia", "give the photo a warm sepia tone") for _ in range(args.repeats)]
        record = {
            **sorted(runs, key=lambda r: r["seconds"])[(len(runs) - 1) // 2],
            "runs_s": [r["seconds"] for r in runs],
        }
    else:
        record = time_noop(args.repeats)
    result = json.loads(args.out.read_text()) if args.out.is_file() else {}
    record.update(commit=commit, cpu=cpu_model(), cores=os.cpu_count(), date=time.strftime("%Y-%m-%d"))
    if args.note:
        record["note"] = args.note
    import_records(result, result)  # records from before `machines` existed
    result[args.mode.replace("-", "_")] = record
    result.setdefault("machines", {}).setdefault(record["cpu"], {})[args.mode.replace("-", "_")] = summary(record)
    result.update(cores=os.cpu_count(), cpu=cpu_model())
    for mode, key in (("full", "full_run_s"), ("new_concept", "new_concept_s"), ("noop", "noop_repro_s")):
        if mode in result:
            result[key] = result[mode]["seconds"]
    atomic_write_json(args.out, dict(sorted(result.items())))
    print(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
