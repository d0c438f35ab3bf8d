"""DVC stage analyze_layers: score the base generator's layer groups on the calibration concepts
-> the crucial layers and the short full fine-tunes' weight changes + the table and a plot."""

from __future__ import annotations

import json

from pipeline.adapt.layers import analyze_layers, plot_importance
from pipeline.core.io import atomic_dir, atomic_write_json, sha256_file, work_folder
from pipeline.data.dataset import load_concepts
from pipeline.model.checkpoint import load_generator
from pipeline.orchestrate.dvc import code_hash

PATHS = ("base", "selection", "pairs", "out", "reports", "work")


def run(params, paths) -> None:
    from safetensors.torch import save_file

    base, meta = load_generator(paths.base)
    calibration = json.loads(paths.selection.read_text())["calibration"]
    calib = load_concepts({c: paths.pairs / c for c in calibration}, meta["text_encoder"])
    key = (
        code_hash("analyze_layers"),
        params.analyze_layers.model_dump(),
        params.finetune_lora.model_dump(),
        calibration,
        sha256_file(paths.base / "generator.safetensors"),
    )
    with work_folder(paths.work, "layers", *key) as work:
        table, deltas = analyze_layers(base, calib, params.analyze_layers, params.finetune_lora, work)
        with atomic_dir(paths.out) as tmp:
            save_file(deltas, str(tmp / "deltas.safetensors"))
            atomic_write_json(
                tmp / "crucial.json", {k: table[k] for k in ("crucial_groups", "crucial_layers", "calibration")}
            )
        atomic_write_json(paths.reports / "table.json", table)
        plot_importance(table, paths.reports / "importance.png")
