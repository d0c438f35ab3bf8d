"""Which part of the pretrained base keeps a new concept from training? Full fine-tunes of the base on one
concept with parts of it reset to a fresh model's initial weights, against the E²GAN generator from
scratch, all with the same loop, data (the k-means half), lr 2e-4, batch 4 and 150 steps.

Variants (--variants):
  base            the base as it is
  reset_out       the output conv zeroed (the model starts as the identity; every feature kept)
  reset_tb        the transformer block (self/cross-attention, the text path) fresh
  reset_decoder   every ResBlock, US, the upsampling convs and the output fresh (stem, DS, block kept)
  scratch         every weight fresh

    python -m bench.base_transfer --concept winter    -> bench/results/base_transfer.json (~10 min)
"""
from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch

from bench.common import ConceptBench, train_with_evals
from pipeline.config import load_params
from pipeline.io import atomic_write_json
from pipeline.nets.generator import E2GANGenerator

VARIANTS = {"base": (), "reset_out": ("out",), "reset_tb": ("tb",), "reset_decoder": ("res", "us", "up", "out"),
            "scratch": None}


def variant_model(base: E2GANGenerator, parts: tuple[str, ...] | None, seed: int) -> E2GANGenerator:
    torch.manual_seed(seed)
    fresh = E2GANGenerator(base.cfg)
    if parts is None:
        return fresh
    G = copy.deepcopy(base).requires_grad_(True)
    for name in parts:
        getattr(G, name).load_state_dict(getattr(fresh, name).state_dict())
    return G


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concept", default="winter")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--out", type=Path, default=Path("bench/results/base_transfer.json"))
    args = ap.parse_args()
    params = load_params()
    fcfg = params.finetune_lora
    cb = ConceptBench.load(args.concept, 48, params)
    kept = cb.subset("kmeans")
    data = cb.pairs.subset(kept)
    cfg = fcfg.model_copy(update={"batch_size": 4, "ema": 0.0, "lr_g": 2e-4})
    result = {"concept": cb.name, "steps": args.steps, "pairs": len(kept), "heldout_pairs": len(cb.inputs),
              "lpips_identity": cb.lpips_identity(), "variants": {}}
    for name in [v.strip() for v in args.variants.split(",") if v.strip()]:
        G = variant_model(cb.base, VARIANTS[name], fcfg.seed)
        start = cb.lpips(G)
        print(f"{name}: start {start:.4f}", flush=True)
        curve = train_with_evals(G, data, cfg, args.steps, 25, cb.lpips)
        result["variants"][name] = {"reset": list(VARIANTS[name]) if VARIANTS[name] is not None else "all",
                                    "lpips_start": start, "lpips_final": curve[-1]["lpips"],
                                    "lpips_best": min(r["lpips"] for r in curve), "curve": curve}
        atomic_write_json(args.out, result)
    print(json.dumps({k: (v["lpips_start"], v["lpips_final"], v["lpips_best"]) for k, v in result["variants"].items()},
                     indent=1))


if __name__ == "__main__":
    main()
