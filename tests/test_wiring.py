"""One name per stage everywhere: dvc.yaml keys, stages/<name>.py modules, params sections, config classes."""
from __future__ import annotations

import yaml

from pipeline.config import Params

from .conftest import ROOT

SHARED_SECTIONS = {"data", "concepts"}  # read by several stages; `data` is produced by prepare_sources


def test_dvc_stages_and_stage_modules_match():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    modules = {p.stem for p in (ROOT / "stages").glob("*.py") if p.stem != "__init__"}
    assert set(stages) == modules
    for name, stage in stages.items():
        assert f"python -m stages.{name} " in stage["cmd"] + " ", name
        assert f"stages/{name}.py" in stage["deps"], f"{name} must depend on its own module"


def test_params_sections_are_stage_names_or_shared():
    stages = set(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"])
    sections = set(yaml.safe_load((ROOT / "params.yaml").read_text()))
    assert sections == set(Params.model_fields)
    assert sections - SHARED_SECTIONS <= stages, sections - SHARED_SECTIONS - stages
