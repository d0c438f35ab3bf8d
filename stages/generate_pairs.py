"""DVC stage generate_pairs@C: source crops + the concept's teacher -> quality-filtered pairs, metrics, a grid
(a `pairs` concept: its own pairs, split by photo, cropped and filtered the same way)."""

from __future__ import annotations

import json

from pipeline.core.io import atomic_write_json
from pipeline.data.pairs import generate_pairs, write_grid
from pipeline.data.teachers import build_teacher
from pipeline.orchestrate.dvc import code_hash

PATHS = ("sources", "prompts", "out", "metrics", "grid", "work")


def run(params, paths, concept: str) -> None:
    cfg = params.concept(concept)
    prompts = json.loads((paths.prompts / "prompts.json").read_text())
    if cfg.teacher.kind == "pairs":  # pairs made elsewhere: split, cropped and filtered like the teacher's
        from pipeline.data.imported import import_pairs

        summary = import_pairs(
            concept,
            cfg,
            params.generate_pairs,
            params.data,
            prompts,
            paths.out,
            paths.work,
            code_hash("generate_pairs"),
        )
        write_grid(paths.out, paths.grid)
        atomic_write_json(paths.metrics, summary)
        return
    summary = generate_pairs(
        concept,
        cfg,
        params.generate_pairs,
        build_teacher(cfg.teacher),
        paths.sources,
        prompts,
        paths.out,
        paths.work,
        code_hash("generate_pairs"),
    )
    write_grid(paths.out, paths.grid)
    atomic_write_json(paths.metrics, summary)
