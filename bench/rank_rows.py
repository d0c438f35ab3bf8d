"""The paper's check of the rank search, on the pipeline's calibration concepts: short LoRA fine-tunes with
search_ranks' greedy (searched) ranks against uniform-low, uniform-high and random ranks of the same size, the
searched ranks on a random subset and on all the data, and one rank on every adaptable layer (what ships). Every
row is scored on the calibration concepts' val photos (one seed, no interval: the concept benchmark,
bench/concept_bench.py, compares allocations on test with seeds and intervals).

    python -m bench.rank_rows                       # after `dvc repro search_ranks` (~4 min on 2 cores)
    python -m bench.rank_rows --steps 60 --eval-limit 64

Reads models/base, models/analysis, models/ranks and data/base_pairs where dvc.yaml puts them; resumable (a
killed run goes on at the next row); writes bench/results/rank_rows.json and bench/results/rank_rows.png.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.common import RESULTS, code_version
from pipeline.adapt.lora import spec_ranks
from pipeline.adapt.ranks import RowsConfig, compare_rows, plot_ranks
from pipeline.config import load_params
from pipeline.core.errors import E2GANError
from pipeline.core.io import atomic_write_json, sha256_file, work_folder
from pipeline.data.dataset import load_concepts
from pipeline.model.checkpoint import load_generator
from pipeline.orchestrate.dvc import stage_paths

OUT = RESULTS / "rank_rows.json"


def main(argv: list[str] | None = None) -> int:
    defaults = RowsConfig()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=defaults.steps, help="fine-tune steps per row and concept")
    ap.add_argument("--batch", type=int, default=defaults.batch)
    ap.add_argument("--uniform-low", type=int, default=defaults.uniform_low)
    ap.add_argument("--uniform-high", type=int, default=defaults.uniform_high)
    ap.add_argument("--eval-limit", type=int, default=defaults.eval_limit, help="val crops per calibration concept")
    ap.add_argument("--seed", type=int, default=defaults.seed)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    rows_cfg = RowsConfig(
        uniform_low=args.uniform_low,
        uniform_high=args.uniform_high,
        steps=args.steps,
        batch=args.batch,
        eval_limit=args.eval_limit,
        seed=args.seed,
    )
    params = load_params()
    paths = stage_paths("search_ranks")
    analysis, ranks_dir = paths["analysis"], paths["out"]
    for need in (analysis / "crucial.json", ranks_dir / "searched.json", paths["base"] / "generator.safetensors"):
        if not need.is_file():
            raise SystemExit(f"{need} not found: run `dvc repro search_ranks` first")
    crucial = json.loads((analysis / "crucial.json").read_text())
    searched = spec_ranks(json.loads((ranks_dir / "searched.json").read_text()))
    base, meta = load_generator(paths["base"])
    pairs = stage_paths("train_base")["pairs"]
    calib = load_concepts({c: pairs / c for c in crucial["calibration"]}, meta["text_encoder"])
    key = (
        rows_cfg.model_dump(),
        params.search_ranks.model_dump(),
        params.finetune_lora.model_dump(),
        searched,
        sha256_file(paths["base"] / "generator.safetensors"),
        [sha256_file(pairs / c / "metadata.jsonl") for c in crucial["calibration"]],
    )
    try:
        with work_folder(Path("data/.work/rank_rows"), "rows", *key) as work:
            result = compare_rows(
                base,
                crucial["crucial_layers"],
                searched,
                calib,
                params.search_ranks,
                rows_cfg,
                params.finetune_lora,
                work,
            )
    except E2GANError as e:
        raise SystemExit(str(e)) from None
    report = json.loads((paths["reports"] / "table.json").read_text())
    result.update(
        calibration=crucial["calibration"],
        searched_params=report["params"],
        budget_params=report["budget_params"],
        energy_kept=report["energy_kept"],
        commit=code_version(),
    )
    atomic_write_json(args.out, result)
    plot_ranks(report, args.out.with_suffix(".png"), result["rows"])
    for r in result["rows"]:
        print(
            f"{r['row']:28s} {r['params']:7d} params  val LPIPS {r['lpips']:.4f}  gain vs base {r['gain_vs_base']:+.4f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
