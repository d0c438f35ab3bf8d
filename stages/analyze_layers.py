"""DVC stage analyze_layers: score the base generator's layer groups on the calibration concepts
-> the crucial layers and the short full fine-tunes' weight changes + the table and a plot."""

from __future__ import annotations

import json

from pipeline.adapt.layers import analyze_layers, plot_importance
from pipeline.core.io import atomic_dir, atomic_write_json, fingerprint, sha256_file
from pipeline.data.dataset import load_concepts
from pipeline.model.checkpoint import load_generator

PATHS = ("base", "selection", "pairs", "out", "reports", "work")


def run(params, paths) -> None:
    from safetensors.torch import save_file

    base, meta = load_generator(paths.base)
    calibration = json.loads(paths.selection.read_text())["calibration"]
    calib = load_concepts({c: paths.pairs / c for c in calibration}, meta["text_encoder"])
    key = fingerprint(
        params.analyze_layers.model_dump(),
        params.finetune_lora.model_dump(),
        calibration,
        sha256_file(paths.base / "generator.safetensors"),
    )
    table, deltas = analyze_layers(base, calib, params.analyze_layers, params.finetune_lora, paths.work / key)
    with atomic_dir(paths.out) as tmp:
        save_file(deltas, str(tmp / "deltas.safetensors"))
        atomic_write_json(
            tmp / "crucial.json", {k: table[k] for k in ("crucial_groups", "crucial_layers", "calibration")}
        )
    atomic_write_json(paths.reports / "table.json", table)
    plot_importance(table, paths.reports / "importance.png")
