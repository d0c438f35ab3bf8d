"""The e2gan CLI: every command has --help; the no-analytics environment is set."""

from __future__ import annotations

import os

import pytest
from typer.testing import CliRunner

from pipeline.orchestrate.cli import app

COMMANDS = [[], ["assets"], ["assets", "fetch"], ["assets", "list"], ["params"], ["params", "check"]]


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c) or "e2gan")
def test_help(cmd):
    res = CliRunner().invoke(app, [*cmd, "--help"])
    assert res.exit_code == 0, res.output
    assert "Usage" in res.output


def test_quiet_environment_is_set():
    assert os.environ["DVC_NO_ANALYTICS"] == "1"
    assert os.environ["DO_NOT_TRACK"] == "1"
    assert os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
