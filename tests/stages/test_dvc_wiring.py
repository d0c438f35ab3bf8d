"""dvc.yaml in a temp git+dvc repo: a new or changed concept makes exactly its own stages stale, and
never the shared stages (the base model is not retrained for a new concept)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from bench import no_egress
from pipeline.orchestrate.dvc import PER_CONCEPT
from tests.conftest import ROOT


def _env(**extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "DVC_NO_ANALYTICS": "1",
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "E2GAN_PROGRESS": "0",
        **extra,
    }


def _run(cmd: list[str], cwd: Path) -> str:
    res = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True)
    assert res.returncode == 0, f"{cmd}: {res.stdout}\n{res.stderr}"
    return res.stdout


def _repro(repo: Path, *args: str) -> str:
    """`dvc repro <args>`; its output and the stages' logs (stderr) together."""
    res = subprocess.run(
        [sys.executable, "-m", "dvc", "repro", *args], cwd=repo, env=_env(), capture_output=True, text=True
    )
    assert res.returncode == 0, f"dvc repro {args}: {res.stdout}\n{res.stderr}"
    return res.stdout + res.stderr


def _stale(repo: Path) -> set[str]:
    return set(json.loads(_run([sys.executable, "-m", "dvc", "status", "--json"], repo)))


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("dvcrepo")
    for name in ("dvc.yaml", "params.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(ROOT / name, repo / name)
    for d in ("pipeline", "stages"):
        shutil.copytree(ROOT / d, repo / d, ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data"].update(max_photos=6, image_size=32, crops_per_photo=1, eval_crops_per_photo=2)
    params["expand_prompts"]["n_prompts"] = 2
    params["train_base"]["train"].update(steps=4, ckpt_every=2, log_every=2)
    params["analyze_layers"].update(probe_steps=1, full_steps=1, eval_limit=2, probe_batch=2)
    params["finetune_lora"]["train"].update(steps=2, batch_size=2, ckpt_every=1, log_every=1)
    params["evaluate"].update(bootstrap=2, kid_bootstrap=2, fid_bootstrap=0, grid=2)  # FID: tests/core/test_metrics.py
    params["export_onnx"].update(size=32, parity_images=2, calibration_images=2, latency_runs=1, quantize=False)
    params["export_mobile"].update(
        formats=["litert"], parity_images=2, calibration_images=2, latency_runs=1, int8=False
    )
    params["select_base"].update(k=2, n_calibration=1)  # fewer base pairs, probes and comparison runs
    params["concepts"] = {
        "sepia": {"prompt": "give it a sepia tone", "teacher": {"kind": "filters", "op": "sepia"}},
        "ink": {"prompt": "make it an ink drawing", "teacher": {"kind": "filters", "op": "ink"}},
    }
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run(["git", "init", "-q"], repo)
    _run([sys.executable, "-m", "dvc", "init", "-q"], repo)
    shutil.copy(ROOT / ".dvc/config", repo / ".dvc/config")  # the project's: no analytics, no update check
    if no_egress.available():  # the full run under strace: every connection any process opens is recorded
        res, destinations = no_egress.traced_run([sys.executable, "-m", "dvc", "repro", "-q"], repo, _env())
        assert res.returncode == 0, res.stdout + res.stderr
        (repo / "destinations.json").write_text(json.dumps(destinations))
    else:
        _run([sys.executable, "-m", "dvc", "repro", "-q"], repo)
    assert _stale(repo) == set()
    return repo


@pytest.mark.slow
def test_a_full_run_opens_no_connection_off_the_machine(repo):
    """Offline by construction: the whole DAG (every stage, every child process) under strace reaches no
    address but loopback: no model hub, no analytics, no DNS lookup."""
    if not no_egress.available():
        if os.environ.get("E2GAN_REQUIRE_STRACE"):  # make test sets it (and installs strace)
            pytest.fail("strace is not installed: run 'make system-deps'")
        pytest.skip("strace is not installed (apt-get install strace)")
    destinations = json.loads((repo / "destinations.json").read_text())
    assert [d for d in destinations if not d["loopback"]] == []
    # the check itself sees connections: strace on a process that does connect reports it
    res, seen = no_egress.traced_run(
        [
            sys.executable,
            "-c",
            (
                "import socket; s = socket.socket(); s.settimeout(0.2)\ntry: s.connect(('192.0.2.1', 9))\nexcept OSError: pass"
            ),
        ],
        repo,
        _env(),
    )
    assert res.returncode == 0 and [d["address"] for d in seen] == ["192.0.2.1"]


def _stage_argv(repo: Path, stage: str, concept: str) -> list[str]:
    body = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"][stage]
    return body["cmd"].replace("${item.concept}", concept).split()[4:]  # after `python -m stages <stage>`


# the stage's command in a process that kill -9s itself right after its first training checkpoint
KILL_AT_FIRST_CHECKPOINT = """
import os, signal, sys
import pipeline.model.train as t
save = t.save_checkpoint
def save_then_die(*a, **k):
    save(*a, **k)
    os.kill(os.getpid(), signal.SIGKILL)
t.save_checkpoint = save_then_die
import stages
stages.main(sys.argv[1:])
"""


def _killed_run(repo: Path, stage: str, concept: str) -> None:
    argv = [stage, *_stage_argv(repo, stage, concept)]
    res = subprocess.run(
        [sys.executable, "-c", KILL_AT_FIRST_CHECKPOINT, *argv], cwd=repo, env=_env(), text=True, capture_output=True
    )
    assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
    assert list((repo / "data/.work" / stage).glob(f"{concept}-*/last.pt")), "no checkpoint left behind"


def _adapter(repo: Path, concept: str) -> dict:
    from safetensors.torch import load_file

    return load_file(str(repo / "models/lora" / concept / "adapter_model.safetensors"))


def _out_hash(repo: Path, stage: str, out: str) -> str:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"][stage]
    return next(o["md5"] for o in lock["outs"] if o["path"] == out)


def _tone(repo: Path, concept: str) -> dict:
    from safetensors.torch import load_file

    return load_file(str(repo / "models/lora" / concept / "tone_curve.safetensors"))


def _same(a: dict, b: dict, atol: float = 0.0) -> bool:
    import torch

    close = lambda x, y: x.shape == y.shape and torch.allclose(x, y, rtol=0, atol=atol)  # noqa: E731
    return a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_a_fresh_clone_is_up_to_date_whatever_bytecode_or_editor_files_lie_around(repo, tmp_path):
    """dvc.lock's code hashes do not depend on __pycache__ or editor files: after a run that left bytecode
    behind, and with editor files beside the code, the repo and a fresh clone (sharing the cache) are clean."""
    _run([sys.executable, "-m", "compileall", "-q", "pipeline", "stages"], repo)  # bytecode, as a test run leaves
    assert list((repo / "pipeline").rglob("__pycache__"))
    junk = [repo / "pipeline/core/io.py~", repo / "pipeline/data/.sources.py.swp", repo / "pipeline/model/.DS_Store"]
    for f in junk:
        f.write_text("editor state")
    try:
        assert _stale(repo) == set()
    finally:
        for f in junk:
            f.unlink()
    _run(["git", "add", "-A"], repo)
    _run(["git", "-c", "user.email=t@e2gan", "-c", "user.name=t", "commit", "-qm", "state", "--allow-empty"], repo)
    clone = tmp_path / "clone"
    _run(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    assert not list(clone.rglob("__pycache__"))
    _run([sys.executable, "-m", "dvc", "cache", "dir", "--local", str(repo / ".dvc/cache")], clone)
    _run([sys.executable, "-m", "dvc", "checkout", "-q"], clone)
    assert _stale(clone) == set()


def _edit_params(repo: Path, fn) -> str:
    original = (repo / "params.yaml").read_text()
    params = yaml.safe_load(original)
    fn(params)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return original


@pytest.mark.slow
def test_new_concept_makes_only_its_stages_stale_and_dvc_repro_runs_exactly_them(repo):
    original = _edit_params(
        repo,
        lambda p: p["concepts"].__setitem__(
            "night", {"prompt": "turn the scene into night", "teacher": {"kind": "filters", "op": "night"}}
        ),
    )
    try:
        expected = {
            "expand_prompts@night",
            "generate_pairs@night",
            "finetune_lora@night",
            "evaluate@night",
            "export_onnx@night",
            "export_mobile@night",
            "report",
        }
        assert _stale(repo) == expected
        out = _run([sys.executable, "-m", "dvc", "repro"], repo)
        ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage '")}
        assert ran == expected, out
        assert _stale(repo) == set()
    finally:
        (repo / "params.yaml").write_text(original)
        _run([sys.executable, "-m", "dvc", "repro", "-q"], repo)  # the report without 'night': a clean state again


@pytest.mark.slow
def test_changed_prompt_makes_only_its_concept_stale(repo):
    """(That `dvc repro` then runs exactly the stale stages is shown by the flow, Dask and CI tests below.)"""
    original = _edit_params(repo, lambda p: p["concepts"]["ink"].__setitem__("prompt", "make it a pen drawing"))
    try:
        assert _stale(repo) == {
            "expand_prompts@ink",
            "generate_pairs@ink",
            "finetune_lora@ink",
            "evaluate@ink",
            "export_onnx@ink",
            "export_mobile@ink",
            "report",
        }
    finally:
        (repo / "params.yaml").write_text(original)


@pytest.mark.slow
def test_shared_section_change_makes_every_concept_stale(repo):
    original = _edit_params(repo, lambda p: p["generate_pairs"].__setitem__("min_lpips", 0.03))
    try:  # the base pairs use the same quality filter
        assert _stale(repo) == {"generate_pairs@sepia", "generate_pairs@ink", "generate_base_pairs"}
    finally:
        (repo / "params.yaml").write_text(original)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listeners(port: int) -> set[str]:
    """Local addresses (hex, as in /proc/net/tcp*) of the sockets listening on `port`."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, p = local.split(":")
            if state == "0A" and int(p, 16) == port:
                found.add(addr)
    return found


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory, repo):
    """`e2gan ui`: a real Prefect server (its own database) on 127.0.0.1 serving the deployments for `repo`;
    yields (api_url, env for clients, port)."""
    import httpx

    home = tmp_path_factory.mktemp("prefect-home")
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = _env(PREFECT_HOME=str(home), PREFECT_API_URL=url)
    log = open(home / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.orchestrate.cli", "ui", "--port", str(port), "--root", str(repo)],
        cwd=repo,
        env=_env(PREFECT_HOME=str(home)),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, (home / "server.log").read_text()[-3000:]
            time.sleep(1)
        yield url, env, port
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def _ran(stdout: str) -> list[str]:
    """The stage list `e2gan flow` prints as its last JSON line."""
    return json.loads(next(line for line in reversed(stdout.splitlines()) if line.startswith('{"ran"')))["ran"]


FOUR = {"dusk": "night", "pop": "pop_art", "plan": "blueprint", "flip": "negative"}


@pytest.mark.slow
def test_four_concept_flows_at_once_then_read_back_over_rest(repo, prefect_server):
    """Four new concepts, four `e2gan flow` processes started together against the served UI: each runs
    exactly its own chain, no lock errors, dvc.lock ends consistent; the runs and their metrics artifacts
    read back through the server's REST API on 127.0.0.1."""
    import httpx

    url, env, port = prefect_server
    assert _listeners(port) == {"0100007F"}  # 127.0.0.1 only
    original = _edit_params(
        repo,
        lambda p: p["concepts"].update(
            {c: {"prompt": f"apply the {op} look", "teacher": {"kind": "filters", "op": op}} for c, op in FOUR.items()}
        ),
    )
    try:
        procs = {
            c: subprocess.Popen(
                [sys.executable, "-m", "pipeline.orchestrate.cli", "flow", "--concept", c, "--root", str(repo)],
                cwd=repo,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for c in FOUR
        }
        outs = {c: p.communicate(timeout=1200) for c, p in procs.items()}
        for c, p in procs.items():
            out, err = outs[c]
            assert p.returncode == 0, (out + err)[-3000:]
            assert "is busy" not in out + err and "LockError" not in out + err
            ran = _ran(out)
            assert sorted(ran) == sorted(f"{s}@{c}" for s in PER_CONCEPT), (c, ran)
        assert _stale(repo) == {"report"}  # dvc.lock holds every concept's stages, nothing half-written
        lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
        for c in FOUR:
            for s in PER_CONCEPT:
                assert lock[f"{s}@{c}"]["outs"], (s, c)
        # a second flow for an up-to-date concept runs nothing
        again = subprocess.run(
            [sys.executable, "-m", "pipeline.orchestrate.cli", "flow", "--concept", "pop", "--root", str(repo)],
            cwd=repo,
            env=env,
            capture_output=True,
            text=True,
        )
        assert again.returncode == 0 and _ran(again.stdout) == []

        runs = httpx.post(
            f"{url}/flow_runs/filter",
            json={"flow_runs": {"name": {"any_": [f"concept {c}" for c in FOUR]}}},
            timeout=30,
        ).json()
        assert len(runs) == 5 and {r["state_type"] for r in runs} == {"COMPLETED"}
        assert {r["name"] for r in runs} == {f"concept {c}" for c in FOUR}
        assert all(r["parameters"]["concept"] in FOUR for r in runs)
        arts = httpx.post(
            f"{url}/artifacts/filter", json={"artifacts": {"key": {"any_": [f"metrics-{c}" for c in FOUR]}}}, timeout=30
        ).json()
        assert {a["key"] for a in arts} == {f"metrics-{c}" for c in FOUR} and {a["type"] for a in arts} == {"table"}
        table = json.loads(next(a for a in arts if a["key"] == "metrics-dusk")["data"])
        values = {(row["stage"], row["metric"]): row["value"] for row in table}
        metrics = json.loads((repo / "reports/finetune_lora/dusk/metrics.json").read_text())
        assert values[("finetune_lora", "trainable_params")] == metrics["trainable_params"]
    finally:
        (repo / "params.yaml").write_text(original)


def _deployment(url: str, name: str = "e2gan-concept/concept", seconds: float = 120) -> dict:
    """The deployment once `e2gan ui` has registered it."""
    import httpx

    deadline = time.monotonic() + seconds
    while True:
        r = httpx.get(f"{url}/deployments/name/{name}", timeout=10)
        if r.status_code == 200:
            return r.json()
        assert time.monotonic() < deadline, f"deployment {name} not served: {r.status_code} {r.text[:300]}"
        time.sleep(1)


def _finished(url: str, run_id: str, seconds: float = 1200) -> dict:
    import httpx

    deadline = time.monotonic() + seconds
    while True:
        run = httpx.get(f"{url}/flow_runs/{run_id}", timeout=10).json()
        if run["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return run
        assert time.monotonic() < deadline, run["state_type"]
        time.sleep(2)


NEW = {
    "glow": {"prompt": "give it a neon glow", "teacher": "filters", "filter_op": "neon", "strength": 0.8},
    "inverted": {"prompt": "invert the colours", "teacher": "pairs", "pairs_source": "my_edits"},  # made elsewhere
}


def _write_pairs(folder: Path, n: int = 6) -> None:
    from PIL import Image

    from tests.data.test_imported import _photo

    for i in range(n):
        img = _photo(i)
        for sub, im in (("input", img), ("edited", 255 - img)):
            (folder / sub).mkdir(parents=True, exist_ok=True)
            Image.fromarray(im).save(folder / sub / f"shot{i}.png")


@pytest.mark.slow
def test_new_concepts_from_the_deployment_form_over_rest(repo, prefect_server):
    """What the UI's form does: runs of the served deployment `e2gan-concept/concept` started through the REST
    API with new concepts' definitions. A bad definition fails before any stage with a one-line state message
    and leaves params.yaml byte-identical; two new concepts at once both land in params.yaml and dvc.lock,
    each run ran exactly its concept's stages, and each run's artifacts hold its figures and grid."""
    import httpx

    url, env, port = prefect_server
    dep = _deployment(url)
    props = dep["parameter_openapi_schema"]["properties"]
    assert "neon" in props["filter_op"]["enum"] and props["teacher"]["enum"] == [
        "filters",
        "diffusers",
        "pairs",
    ]
    assert props["concept"]["description"] and dep["parameters"]["root"] == str(repo.resolve())
    original = (repo / "params.yaml").read_bytes()

    def start(parameters: dict) -> str:
        for wait in (1, 2, 4, 8, 0):  # a server busy with another test's runs may answer 503 for a moment
            r = httpx.post(
                f"{url}/deployments/{dep['id']}/create_flow_run", json={"parameters": parameters}, timeout=30
            )
            if r.status_code != 503 or not wait:
                break
            time.sleep(wait)
        assert r.status_code == 201, r.text
        return r.json()["id"]

    try:
        bad = _finished(url, start({"concept": "odd", "prompt": "make it odd", "filter_op": "sepia", "strength": 7}))
        assert bad["state_type"] == "FAILED"
        message = bad["state"]["message"]
        assert "\n" not in message and "concepts.odd.teacher.strength" in message, message
        assert (repo / "params.yaml").read_bytes() == original
        tasks = httpx.post(f"{url}/task_runs/filter", json={"task_runs": {"flow_run_id": {"any_": [bad["id"]]}}}).json()
        assert tasks == []  # failed before any stage

        _write_pairs(repo / "my_edits")
        ids = {c: start({"concept": c, **d}) for c, d in NEW.items()}  # both at once
        runs = {c: _finished(url, i) for c, i in ids.items()}
        assert {c: r["state_type"] for c, r in runs.items()} == dict.fromkeys(NEW, "COMPLETED"), runs
        params = yaml.safe_load((repo / "params.yaml").read_text())["concepts"]
        assert params["glow"] == {
            "prompt": "give it a neon glow",
            "teacher": {"kind": "filters", "op": "neon", "strength": 0.8},
        }
        assert params["inverted"]["teacher"] == {"kind": "pairs", "source": "my_edits"}
        made = json.loads((repo / "reports/generate_pairs/inverted.json").read_text())
        assert made["source_pairs"] == 6 and made["skipped"] == 0 and made["kept_test"] > 0
        lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
        assert _stale(repo) == {"report"}
        for c, run in runs.items():
            assert all(lock[f"{s}@{c}"]["outs"] for s in PER_CONCEPT)
            tasks = httpx.post(
                f"{url}/task_runs/filter", json={"task_runs": {"flow_run_id": {"any_": [run["id"]]}}}, timeout=30
            ).json()
            names = {t["name"] for t in tasks}
            assert names == {"define concept " + c, "shared stages"} | {f"dvc repro -s {s}@{c}" for s in PER_CONCEPT}
            arts = httpx.post(
                f"{url}/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [run["id"]]}}}, timeout=30
            ).json()
            md = next(a["data"] for a in arts if a["type"] == "markdown")
            shipped = json.loads((repo / f"reports/evaluate/{c}.json").read_text())
            assert f"**{shipped['student']['lpips']['mean']:.3f}**" in md and "data:image/jpeg;base64," in md
            assert f"models/onnx/{c}/model.onnx" in md
    finally:
        (repo / "params.yaml").write_bytes(original)
        shutil.rmtree(repo / "my_edits", ignore_errors=True)


@pytest.mark.slow
def test_all_concepts_fan_out_on_a_local_dask_cluster(repo, prefect_server):
    """`e2gan flow --workers 2`: the concept chains run on a Dask cluster of two processes; only the new
    concept's stages (and the report) run, the up-to-date chains are checked on the other worker and left
    alone."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from pipeline.orchestrate.flows import with_runner

    url, _, _ = prefect_server
    new = {"amber": "sepia"}
    original = _edit_params(
        repo,
        lambda p: p["concepts"].update(
            {c: {"prompt": f"apply the {op} look", "teacher": {"kind": "filters", "op": op}} for c, op in new.items()}
        ),
    )
    try:
        with temporary_settings({PREFECT_API_URL: url}):
            flow = with_runner(workers=2)
            assert type(flow.task_runner).__name__ == "DaskTaskRunner"
            out = flow(str(repo))
        for c in new:
            assert sorted(out[c]) == sorted(f"{s}@{c}" for s in PER_CONCEPT), out
        assert out["sepia"] == [] and out["ink"] == [] and out["shared"] == [] and out["report"] == ["report"]
        assert _stale(repo) == set()
    finally:
        (repo / "params.yaml").write_text(original)


@pytest.mark.slow
def test_ci_retrain_in_a_fresh_clone_runs_only_the_new_concept(repo, tmp_path):
    """`e2gan ci retrain` with a local-folder DVC remote: a fresh clone with a new concept pulls what that
    concept's stages need, runs exactly them (and the report), and pushes the results."""
    remote, clone = tmp_path / "remote", tmp_path / "clone"
    _run([sys.executable, "-m", "dvc", "remote", "add", "-d", "store", str(remote)], repo)
    _run([sys.executable, "-m", "dvc", "push", "-q"], repo)
    _run(["git", "add", "-A"], repo)
    _run(["git", "-c", "user.email=ci@e2gan", "-c", "user.name=ci", "commit", "-qm", "pipeline"], repo)
    _run(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    _edit_params(
        clone,
        lambda p: p["concepts"].__setitem__(
            "noir", {"prompt": "make it film noir", "teacher": {"kind": "filters", "op": "sepia"}}
        ),
    )
    summary = tmp_path / "summary.md"
    env = {
        **os.environ,
        "PYTHONPATH": str(clone),
        "GITHUB_STEP_SUMMARY": str(summary),
        "E2GAN_PROGRESS": "0",
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    res = subprocess.run(
        [sys.executable, "-m", "pipeline.orchestrate.cli", "ci", "retrain", "--baseline", "HEAD"],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    ran = json.loads(res.stdout.strip().splitlines()[-1])["ran"]
    assert set(ran) == {
        "expand_prompts@noir",
        "generate_pairs@noir",
        "finetune_lora@noir",
        "evaluate@noir",
        "export_onnx@noir",
        "export_mobile@noir",
        "report",
    }, ran
    assert not (clone / "data/base_pairs").exists()  # not needed by the new concept's stages: never pulled
    assert (clone / "models/base/generator.safetensors").is_file()  # needed: pulled
    text = summary.read_text()
    assert "Stages that ran" in text and "noir" in text and "params diff" in text


@pytest.mark.slow
def test_killed_run_resumes_and_a_code_change_never_reuses_its_checkpoint(repo):
    """A killed finetune_lora with nothing changed resumes to the uninterrupted result; after a change to the
    training code, the left-over checkpoint is not resumed: the stage retrains from scratch with the new code.
    Restoring the code restores the original weights."""
    stage, c = "finetune_lora", "sepia"
    _repro(repo, "-f", "-s", f"{stage}@{c}")  # the uninterrupted run, under the same load as the resumed one
    ref, ref_hash = _adapter(repo, c), _out_hash(repo, f"{stage}@{c}", f"models/lora/{c}")
    ref_tone = _tone(repo, c)
    _killed_run(repo, stage, c)
    out = _repro(repo, "-f", "-s", f"{stage}@{c}")
    assert "resuming from step 1" in out, out[-2000:]
    assert _same(_adapter(repo, c), ref) and not list((repo / "data/.work" / stage).glob(f"{c}-*"))
    # the output curve is stored in float32, where a resumed run can differ from the uninterrupted one in the last
    # bits (the LoRA factors' float16 hides that); both runs are the original code's, and dvc's run cache keeps both
    assert _same(_tone(repo, c), ref_tone, atol=1e-6)
    original_hashes = {ref_hash, _out_hash(repo, f"{stage}@{c}", f"models/lora/{c}")}

    code = repo / "pipeline/adapt/lora.py"
    original = code.read_text()
    _killed_run(repo, stage, c)  # an interrupted run's checkpoint (step 1), then the code changes
    code.write_text(
        original
        + "\n\n_models = finetune_models\n\n\ndef finetune_models(base, spec, cfg, *args):  # a 3x larger learning rate\n"
        + "    return _models(base, spec, cfg.model_copy(update={'lr_g': cfg.lr_g * 3}), *args)\n"
    )
    try:
        assert f"{stage}@{c}" in _stale(repo)
        out = _repro(repo, "-s", f"{stage}@{c}")
        assert "resuming" not in out and "Running stage" in out, out[-2000:]
        assert not _same(_adapter(repo, c), ref)
    finally:
        code.write_text(original)
        _run([sys.executable, "-m", "dvc", "repro", "-s", f"{stage}@{c}"], repo)
    # the original code: the original weights, and the very bytes of one of its runs (dvc.lock's hash)
    assert _same(_adapter(repo, c), ref) and _same(_tone(repo, c), ref_tone, atol=1e-6)
    assert _out_hash(repo, f"{stage}@{c}", f"models/lora/{c}") in original_hashes
    # downstream of the adapter only: the reference run above retrained it (the module fixture's adapter, made
    # under strace, can differ in the last bits), and export/report read the training metrics' timings
    assert _stale(repo) <= {f"evaluate@{c}", f"export_onnx@{c}", f"export_mobile@{c}", "report"}  # (the last test)
