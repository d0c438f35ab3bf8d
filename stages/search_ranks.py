"""DVC stage search_ranks: per-layer LoRA ranks for the crucial layers and the allocation that ships
(search_ranks.allocation) -> the peft specs (target_modules, r, lora_alpha, rank_pattern, alpha_pattern):
lora.json (shipped) and searched.json (the greedy one) + the comparison table and a plot."""

from __future__ import annotations

import json

from pipeline.adapt.ranks import plot_ranks, search_ranks
from pipeline.core.errors import E2GANError
from pipeline.core.io import atomic_dir, atomic_write_json, sha256_file, work_folder
from pipeline.data.dataset import load_concepts
from pipeline.model.checkpoint import load_generator
from pipeline.orchestrate.dvc import code_hash

PATHS = ("base", "analysis", "pairs", "out", "reports", "work")


def run(params, paths) -> None:
    from safetensors.torch import load_file

    base, meta = load_generator(paths.base)
    if not (paths.analysis / "crucial.json").is_file():
        raise E2GANError(f"{paths.analysis}/crucial.json not found; run 'dvc repro analyze_layers' first")
    crucial = json.loads((paths.analysis / "crucial.json").read_text())
    deltas = load_file(str(paths.analysis / "deltas.safetensors"))
    calib = load_concepts({c: paths.pairs / c for c in crucial["calibration"]}, meta["text_encoder"])
    key = (
        code_hash("search_ranks"),
        params.search_ranks.model_dump(),
        params.finetune_lora.model_dump(),
        crucial,
        sha256_file(paths.base / "generator.safetensors"),
        sha256_file(paths.analysis / "deltas.safetensors"),
    )
    with work_folder(paths.work, "ranks", *key) as work:
        specs, report = search_ranks(
            base, crucial["crucial_layers"], deltas, calib, params.search_ranks, params.finetune_lora, work
        )
        with atomic_dir(paths.out) as tmp:
            atomic_write_json(tmp / "lora.json", specs["shipped"])  # what finetune_lora trains
            atomic_write_json(tmp / "searched.json", specs["searched"])  # the greedy allocation, for comparison
        atomic_write_json(paths.reports / "table.json", report)
        plot_ranks(report, paths.reports / "ranks.png")
