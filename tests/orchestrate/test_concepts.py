"""`e2gan concept add / list / remove` and the params.yaml edits behind them (and behind the Prefect flow):
validated as a whole file before writing, atomic, only the concept's own lines change, safe under concurrency."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.config import read_params
from pipeline.orchestrate import concepts
from pipeline.orchestrate.cli import app
from tests.conftest import ROOT


@pytest.fixture
def params(tmp_path) -> Path:
    p = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", p)
    return p


def _cli(*args: str):
    return CliRunner().invoke(app, list(args))


def test_add_writes_only_the_new_concepts_lines_and_remove_restores_the_file(params):
    before = params.read_text()
    res = _cli(
        "concept",
        "add",
        "golden_hour",
        "--prompt",
        "make it golden hour: warm",
        "-t",
        "filters:autumn:0.7",
        "--params",
        str(params),
    )
    assert res.exit_code == 0, res.output
    after = params.read_text()
    assert after.startswith(before) and after[len(before) :] == (
        "  golden_hour:\n    prompt: 'make it golden hour: warm'\n    teacher: {kind: filters, op: autumn, strength: 0.7}\n"
    )
    c = read_params(params).concept("golden_hour")
    assert (c.prompt, c.teacher.op, c.teacher.strength) == ("make it golden hour: warm", "autumn", 0.7)
    res = _cli(
        "concept",
        "add",
        "dream",
        "-p",
        "make it dreamy",
        "-t",
        "diffusers:some/model",
        "--steps",
        "12",
        "--params",
        str(params),
    )
    assert res.exit_code == 0, res.output
    t = read_params(params).concept("dream").teacher
    assert (t.kind, t.model, t.steps, t.guidance_scale) == ("diffusers", "some/model", 12, 7.5)
    for name in ("golden_hour", "dream"):
        assert _cli("concept", "remove", name, "--params", str(params)).exit_code == 0
    assert params.read_text() == before  # byte for byte: comments, flow lists, nulls all kept


def test_the_same_definition_is_unchanged_and_another_needs_replace(params):
    args = ("concept", "add", "dusk", "-p", "make it dusk", "-t", "filters:night", "--params", str(params))
    assert _cli(*args).exit_code == 0
    text = params.read_text()
    res = _cli(*args)
    assert res.exit_code == 0 and "unchanged" in res.output and params.read_text() == text
    # the same definition written another way (the default strength spelled out) is the same concept
    assert (
        concepts.put("dusk", "make it dusk", {"kind": "filters", "op": "night", "strength": 1.0}, params).action
        == "unchanged"
    )
    other = ("concept", "add", "dusk", "-p", "make it dusk", "-t", "filters:night:0.5", "--params", str(params))
    res = _cli(*other)
    assert res.exit_code == 2 and "already exists" in res.output and "filters:night" in res.output
    assert params.read_text() == text
    res = _cli(*other, "--replace")
    assert res.exit_code == 0 and "updated" in res.output
    assert read_params(params).concept("dusk").teacher.strength == 0.5
    # an existing shipped concept is replaced in place, the rest of the file untouched
    assert (
        concepts.put(
            "winter", "make it winter with falling snow", {"kind": "filters", "op": "winter", "strength": 1.5}, params
        ).action
        == "updated"
    )
    lines = params.read_text().splitlines()
    i = lines.index("  winter:")
    assert lines[i + 2] == "    teacher: {kind: filters, op: winter, strength: 1.5}" and lines[i + 3] == "  dusk:"


@pytest.mark.parametrize(
    "args, message",
    [
        (["Bad-Name", "-p", "make it odd", "-t", "filters:sepia"], "is not a lowercase slug"),
        (["odd", "-p", "make it odd", "-t", "filters:sepiaa"], "did you mean 'sepia'"),
        (["odd", "-p", "make it odd", "-t", "magic:x"], "unknown teacher kind 'magic'"),
        (["odd", "-p", "make it odd", "-t", "filters:sepia:strong"], "strength 'strong' is not a number"),
        (["odd", "-p", "make it odd", "-t", "filters:sepia:3"], "teacher.strength"),
        (["odd", "-p", "x", "-t", "filters:sepia"], "concepts.odd.prompt"),
        (["odd", "-p", "make it odd", "-t", "filters:sepia", "--steps", "3"], "only for a diffusers teacher"),
        (["odd", "-p", "make it odd", "-t", "diffusers:"], "give the model"),
        (["watercolor", "-p", "make it odd", "-t", "filters:sepia"], "already exists"),
    ],
    ids=[
        "slug",
        "unknown-filter",
        "unknown-kind",
        "strength-word",
        "strength-range",
        "prompt",
        "diffusers-only",
        "no-model",
        "duplicate",
    ],
)
def test_a_bad_definition_is_one_line_and_leaves_params_byte_identical(params, args, message):
    before = params.read_bytes()
    res = _cli("concept", "add", *args, "--params", str(params))
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], res.output
    assert params.read_bytes() == before
    assert not list(params.parent.glob(".params.yaml.*"))  # no temp file left behind


def test_remove_refuses_an_unknown_name_and_the_last_concept(params):
    res = _cli("concept", "remove", "nope", "--params", str(params))
    assert res.exit_code == 2 and "known: watercolor, cartoon, winter" in res.output
    assert _cli("concept", "remove", "cartoon", "--params", str(params)).exit_code == 0
    assert _cli("concept", "remove", "winter", "--params", str(params)).exit_code == 0
    before = params.read_bytes()
    res = _cli("concept", "remove", "watercolor", "--params", str(params))
    assert res.exit_code == 2 and "only concept" in res.output and params.read_bytes() == before


ADD = """
import sys
from pathlib import Path
from pipeline.orchestrate.concepts import put
put(sys.argv[1], "apply the " + sys.argv[2] + " look", {"kind": "filters", "op": sys.argv[2]}, Path(sys.argv[3]))
"""


def test_concurrent_adds_all_land(params):
    """Eight processes add eight concepts at once: the lock serialises the read-modify-write, none is lost."""
    ops = ["night", "ink", "neon", "sepia", "lomo", "emboss", "thermal", "negative"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", ADD, f"c_{op}", op, str(params)], env=env, stderr=subprocess.PIPE, text=True
        )
        for op in ops
    ]
    for p in procs:
        assert p.wait(120) == 0, p.stderr.read()
    got = read_params(params).concepts
    assert {f"c_{op}" for op in ops} <= set(got) and all(got[f"c_{op}"].teacher.op == op for op in ops)


def test_list_reports_each_concepts_state_and_figures(tmp_path):
    """In a fresh DVC repo nothing has run: every concept is stale, with no figures; one concept's evaluate
    report present gives its headline figures."""
    for name in ("dvc.yaml", "params.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, tmp_path / name)
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "DO_NOT_TRACK": "1"}
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=tmp_path, check=True, env=env)
    report = tmp_path / "reports/evaluate/winter.json"
    report.parent.mkdir(parents=True)
    shutil.copy(ROOT / "reports/evaluate/winter.json", report)
    res = _cli("concept", "list", "--root", str(tmp_path), "--json")
    assert res.exit_code == 0, res.output
    rows = {r["concept"]: r for r in json.loads(res.output)}
    assert list(rows) == ["watercolor", "cartoon", "winter"]
    assert all(r["state"] == "stale" and "finetune_lora@" + c in r["stale_stages"] for c, r in rows.items())
    assert rows["watercolor"]["metrics"] is None and rows["winter"]["teacher"] == "filters:winter"
    shipped = json.loads(report.read_text())
    m = rows["winter"]["metrics"]
    assert (
        m["lpips_student"] == shipped["student"]["lpips"]["mean"]
        and m["kid_base"] == shipped["base_without_adapter"]["kid"]["value"]
    )
    table = _cli("concept", "list", "--root", str(tmp_path))
    assert table.exit_code == 0 and "winter" in table.output and f"{m['lpips_student']:.3f}" in table.output


def test_teacher_short_forms():
    assert concepts.teacher_from_spec("filters:watercolor") == {"kind": "filters", "op": "watercolor"}
    assert concepts.teacher_from_spec("filters:watercolor:0.5") == {
        "kind": "filters",
        "op": "watercolor",
        "strength": 0.5,
    }
    assert concepts.teacher_from_spec("diffusers:/models/ip2p", steps=5, guidance_scale=None) == {
        "kind": "diffusers",
        "model": "/models/ip2p",
        "steps": 5,
    }
