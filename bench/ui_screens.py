"""What a user sees, in headless Chromium at a 1280-px window: the HTML report (no element may be wider than the
window) and, through `e2gan ui`, the concept form and a concept run's result artifact (its figures and grid).

    python -m bench.ui_screens                      # after `make run`; needs `make demo-deps` and chromium
    python -m bench.ui_screens --concept winter     # the concept whose run page is shown

Starts `e2gan ui` on a free port with its own Prefect state in a temp folder, runs the concept deployment for an
up-to-date concept (its stages are a no-op; the run publishes its result artifact), screenshots the pages and
writes bench/results/ui_screens.json with bench/results/ui_{report,form,result}.png. Exits non-zero when the
report overflows the window, the artifact lacks the grid, or a page fails to load.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipeline.core.env import set_quiet_env
from pipeline.core.io import atomic_write_json
from pipeline.orchestrate.dvc import stage_paths

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
WIDTH = 1280


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _screens(pages: list[dict]) -> list[dict]:
    node = shutil.which("node")
    if node is None or not (ROOT / "demo/node_modules/playwright-core").is_dir():
        raise SystemExit("needs node and the demo's packages: run `make demo-deps`")
    res = subprocess.run(
        [node, str(ROOT / "demo/screens.mjs"), json.dumps({"pages": pages, "width": WIDTH})],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if res.returncode:
        raise SystemExit(f"screens.mjs failed: {res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _wait(fn, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            got = fn()
            if got:
                return got
        except Exception:  # noqa: BLE001 - the server is still starting
            pass
        time.sleep(1)
    raise SystemExit(f"timed out waiting for {what}")


def main() -> None:
    import httpx

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concept", default="winter")
    ap.add_argument("--out", type=Path, default=RESULTS / "ui_screens.json")
    args = ap.parse_args()
    set_quiet_env()
    html = stage_paths("report")["html"]
    if not html.is_file():
        raise SystemExit(f"{html} does not exist: run `make run` first")
    RESULTS.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "PREFECT_HOME": home}
        ui = subprocess.Popen(
            [sys.executable, "-m", "pipeline.orchestrate.cli", "ui", "--port", str(port), "--root", str(ROOT)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            dep = _wait(
                lambda: httpx.get(f"{api}/deployments/name/e2gan-concept/concept", timeout=5).json().get("id"),
                240,
                "the concept deployment",
            )

            def create():
                r = httpx.post(
                    f"{api}/deployments/{dep}/create_flow_run",
                    json={"parameters": {"concept": args.concept}},
                    timeout=30,
                )
                if r.status_code != 201:
                    print(f"create_flow_run: {r.status_code} {r.text[:300]}", file=sys.stderr)
                    return None
                return r.json()

            run = _wait(create, 120, "a flow run of the concept deployment")

            def finished():
                r = httpx.get(f"{api}/flow_runs/{run['id']}", timeout=10).json()
                return r if r["state_type"] in ("COMPLETED", "FAILED", "CRASHED") else None

            state = _wait(finished, 900, "the concept run")
            arts = httpx.post(
                f"{api}/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [run["id"]]}}}, timeout=30
            ).json()
            md = next((a for a in arts if a["type"] == "markdown"), None)
            base = api.removesuffix("/api")
            pages = [
                {"url": html.resolve().as_uri(), "out": str(RESULTS / "ui_report.png"), "fullPage": True},
                {
                    "url": f"{base}/deployments/deployment/{dep}/run",
                    "out": str(RESULTS / "ui_form.png"),
                    "waitFor": "filter_op",
                    "height": 1400,
                },
            ]
            if md:
                pages.append(
                    {
                        "url": f"{base}/artifacts/artifact/{md['id']}",
                        "out": str(RESULTS / "ui_result.png"),
                        "waitFor": "Student − identity",
                        "height": 1600,
                        "settle": 3000,
                    }
                )
            shots = _screens(pages)
        finally:
            os.killpg(ui.pid, signal.SIGTERM)
            try:
                ui.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(ui.pid, signal.SIGKILL)
    report, form = shots[0], shots[1]
    result = {
        "width": WIDTH,
        "concept": args.concept,
        "run_state": state["state_type"],
        "run_message": state["state"].get("message"),
        "artifact": {
            "present": md is not None,
            "has_grid": bool(md and "data:image/jpeg;base64," in md["data"]),
            "bytes": len(md["data"]) if md else 0,
        },
        "report": {k: report[k] for k in ("scrollWidth", "nWide", "wide", "failed")}
        | {"images_ok": all(i["ok"] for i in report["images"])},
        "form": {"fields_shown": form["found"], "failed": form["failed"]},
        "result_page": ({"grid_shown": shots[2]["found"], "images": shots[2]["images"]} if md else None),
        "screenshots": [str(Path(s["out"]).relative_to(ROOT)) for s in shots],
    }
    atomic_write_json(args.out, result)
    print(json.dumps(result, indent=1))
    ok = (
        state["state_type"] == "COMPLETED"
        and result["artifact"]["has_grid"]
        and report["nWide"] == 0
        and report["scrollWidth"] <= WIDTH
        and result["report"]["images_ok"]
        and form["found"]
        and (md is None or shots[2]["found"])
    )
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
