"""The e2gan CLI: every command has --help; its entry points set the no-analytics environment for themselves
and for the dvc / prefect processes they start, even when the caller's environment (unlike `make test`'s) lacks it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.orchestrate.cli import app
from tests.conftest import ROOT

COMMANDS = [
    [],
    ["assets"],
    ["assets", "fetch"],
    ["assets", "list"],
    ["params"],
    ["params", "check"],
    ["concept"],
    ["concept", "add"],
    ["concept", "list"],
    ["concept", "remove"],
    ["ui"],
]


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c) or "e2gan")
def test_help(cmd):
    res = CliRunner().invoke(app, [*cmd, "--help"])
    assert res.exit_code == 0, res.output
    assert "Usage" in res.output


# What dvc and prefect must see: spelled out here, not read from pipeline.core.env, so a wrong value there fails too.
QUIET = {"DVC_NO_ANALYTICS": "1", "DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}

# A stand-in for `python -m dvc` / `python -m prefect` (first on PYTHONPATH): records the argv and the quiet
# variables it was started with, one JSON line each, and answers `dvc status --json` with "no stale stages".
FAKE_MAIN = """
import json, os, sys
with open(os.environ["E2GAN_TEST_RECORD"], "a") as f:
    f.write(json.dumps({"argv": sys.argv[1:], "env": {k: os.environ.get(k) for k in %r}}) + "\\n")
if "status" in sys.argv:
    print("{}")
""" % sorted(QUIET)


def _child(args: list[str], tmp_path: Path, fake: tuple[str, ...] = (), extra: dict | None = None) -> list[dict]:
    """Run `args` with the quiet variables removed from its environment, `fake` packages shadowing the real
    ones; returns what the fakes recorded, then (when the child prints JSON on its last line) that too."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    shim = tmp_path / "shim"
    for name in fake:
        (shim / name).mkdir(parents=True, exist_ok=True)
        (shim / name / "__init__.py").write_text("")
        (shim / name / "__main__.py").write_text(FAKE_MAIN)
    record = tmp_path / "record.jsonl"
    env = {k: v for k, v in os.environ.items() if k not in QUIET and k not in ("PYTHONPATH", "GITHUB_STEP_SUMMARY")}
    assert not set(QUIET) & set(env)
    env.update(E2GAN_TEST_RECORD=str(record), PYTHONPATH=os.pathsep.join([str(shim), str(ROOT)]), **(extra or {}))
    res = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    seen = [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []
    last = (res.stdout.strip().splitlines() or [""])[-1]
    return seen + ([json.loads(last)] if last.startswith("{") else [])


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def _e2gan() -> str:
    return str(Path(sys.executable).with_name("e2gan"))  # the console script, as a user runs it


def test_quiet_environment_e2gan_ci_retrain_passes_it_to_every_dvc_call(tmp_path):
    """`e2gan ci retrain` runs dvc remote list / repro / params diff / metrics diff, each with the quiet env."""
    seen = _child([_e2gan(), "ci", "retrain", "--no-push"], tmp_path, fake=("dvc",))
    calls = [s for s in seen if "argv" in s]
    assert [c["argv"][:2] for c in calls] == [
        ["remote", "list"],
        ["--wait-for-lock", "repro"],
        ["params", "diff"],
        ["metrics", "diff"],
    ]
    assert all(c["env"] == QUIET for c in calls), calls


def test_quiet_environment_e2gan_ui_passes_it_to_the_prefect_server(tmp_path):
    seen = _child([_e2gan(), "ui", "--port", "1"], tmp_path, fake=("prefect",))
    assert [s["argv"][:2] for s in seen] == [["server", "start"]]
    assert seen[0]["env"] == QUIET


def test_quiet_environment_reaches_prefect_settings_in_the_cli_process(tmp_path):
    """`e2gan flow` / `e2gan serve` run Prefect in-process: its settings (read when prefect is imported) see it."""
    (seen,) = _child(
        _python(
            """
            import json, os
            import pipeline.orchestrate.cli  # what the `e2gan` script imports first
            from pipeline.orchestrate import flows  # what `e2gan flow` imports next (and prefect with it)
            from prefect.settings import get_current_settings
            print(json.dumps({"env": {k: os.environ.get(k) for k in %r},
                              "analytics": get_current_settings().server.analytics_enabled}))
        """
            % sorted(QUIET)
        ),
        tmp_path,
    )
    assert seen == {"env": QUIET, "analytics": False}


def test_quiet_environment_python_m_stages_sets_it(tmp_path):
    """`python -m stages <stage>` (what dvc.yaml runs) sets it before the stage; here the stage then stops on its
    missing paths."""
    (seen,) = _child(
        _python(
            """
            import json, os, runpy, sys
            sys.argv = ["stages", "prepare_sources"]
            try:
                runpy.run_module("stages", run_name="__main__", alter_sys=True)
            except SystemExit as e:
                code = e.code
            print(json.dumps({"code": code, "env": {k: os.environ.get(k) for k in %r}}))
        """
            % sorted(QUIET)
        ),
        tmp_path,
    )
    assert seen == {"code": 2, "env": QUIET}


def test_quiet_environment_dvc_wrapper_passes_it_to_dvc(tmp_path):
    """pipeline.orchestrate.dvc (the flows' way to dvc): _env(), and what status / repro_stage hand dvc."""
    seen = _child(
        _python(
            """
            import json
            from pathlib import Path
            from pipeline.orchestrate import dvc
            env = dvc._env()
            assert dvc.status(root=Path(".")) == set() and dvc.repro_stage("s", root=Path(".")) == []
            print(json.dumps({"env": {k: env.get(k) for k in %r}}))
        """
            % sorted(QUIET)
        ),
        tmp_path,
        fake=("dvc",),
    )
    assert [s["argv"][:2] for s in seen[:-1]] == [["--wait-for-lock", "status"], ["--wait-for-lock", "repro"]]
    assert all(s["env"] == QUIET for s in seen), seen


def test_set_quiet_env_sets_it_and_keeps_what_the_user_chose(tmp_path):
    code = """
        import json, os
        from pipeline.core.env import set_quiet_env
        before = {k: os.environ.get(k) for k in %r}
        set_quiet_env()
        print(json.dumps({"before": before, "env": {k: os.environ.get(k) for k in %r}}))
    """ % (sorted(QUIET), sorted(QUIET))
    (seen,) = _child(_python(code), tmp_path)
    assert seen == {"before": dict.fromkeys(QUIET), "env": QUIET}
    (seen,) = _child(_python(code), tmp_path / "user", extra={"DO_NOT_TRACK": "0"})
    assert seen["env"] == {**QUIET, "DO_NOT_TRACK": "0"}


def test_e2gan_ui_honours_its_port_keeps_state_in_the_project_and_stops_its_server_on_sigterm(tmp_path):
    """The page calls the API on the port the server is on; the server's database lives in <root>/.prefect; a
    SIGTERM to `e2gan ui` stops the server it started (nothing is left listening)."""
    import signal
    import socket
    import time

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    proc = subprocess.Popen(
        [_e2gan(), "ui", "--port", str(port), "--root", str(tmp_path), "--no-serve"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
            time.sleep(0.5)
        settings = httpx.get(f"http://127.0.0.1:{port}/ui-settings", timeout=10).json()
        assert settings["api_url"] == f"http://127.0.0.1:{port}/api"
        assert list((tmp_path / ".prefect").glob("*.db"))  # the server's state, inside the project
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        time.sleep(1)
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
