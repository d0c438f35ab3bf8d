"""Base-model recipes side by side: the same base concepts, pairs, seed and number of steps, one
setting changed per variant; held-out LPIPS per base concept (and the identity's), and how many base
concepts' teachers each output matches best under its own prompt (text conditioning).

    python -m bench.base_recipes                          # every variant, 120 steps (~3 min each on 2 cores)
    python -m bench.base_recipes --variants instance,film --steps 320

Writes bench/results/base_recipes.json after every variant.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bench.common import RESULTS
from pipeline.base import train_base
from pipeline.config import load_params
from pipeline.infer import conditioning_matrix, evaluate_concepts
from pipeline.io import atomic_write_json

VARIANTS = {  # name: (train_base overrides, base concepts (None = the selection))
    "instance": ({"norm": "instance"}, None),
    "instance_lr2e-3": ({"norm": "instance", "lr_g": 2e-3}, None),
    "instance_no_ema": ({"norm": "instance", "ema": 0.0}, None),
    "no_norm": ({"norm": "none"}, None),
    "no_norm_no_ema": ({"norm": "none", "ema": 0.0}, None),
    "batch_norm": ({"norm": "batch"}, None),
    "film": ({"norm": "film"}, None),
    "film_no_ema": ({"norm": "film", "ema": 0.0}, None),
    "film_skip": ({"norm": "film", "skip": True}, None),
    "instance_ink_only_no_ema": ({"norm": "instance", "ema": 0.0}, ["ink"]),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--eval-limit", type=int, default=48)
    ap.add_argument("--work", type=Path, default=Path("data/.work/base_recipes"))
    ap.add_argument("--out", type=Path, default=RESULTS / "base_recipes.json")
    args = ap.parse_args()
    params = load_params()
    enc = params.expand_prompts.text_encoder
    sel = json.loads(Path("reports/select_base.json").read_text())
    result = {"steps": args.steps, "batch": params.train_base.batch_size, "eval_limit": args.eval_limit,
              "base": sel["base"], "variants": {}}
    for name in [v.strip() for v in args.variants.split(",") if v.strip()]:
        if name not in VARIANTS:
            raise SystemExit(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}")
        over, only = VARIANTS[name]
        cfg = params.train_base.model_copy(update={**over, "steps": args.steps})
        folders = {op: Path("data/base_pairs") / op for op in (only or sel["base"])}
        print(f"{name}: {over} on {', '.join(folders)}, {args.steps} steps", flush=True)
        t0 = time.perf_counter()
        G, _ = train_base(folders, cfg, enc, args.work / f"{name}-{args.steps}")
        seconds = time.perf_counter() - t0
        q = evaluate_concepts(G, folders, enc, limit=args.eval_limit)
        cm = conditioning_matrix(G, folders, enc, limit=16) if len(folders) > 1 else {}
        result["variants"][name] = {
            "overrides": over, "concepts": list(folders), "train_seconds": round(seconds, 1),
            "lpips": {k: v["student"]["lpips"] for k, v in q.items()},
            "lpips_identity": {k: v["identity"]["lpips"] for k, v in q.items()},
            "diagonal_wins": cm.get("diagonal_wins")}
        print(json.dumps(result["variants"][name]), flush=True)
        atomic_write_json(args.out, result)


if __name__ == "__main__":
    main()
