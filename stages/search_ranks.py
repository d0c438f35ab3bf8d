"""DVC stage search_ranks: per-layer LoRA ranks for the crucial layers -> models/ranks/lora.json
(peft's target_modules, r, lora_alpha, rank_pattern, alpha_pattern) + reports/search_ranks/ (table.json, ranks.png)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipeline.checkpoint import load_generator
from pipeline.config import load_params
from pipeline.errors import E2GANError, exit_on_user_error
from pipeline.importance import load_concepts
from pipeline.io import atomic_dir, atomic_write_json, sha256_file
from pipeline.pairs import fingerprint
from pipeline.ranks import plot_ranks, search_ranks
from stages import setup


@exit_on_user_error
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--base", type=Path, default=Path("models/base"))
    ap.add_argument("--analysis", type=Path, default=Path("models/analysis"))
    ap.add_argument("--pairs", type=Path, default=Path("data/base_pairs"))
    ap.add_argument("--out", type=Path, default=Path("models/ranks"))
    ap.add_argument("--reports", type=Path, default=Path("reports/search_ranks"))
    ap.add_argument("--work", type=Path, default=Path("data/.work/search_ranks"))
    args = ap.parse_args()
    setup()
    from safetensors.torch import load_file

    params = load_params()
    base, meta = load_generator(args.base)
    if not (args.analysis / "crucial.json").is_file():
        raise E2GANError(f"{args.analysis}/crucial.json not found; run 'dvc repro analyze_layers' first")
    crucial = json.loads((args.analysis / "crucial.json").read_text())
    deltas = load_file(str(args.analysis / "deltas.safetensors"))
    calib = load_concepts({c: args.pairs / c for c in crucial["calibration"]}, meta["text_encoder"])
    key = fingerprint(params.search_ranks.model_dump(), params.finetune_lora.model_dump(), crucial,
                      sha256_file(args.base / "generator.safetensors"), sha256_file(args.analysis / "deltas.safetensors"))
    spec, report = search_ranks(base, crucial["crucial_layers"], deltas, calib, params.search_ranks,
                                params.finetune_lora, args.work / key)
    with atomic_dir(args.out) as tmp:
        atomic_write_json(tmp / "lora.json", spec)
    atomic_write_json(args.reports / "table.json", report)
    plot_ranks(report, args.reports / "ranks.png")


if __name__ == "__main__":
    main()
