"""params.yaml validation: the real file parses; each malformed case gives one line naming key and fix."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from pydantic import ValidationError

from pipeline.config import PipelineConfig, load_params, parse_params, read_params
from pipeline.core.errors import ConfigError
from tests.conftest import ROOT


def test_real_params_parse_and_are_frozen():
    p = load_params(ROOT / "params.yaml")
    assert isinstance(p, PipelineConfig) and p.concepts
    assert load_params(ROOT / "params.yaml") is p  # loaded once
    with pytest.raises(ValidationError):
        p.data.image_size = 64  # type: ignore[misc]


def _set(d: dict, dotted: str, value) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        d = d[k]
    d[keys[-1]] = value


def _del(d: dict, dotted: str) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        d = d[k]
    del d[keys[-1]]


def _rename_concept(d: dict, new: str) -> None:
    d["concepts"][new] = d["concepts"].pop(next(iter(d["concepts"])))


# (case id, mutation, substrings the one-line message must contain)
CASES = [
    (
        "typo",
        lambda d: d["data"].__setitem__("imag_size", 64),
        ["data.imag_size", "unknown key", "did you mean 'image_size'"],
    ),
    ("wrong_type", lambda d: _set(d, "data.image_size", "big"), ["data.image_size", "integer", "'big'"]),
    ("not_multiple_of_16", lambda d: _set(d, "data.image_size", 100), ["data.image_size", "multiple of 16", "try 96"]),
    ("out_of_range", lambda d: _set(d, "data.val_fraction", 1.5), ["data.val_fraction", "less than 1"]),
    ("empty_val", lambda d: _set(d, "data.val_fraction", 0.0), ["data.val_fraction", "greater than 0"]),
    (
        "no_train_left",
        lambda d: d["data"].update(val_fraction=0.5, test_fraction=0.6),
        ["data.val_fraction + data.test_fraction = 1.1", "no train photos", "keep their sum below 1"],
    ),
    ("old_split_key", lambda d: _set(d, "data.heldout_fraction", 0.2), ["data.heldout_fraction", "unknown key"]),
    (
        "unknown_teacher",
        lambda d: _set(d, "concepts.watercolor.teacher", {"kind": "midjourney"}),
        ["concepts.watercolor.teacher", "unknown teacher kind 'midjourney'", "'filters', 'diffusers' or 'pairs'"],
    ),
    (
        "unknown_filter",
        lambda d: _set(d, "concepts.watercolor.teacher.op", "watercolour"),
        ["concepts.watercolor.teacher.op", "'watercolour' is not a filter", "did you mean 'watercolor'"],
    ),
    (
        "teacher_typo",
        lambda d: _set(d, "concepts.watercolor.teacher", {"kind": "diffusers", "stpes": 5}),
        ["concepts.watercolor.teacher.stpes", "did you mean 'steps'"],
    ),
    ("slug_spaces", lambda d: _rename_concept(d, "Water Color"), ["not a lowercase slug", "'water_color'"]),
    ("slug_path", lambda d: _rename_concept(d, "../etc"), ["'../etc'", "not a lowercase slug"]),
    ("missing_section", lambda d: _del(d, "expand_prompts"), ["expand_prompts", "missing section"]),
    ("missing_prompt", lambda d: _del(d, "concepts.winter.prompt"), ["concepts.winter.prompt", "missing key"]),
    ("no_concepts", lambda d: _set(d, "concepts", {}), ["concepts", "at least 1"]),
    ("unknown_section", lambda d: d.__setitem__("trian_base", {}), ["trian_base", "unknown key"]),
]


@pytest.mark.parametrize("case,mutate,expected", CASES, ids=[c[0] for c in CASES])
def test_malformed_params_give_one_clear_line(params_dict, case, mutate, expected):
    mutate(params_dict)
    with pytest.raises(ConfigError) as exc:
        parse_params(params_dict)
    msg = str(exc.value)
    assert "\n" not in msg, msg
    assert msg.startswith("params.yaml: "), msg
    for part in expected:
        assert part in msg, f"{part!r} not in {msg!r}"
    assert "pydantic" not in msg and "errors.pydantic.dev" not in msg


def test_a_stage_refuses_split_fractions_that_leave_no_train_photos(tmp_path, params_dict):
    from pipeline.config import load_stage_params

    params_dict["data"].update(val_fraction=0.4, test_fraction=0.6)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params_dict))
    with pytest.raises(ConfigError) as exc:
        load_stage_params("prepare_sources", ["data"], tmp_path / "params.yaml")
    msg = str(exc.value)
    assert "\n" not in msg and "data.val_fraction + data.test_fraction = 1 leaves no train photos" in msg, msg


def test_yaml_syntax_error_names_line(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("data:\n  image_size: 128\n   seed: 0\n")
    with pytest.raises(ConfigError, match=r"line 3: invalid YAML"):
        read_params(f)


def test_top_level_must_be_mapping():
    with pytest.raises(ConfigError, match="expected a mapping"):
        parse_params(["data"])


@pytest.mark.parametrize(
    "module", ["pipeline.orchestrate.cli params check", "stages prepare_sources --out o --metrics m.json"]
)
def test_bad_params_exit_nonzero_with_one_line_no_traceback(tmp_path, params_dict, module):
    params_dict["data"]["image_size"] = "big"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params_dict))
    cmd = [sys.executable, "-m", *module.split()]
    res = subprocess.run(
        cmd, cwd=tmp_path, capture_output=True, text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    )
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert lines[-1].startswith("error: params.yaml: data.image_size"), res.stderr


def test_a_stage_gets_only_the_sections_it_declares(tmp_path, params_dict):
    """A stage validates and reads only its dvc.yaml params: another section's problem does not stop it, and
    reading a section it does not declare is an error naming the fix (DVC would not rerun it on a change)."""
    from pipeline.config import load_stage_params
    from pipeline.orchestrate.dvc import stage_params

    params_dict["export_onnx"]["size"] = "big"  # broken, but not train_base's
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params_dict))
    p = load_stage_params("train_base", stage_params("train_base", root=ROOT), tmp_path / "params.yaml")
    assert p.train_base.train.steps == params_dict["train_base"]["train"]["steps"] and p.data.image_size
    with pytest.raises(ConfigError, match="reads params section 'export_onnx', which dvc.yaml does not list"):
        getattr(p, "export_onnx")  # noqa: B009
    with pytest.raises(ConfigError, match=r"export_onnx\.size"):
        load_stage_params("export_onnx", stage_params("export_onnx", "winter", ROOT), tmp_path / "params.yaml")
    e = load_stage_params("evaluate", stage_params("evaluate", "winter", ROOT), tmp_path / "params.yaml")
    assert e.concept("winter").prompt
    with pytest.raises(ConfigError, match="'cartoon' is not in"):
        e.concept("cartoon")  # only its own concept
