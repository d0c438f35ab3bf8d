"""DVC stage analyze_layers: score the base generator's layer groups on the calibration concepts
-> models/analysis (crucial.json, deltas.safetensors) + reports/analyze_layers/ (table.json, importance.png)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipeline.checkpoint import load_generator
from pipeline.config import load_params
from pipeline.errors import exit_on_user_error
from pipeline.importance import analyze_layers, load_concepts, plot_importance
from pipeline.io import atomic_dir, atomic_write_json, sha256_file
from pipeline.pairs import fingerprint
from stages import setup


@exit_on_user_error
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--base", type=Path, default=Path("models/base"))
    ap.add_argument("--selection", type=Path, default=Path("reports/select_base.json"))
    ap.add_argument("--pairs", type=Path, default=Path("data/base_pairs"))
    ap.add_argument("--out", type=Path, default=Path("models/analysis"))
    ap.add_argument("--reports", type=Path, default=Path("reports/analyze_layers"))
    ap.add_argument("--work", type=Path, default=Path("data/.work/analyze_layers"))
    args = ap.parse_args()
    setup()
    from safetensors.torch import save_file

    params = load_params()
    base, meta = load_generator(args.base)
    calibration = json.loads(args.selection.read_text())["calibration"]
    calib = load_concepts({c: args.pairs / c for c in calibration}, meta["text_encoder"])
    key = fingerprint(params.analyze_layers.model_dump(), params.finetune_lora.model_dump(), calibration,
                      sha256_file(args.base / "generator.safetensors"))
    table, deltas = analyze_layers(base, calib, params.analyze_layers, params.finetune_lora, args.work / key)
    with atomic_dir(args.out) as tmp:
        save_file(deltas, str(tmp / "deltas.safetensors"))
        atomic_write_json(tmp / "crucial.json", {k: table[k] for k in ("crucial_groups", "crucial_layers", "calibration")})
    atomic_write_json(args.reports / "table.json", table)
    plot_importance(table, args.reports / "importance.png")


if __name__ == "__main__":
    main()
