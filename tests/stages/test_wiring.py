"""One name per stage everywhere: dvc.yaml keys, stages/<name>.py modules, params sections, config classes."""

from __future__ import annotations

from pathlib import Path

import yaml

from pipeline.config import PipelineConfig
from tests.conftest import ROOT

SHARED_SECTIONS = {"data", "concepts"}  # read by several stages; `data` is produced by prepare_sources


def test_dvc_stages_and_stage_modules_match():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    modules = {p.stem for p in (ROOT / "stages").glob("*.py") if p.stem not in ("__init__", "__main__")}
    assert set(stages) == modules
    for name, stage in stages.items():
        assert stage["cmd"].startswith(f"python -m stages {name} "), name
        assert f"stages/{name}.py" in stage["deps"], f"{name} must depend on its own module"


def test_every_stage_path_comes_from_dvc_yaml():
    """A stage takes exactly the paths its dvc.yaml command passes: none has a default of its own."""
    import importlib

    from pipeline.orchestrate.dvc import stage_paths

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        module = importlib.import_module(f"stages.{name}")
        passed = stage_paths(name, "c" if "matrix" in stage else None, ROOT)
        assert set(passed) == set(module.PATHS), name
        assert not any(
            a.default is not a.empty
            for a in __import__("inspect").signature(module.run).parameters.values()
            if a.name != "concept"
        ), name


def test_the_entry_point_refuses_missing_and_unknown_paths():
    import pytest

    from pipeline.core.errors import E2GANError
    from stages import parse

    with pytest.raises(E2GANError, match="missing: plot.*takes --out --plot"):
        parse("select_base", ["--out", "a.json"], ("out", "plot"))
    with pytest.raises(E2GANError, match="unknown: extra"):
        parse("select_base", ["--out", "a", "--plot", "b", "--extra", "c"], ("out", "plot"))
    with pytest.raises(E2GANError, match="--concept is required"):
        parse("evaluate", ["--out", "a"], ("out",))
    with pytest.raises(E2GANError, match="not a lowercase slug"):
        parse("evaluate", ["--concept", "../x", "--out", "a"], ("out",))
    concept, paths = parse("evaluate", ["--concept", "winter", "--out", "r/w.json"], ("out",))
    assert concept == "winter" and str(paths.out) == "r/w.json"


