"""Val-only probes of the adapter's settings on one concept: the shipped allocation (one rank on every adaptable
layer) with another rank, learning rate, LoRA+ ratio, lora_alpha scale or step count, trained like the concept
benchmark's adapter (same scale, subset and seed) and scored on the concept's val photos every `eval_every`
steps. Nothing here reads test: it is for choosing, and the concept benchmark reports.

    python -m bench.adapter_probe --concept winter --rank 16          # does rank limit the adapter here?
    python -m bench.adapter_probe --concept winter --lr 0.005 --steps 300

Each probe is appended to bench/results/adapter_probe.json (with the settings, the val curve and the commit).
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

from bench.common import RESULTS, train_curve
from bench.concept_bench import SCALES, build, concept_data, job_config
from pipeline.adapt.lora import adaptable_layers, trainable_parameters
from pipeline.adapt.ranks import spec_for
from pipeline.config import load_params
from pipeline.core.io import atomic_write_json

OUT = RESULTS / "adapter_probe.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concept", default="winter")
    ap.add_argument("--rank", type=int, default=4)
    ap.add_argument("--lr", type=float, default=None, help="lr_g (default: finetune_lora.train.lr_g)")
    ap.add_argument("--loraplus", type=float, default=None, help="default: finetune_lora.loraplus_ratio")
    ap.add_argument("--alpha-scale", type=float, default=None, help="default: search_ranks.alpha_scale")
    ap.add_argument("--steps", type=int, default=None, help="default: finetune_lora.train.steps")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    params = load_params()
    f, s = params.finetune_lora, params.search_ranks
    f = f.model_copy(update={"loraplus_ratio": args.loraplus if args.loraplus is not None else f.loraplus_ratio})
    s = s.model_copy(update={"alpha_scale": args.alpha_scale if args.alpha_scale is not None else s.alpha_scale})
    params = params.model_copy(update={"finetune_lora": f, "search_ranks": s})
    scale = SCALES["default"]
    cb = concept_data(args.concept, params, scale["val_limit"])
    job = job_config(cb, "adapter", args.seed, None, scale, params)
    spec = spec_for({n: args.rank for n in adaptable_layers(cb.base)}, s)
    cfg = job["cfg"].model_copy(update={"lr_g": args.lr or job["cfg"].lr_g})
    steps = args.steps or job["steps"]
    G, _ = build("adapter", cb, args.seed, spec)
    curve = train_curve(
        G,
        cb.pairs.subset(job["subset"]),
        cfg,
        steps,
        scale["eval_every"],
        lambda m: {"lpips_val": cb.lpips(m, "val")},
        f.loraplus_ratio,
    )
    probes = json.loads(args.out.read_text())["probes"] if args.out.is_file() else []
    probes.append(
        {
            "concept": args.concept,
            "seed": args.seed,
            "rank": args.rank,
            "lr_g": cfg.lr_g,
            "loraplus_ratio": f.loraplus_ratio,
            "alpha_scale": s.alpha_scale,
            "steps": steps,
            "trainable_params": trainable_parameters(G),
            "split": "val",
            "best_lpips_val": min(c["lpips_val"] for c in curve),
            "curve": curve,
            "commit": subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent
            ).stdout.strip(),
        }
    )
    atomic_write_json(args.out, {"split": "val", "probes": probes})
    print(json.dumps(probes[-1], indent=1))


if __name__ == "__main__":
    main()
