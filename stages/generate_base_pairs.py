"""DVC stage generate_base_pairs: pairs for the base and calibration concepts (one folder each) + grids."""

from __future__ import annotations

import json

from pipeline.core.io import atomic_write_json
from pipeline.data.pairs import generate_base_pairs, write_grid
from pipeline.orchestrate.dvc import code_hash

PATHS = ("selection", "sources", "out", "metrics", "grids", "work")


def run(params, paths) -> None:
    sel = json.loads(paths.selection.read_text())
    summaries = generate_base_pairs(
        sel,
        paths.sources,
        params.generate_pairs,
        params.expand_prompts,
        paths.out,
        paths.work,
        code_hash("generate_base_pairs"),
    )
    for op in summaries:
        write_grid(paths.out / op, paths.grids / f"{op}.png")
    atomic_write_json(paths.metrics, summaries)