def test_params_sections_are_stage_names_or_shared():
    stages = set(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"])
    sections = set(yaml.safe_load((ROOT / "params.yaml").read_text()))
    assert sections == set(PipelineConfig.model_fields)
    assert sections - SHARED_SECTIONS <= stages, sections - SHARED_SECTIONS - stages


def test_flows_know_every_stage():
    from pipeline.orchestrate import dvc

    stages = dvc.stage_names(ROOT)
    listed = dvc.SHARED + dvc.PER_CONCEPT + dvc.AFTER_ALL
    assert sorted(listed) == sorted(stages) and len(set(listed)) == len(listed)
    assert {s for s in stages if stages[s]} == set(dvc.PER_CONCEPT)  # matrix stages are exactly the per-concept ones


def test_shared_stage_order_follows_the_dag():
    from pipeline.orchestrate import dvc

    doc = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    outs = {
        name: [o if isinstance(o, str) else next(iter(o)) for o in body.get("outs", [])] for name, body in doc.items()
    }
    for i, stage in enumerate(dvc.SHARED):  # every shared stage's deps are made by stages listed before it
        for dep in doc[stage]["deps"]:
            makers = [s for s, o in outs.items() if any(dep == x or dep.startswith(x + "/") for x in o)]
            assert all(dvc.SHARED.index(m) < i for m in makers if m in dvc.SHARED), (stage, dep, makers)


def _module_file(name: str) -> Path | None:
    """The project file of a module name (pipeline.* / stages.*), or None for other packages."""
    if name.split(".")[0] not in ("pipeline", "stages"):
        return None
    base = ROOT / Path(*name.split("."))
    return next((p for p in (base.with_suffix(".py"), base / "__init__.py") if p.is_file()), None)


def import_closure(start: list[Path]) -> set[Path]:
    """Every project file the given files import, directly or through others (function-level imports too),
    with the `__init__.py` of every package on the way (importing a module runs them)."""
    from tests.test_layout import _imports

    seen: set[Path] = set()
    todo = list(start)
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in _imports(path):
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # the packages on the way, and `from pkg import submodule`
                f = _module_file(".".join(parts[:i]))
                if f is not None and f not in seen:
                    todo.append(f)
    return seen


def _covered(path: Path, deps: list[str]) -> bool:
    rel = path.relative_to(ROOT).as_posix()
    return any(rel == d or rel.startswith(d.rstrip("/") + "/") for d in deps)


def test_stage_deps_cover_every_module_the_stage_imports():
    """A change to any file a stage runs reruns the stage: dvc.yaml's deps cover its import closure (from the
    entry point `python -m stages`, the stage's module and the models of the params sections it declares)."""
    from pipeline.config import SECTIONS

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    gaps = {}
    for name, body in stages.items():
        entry = [ROOT / "stages/__main__.py", ROOT / "stages/__init__.py", ROOT / f"stages/{name}.py"]
        for section in {p.split(".")[0] for p in body.get("params", [])}:  # models imported by name
            entry.append(_module_file(SECTIONS[section].split(":")[0]))
        missing = sorted(p.relative_to(ROOT).as_posix() for p in import_closure(entry) if not _covered(p, body["deps"]))
        if missing:
            gaps[name] = missing
    assert gaps == {}, f"dvc.yaml deps miss files these stages import: {gaps}"


def test_the_closure_follows_function_level_and_submodule_imports():
    closure = {p.relative_to(ROOT).as_posix() for p in import_closure([ROOT / "stages/train_base.py"])}
    assert {"pipeline/__init__.py", "pipeline/model/train.py", "pipeline/core/io.py"} <= closure
    assert "pipeline/core/metrics.py" in closure  # imported inside a function of model/train.py (LPIPS loss)
    assert "pipeline/deploy/export.py" not in closure
    closure = {p.relative_to(ROOT).as_posix() for p in import_closure([ROOT / "stages/export_mobile.py"])}
    assert "pipeline/deploy/mobile.py" in closure  # `from pipeline.deploy import mobile`, inside a function
    assert "pipeline/deploy/demo.py" not in closure  # the browser demo changes no exported model


def test_every_path_a_stage_is_given_is_a_dep_or_an_output():
    """What a stage reads is a dep (so a change reruns it); what it writes is an output; the work folder
    (resumable state, keyed on code, params and data) is neither."""
    from pipeline.orchestrate.dvc import stage_paths

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, body in stages.items():
        made = [
            next(iter(o)) if isinstance(o, dict) else o for k in ("outs", "metrics", "plots") for o in body.get(k, [])
        ]
        deps = [d.replace("${item.concept}", "c") for d in body["deps"]]
        made = [m.replace("${item.concept}", "c") for m in made]
        for key, path in stage_paths(name, "c" if "matrix" in body else None, Path(".")).items():
            rel = path.as_posix()
            if key == "work":
                assert rel.startswith("data/.work/"), (name, rel)
                continue
            inside = [m for m in made if rel == m or rel.startswith(m + "/") or m.startswith(rel + "/")]
            assert inside or _covered(ROOT / rel, deps), f"{name}: --{key} {rel} is neither a dep nor an output"


def test_code_hash_follows_the_stage_code_and_nothing_else(tmp_path):
    """The work-folder key's code part: changes with any file of the stage's code deps, not with bytecode,
    editor files or code the stage does not run."""
    import shutil

    from pipeline.orchestrate.dvc import code_hash

    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, tmp_path / name)
    for d in ("pipeline", "stages"):
        shutil.copytree(ROOT / d, tmp_path / d, ignore=shutil.ignore_patterns("__pycache__"))
    before = code_hash("finetune_lora", tmp_path)
    (tmp_path / "pipeline/adapt/__pycache__").mkdir()
    (tmp_path / "pipeline/adapt/__pycache__/lora.cpython-311.pyc").write_bytes(b"\0")
    (tmp_path / "pipeline/adapt/lora.py~").write_text("editor backup")
    (tmp_path / "pipeline/model/.train.py.swp").write_text("editor swap")
    with open(tmp_path / "pipeline/deploy/export.py", "a") as f:
        f.write("\n# not run by finetune_lora\n")
    assert code_hash("finetune_lora", tmp_path) == before
    assert code_hash("export_onnx", tmp_path) != code_hash("export_onnx", ROOT)
    with open(tmp_path / "pipeline/model/train.py", "a") as f:  # the training loop it runs
        f.write("\n# changed\n")
    assert code_hash("finetune_lora", tmp_path) != before


