"""One name per stage everywhere: dvc.yaml keys, stages/<name>.py modules, params sections, config classes."""

from __future__ import annotations

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
