"""Names that reach paths and shells are whole slugs; CI never splices inputs into a script; writes land whole."""

from __future__ import annotations

import os
import re

import pytest
import yaml

from pipeline.core.errors import E2GANError
from pipeline.core.slug import check_slug, is_slug
from tests.conftest import ROOT


@pytest.mark.parametrize("name", ["winter\n", "winter\r\n", "a b", "../x", "Winter", "_x", "x" * 41, "", None, 3])
def test_not_a_slug(name):
    assert not is_slug(name)
    with pytest.raises(E2GANError, match="not a lowercase slug"):
        check_slug(name)


def test_slugs_pass_and_every_pattern_match_is_whole():
    assert all(is_slug(n) for n in ("winter", "a", "pop_art2", "x" * 40))
    # re.match with a `$` anchor accepts a trailing newline: patterns in the package match whole strings
    for path in (ROOT / "pipeline").rglob("*.py"):
        text = path.read_text()
        assert not re.search(r"re\.match\(r?[\"'][^\"']*\$", text), path
        for name in re.findall(r"(\w+) = re\.compile\(", text):
            assert f"{name}.match(" not in text and f"{name}.search(" not in text, (path, name)


def test_stage_entry_and_params_refuse_a_name_with_a_newline(tmp_path):
    from pipeline.config import load_stage_params
    from stages import parse

    with pytest.raises(E2GANError, match="not a lowercase slug"):
        parse("evaluate", ["--concept", "winter\n", "--out", "a"], ("out",))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["concepts"]["winter\n"] = params["concepts"]["winter"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(E2GANError, match="not a lowercase slug"):
        load_stage_params("evaluate", ["concepts.winter\n"], tmp_path / "params.yaml")


def test_workflows_pass_inputs_through_the_environment():
    """`${{ ... }}` inside a `run:` script is spliced into the shell before it runs: whoever controls the
    value runs commands, with the step's secrets. Inputs go through `env:` and are quoted in the script."""
    workflows = sorted((ROOT / ".github/workflows").glob("*.y*ml"))
    assert workflows
    for wf in workflows:
        doc = yaml.safe_load(wf.read_text())
        for job in doc["jobs"].values():
            for step in job["steps"]:
                script = step.get("run", "")
                assert "${{" not in script, (wf.name, step.get("name"))
                for var in step.get("env") or {}:
                    for use in re.findall(rf"\$\{{?{var}\b\}}?", script):
                        assert re.search(rf"\"[^\"]*{re.escape(use)}[^\"]*\"", script), (wf.name, var, "unquoted")


def test_atomic_writes_fsync_the_file_and_the_folder(tmp_path, monkeypatch):
    from pipeline.core import io

    synced: list[str] = []
    real = os.fsync

    def spy(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real(fd)

    monkeypatch.setattr(io.os, "fsync", spy)
    io.atomic_write_text(tmp_path / "a.txt", "x")
    assert len(synced) == 2 and synced[0].startswith(str(tmp_path / ".a.txt.")) and synced[1] == str(tmp_path)
    synced.clear()
    with io.atomic_dir(tmp_path / "d") as d:
        (d / "f.bin").write_bytes(b"1")
    assert any(s.endswith("/f.bin") for s in synced) and synced[-1] == str(tmp_path)
    assert (tmp_path / "a.txt").read_text() == "x" and (tmp_path / "d" / "f.bin").read_bytes() == b"1"