def test_a_stage_runs_under_cprofile_when_asked_and_its_top_costs_are_read(tmp_path, monkeypatch):
    import time

    import stages
    import stages.report as report
    from bench.pipeline_timing import top_costs
    from pipeline.core import slug

    def run(params, paths) -> None:  # the stage's work: package code that takes measurable time
        for _ in range(300):
            slug.check_slug("winter")
        time.sleep(0.05)

    monkeypatch.setattr(report, "run", run)
    monkeypatch.chdir(ROOT)
    argv = ["report", *[w for n in report.PATHS for w in (f"--{n.replace('_', '-')}", str(tmp_path / n))]]
    stages.main(argv)  # no E2GAN_PROFILE: no profile written
    monkeypatch.setenv("E2GAN_PROFILE", str(tmp_path / "prof"))
    stages.main(argv)
    assert [p.name for p in (tmp_path / "prof").iterdir()] == ["report.prof"]
    costs = top_costs(tmp_path / "prof/report.prof")
    assert costs and all(c["function"].startswith("pipeline/") for c in costs)
    assert {"function": "pipeline/core/slug.py:check_slug", "calls": 300} == {
        k: v for k, v in next(c for c in costs if c["function"].endswith(":check_slug")).items() if k != "seconds"
    }


def test_pipeline_timing_keeps_each_machines_latest_runs():
    """bench.pipeline_timing: a run on one machine never erases another machine's figures; an import adds only the
    modes a machine has no record of (the file's own, newer, records win)."""
    from bench.pipeline_timing import import_records, summary

    xeon = {"cpu": "Xeon", "seconds": 1118.5, "commit": "aaa", "date": "d1", "cores": 2, "stages": {"x": 1.0}}
    result = {"full": {**xeon, "cpu": "EPYC", "seconds": 1148.7, "commit": "bbb"}}
    assert import_records(result, result) == {"EPYC": {"full": summary(result["full"])}}
    added = import_records(result, {"full": xeon, "noop": {**xeon, "seconds": 2.1}, "machines": {"EPYC": {"noop": {}}}})
    assert added == {"Xeon": {"full": summary(xeon), "noop": {**summary(xeon), "seconds": 2.1}}, "EPYC": {"noop": {}}}
    assert result["machines"]["EPYC"]["full"]["seconds"] == 1148.7  # not replaced by the older file's
    assert "stages" not in result["machines"]["Xeon"]["full"] and import_records(result, {"full": xeon}) == {}


def test_pipeline_timing_new_concept_records_the_median_of_fresh_runs(tmp_path, monkeypatch):
    """new-concept runs the concept afresh --repeats times and records the median run whole (its stages and
    costs), with every run's seconds beside it."""
    import json

    from bench import pipeline_timing

    runs = iter([{"seconds": s, "stages": {"evaluate@sepia": s / 3}} for s in (182.7, 168.2, 175.0)])
    monkeypatch.setattr(pipeline_timing, "time_new_concept", lambda name, prompt: {"concept": name, **next(runs)})
    out = tmp_path / "timing.json"
    assert pipeline_timing.main(["new-concept", "--repeats", "3", "--out", str(out)]) == 0
    got = json.loads(out.read_text())
    assert got["new_concept_s"] == 175.0 and got["new_concept"]["runs_s"] == [182.7, 168.2, 175.0]
    assert got["new_concept"]["stages"] == {"evaluate@sepia": 175.0 / 3} and got["new_concept"]["concept"] == "sepia"
    assert got["machines"][got["cpu"]]["new_concept"]["seconds"] == 175.0
