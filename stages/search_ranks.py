"""DVC stage search_ranks: per-layer LoRA ranks for the crucial layers and the allocation that ships
(search_ranks.allocation) -> the peft specs (target_modules, r, lora_alpha, rank_pattern, alpha_pattern):
lora.json (shipped) and searched.json (the greedy one) + the search's table and a plot. Spectra only: the paper's
comparison rows are `python -m bench.rank_rows`."""

from __future__ import annotations

import json

from pipeline.adapt.ranks import plot_ranks, search_ranks
from pipeline.core.errors import E2GANError
from pipeline.core.io import atomic_dir, atomic_write_json
from pipeline.model.checkpoint import load_generator

PATHS = ("base", "analysis", "out", "reports")


def run(params, paths) -> None:
    from safetensors.torch import load_file

    base, _ = load_generator(paths.base)
    if not (paths.analysis / "crucial.json").is_file():
        raise E2GANError(f"{paths.analysis}/crucial.json not found; run 'dvc repro analyze_layers' first")
    crucial = json.loads((paths.analysis / "crucial.json").read_text())
    deltas = load_file(str(paths.analysis / "deltas.safetensors"))
    specs, report = search_ranks(base, crucial["crucial_layers"], deltas, crucial["calibration"], params.search_ranks)
    with atomic_dir(paths.out) as tmp:
        atomic_write_json(tmp / "lora.json", specs["shipped"])  # what finetune_lora trains
        atomic_write_json(tmp / "searched.json", specs["searched"])  # the greedy allocation, for comparison
    atomic_write_json(paths.reports / "table.json", report)
    plot_ranks(report, paths.reports / "ranks.png")
