"""The package's folders are its layers: every import in pipeline/ points down the house, never up."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

# lower index = lower layer; a module may import its own layer and those below it
LAYERS = ["core", "data", "model", "adapt", "evaluate", "deploy", "config", "orchestrate"]
PEERS = {("evaluate", "deploy"), ("deploy", "evaluate")}  # side by side: neither imports the other


def _layer(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "pipeline" or len(parts) < 2:
        return None
    return parts[1] if parts[1] in LAYERS else None


def _imports(path: Path) -> list[str]:
    """Every module a file imports, at the top or inside functions."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append(node.module)
            # `from pipeline.deploy import mobile` imports a submodule (names that are not modules lead nowhere)
            out += [
                f"{node.module}.{a.name}" for a in node.names if node.module.split(".")[0] in ("pipeline", "stages")
            ]
    return out


FILES = sorted((ROOT / "pipeline").rglob("*.py"))


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(ROOT)) for p in FILES])
def test_imports_only_point_down(path):
    rel = path.relative_to(ROOT / "pipeline")
    own = "config" if rel.name == "config.py" and len(rel.parts) == 1 else rel.parts[0]
    if own not in LAYERS:
        return
    for module in _imports(path):
        layer = _layer(module)
        if layer is None or layer == own:
            continue
        assert (own, layer) not in PEERS, f"{rel} imports {module}: {own} and {layer} are peers"
        assert LAYERS.index(layer) < LAYERS.index(own), f"{rel} imports {module}, a layer above {own}"


def test_few_loose_modules_in_the_package():
    loose = sorted(p.name for p in (ROOT / "pipeline").glob("*.py"))
    assert loose == ["__init__.py", "config.py"]
    assert sorted(p.name for p in (ROOT / "pipeline").iterdir() if p.is_dir() and p.name != "__pycache__") == sorted(
        set(LAYERS) - {"config"}
    )


def test_nothing_refers_to_files_the_repo_does_not_have():
    """Docs and code name only files that exist here (no design notes kept elsewhere)."""
    gone = ("DESIGN.md", "PAPER.md", "OFFLINE_ASSETS.md", "photo_inventory.tsv")
    tracked = [
        p
        for d in ("pipeline", "stages", "bench", "tests", "docs", "experiments")
        for p in (ROOT / d).rglob("*")
        if p.suffix in (".py", ".md", ".yaml", ".json", ".js", ".html") and "node_modules" not in p.parts
    ]
    tracked += [ROOT / n for n in ("README.md", "dvc.yaml", "params.yaml", "Makefile", "pyproject.toml")]
    for p in tracked:
        if p == Path(__file__):
            continue
        text = p.read_text(errors="ignore")
        assert not [g for g in gone if g in text], p
