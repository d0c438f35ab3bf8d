"""Per-concept training cost: E²GAN (LoRA on the frozen base, reduced data) vs pix2pix ResNet-9 from scratch.

Both train on the same concept's pairs at the same resolution with the same loop (pix2pix objective,
same λs), and are scored on the same held-out pairs every `--eval-every` steps (evaluation time is not
counted as training time). Reported: pix2pix's best held-out LPIPS and the training seconds it took to
get there; the seconds E²GAN needed to reach that LPIPS (if it did) and at the end of its run; final
LPIPS and KID vs the teacher for both; trainable and stored parameters.

Run (after `make run`): python -m bench.finetune_vs_scratch --concept watercolor
    -> bench/results/finetune_vs_scratch.json
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.checkpoint import load_generator
from pipeline.config import load_params
from pipeline.importance import load_concepts
from pipeline.infer import concept_condition, heldout_pairs, run_generator
from pipeline.io import atomic_write_json
from pipeline.lora import add_lora_spec, trainable_parameters
from pipeline.metrics import inception_features, kid_from_features, lpips_distance
from pipeline.nets.pix2pix import ResnetGenerator
from pipeline.subset import choose_subset
from pipeline.train import build_models, gan_step, lpips_loss, update_ema


def train_with_evals(G, data, cfg, steps: int, eval_every: int, evaluate) -> list[dict]:
    """The shared gan_step in a plain loop, with held-out evaluations outside the timed part."""
    m = build_models(G, cfg)
    perceptual = lpips_loss()
    curve, trained = [], 0.0
    for step in range(steps):
        G.train()
        t0 = time.perf_counter()
        x, y, text, mask = data.batch(step, cfg.batch_size, cfg.seed, cfg.flip)
        gan_step(m, x, y, text, mask, cfg, perceptual)
        if m.ema is not None:
            update_ema(m.ema, G, cfg.ema)
        trained += time.perf_counter() - t0
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            curve.append({"step": step + 1, "train_seconds": round(trained, 2), "lpips": evaluate(G)})
            print(f"  step {step + 1}: lpips {curve[-1]['lpips']:.4f} after {trained:.0f} s", flush=True)
    return curve


def p_curve_sorted(result: dict) -> list[dict]:
    return sorted(result["pix2pix"]["curve"], key=lambda r: r["step"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concept", default="watercolor")
    ap.add_argument("--scratch-steps", type=int, default=300)
    ap.add_argument("--lora-steps", type=int, default=0, help="default: finetune_lora.steps")
    ap.add_argument("--batch", type=int, default=0, help="default: finetune_lora.batch_size (both methods)")
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--eval-limit", type=int, default=48)
    ap.add_argument("--out", type=Path, default=Path("bench/results/finetune_vs_scratch.json"))
    args = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    params = load_params()
    c = args.concept
    fcfg = params.finetune_lora
    batch = args.batch or fcfg.batch_size
    base, meta = load_generator(Path("models/base"))
    concept = load_concepts({c: Path("data/pairs") / c}, meta["text_encoder"],
                            {c: Path("data/prompts") / c / "prompts.json"})[c]
    spec = json.loads(Path("models/ranks/lora.json").read_text())
    inputs, teacher = heldout_pairs(concept.folder, args.eval_limit)
    tokens, mask = concept_condition(concept.prompts, meta["text_encoder"])
    teacher_feats = inception_features(teacher)

    def evaluate(G) -> float:
        return float(np.mean(lpips_distance(run_generator(G, inputs, tokens, mask), teacher)))

    def kid(G) -> float:
        return kid_from_features(inception_features(run_generator(G, inputs, tokens, mask)), teacher_feats)

    result: dict = {"concept": c, "resolution": params.data.image_size, "heldout_pairs": len(inputs),
                    "train_pairs": len(concept.pairs.inputs), "batch": batch, "threads": torch.get_num_threads()}
    # 1. pix2pix ResNet-9 from scratch on every training pair (pix2pix's usual lr 2e-4)
    print(f"pix2pix ResNet-9 from scratch, {args.scratch_steps} steps")
    torch.manual_seed(fcfg.seed)
    r9 = ResnetGenerator(ngf=64)
    scfg = fcfg.model_copy(update={"batch_size": batch, "lr_g": 2e-4, "ema": 0.0})
    curve = train_with_evals(r9, concept.pairs, scfg, args.scratch_steps, args.eval_every, evaluate)
    best = min(curve, key=lambda r: r["lpips"])
    result["pix2pix"] = {"curve": curve, "best_lpips": best["lpips"], "seconds_to_best": best["train_seconds"],
                         "steps_to_best": best["step"], "kid": kid(r9), "trainable_params": trainable_parameters(r9),
                         "stored_bytes_fp32": 4 * sum(p.numel() for p in r9.parameters())}
    # 2. E²GAN: LoRA with the searched ranks on the frozen base, the clustered subset
    steps = args.lora_steps or fcfg.steps
    print(f"E2GAN LoRA ({fcfg.subset} subset {fcfg.subset_fraction}), {steps} steps")
    kept = choose_subset(concept.pairs.inputs, fcfg.subset, fcfg.subset_fraction, fcfg.subset_features, fcfg.seed)
    torch.manual_seed(fcfg.seed)
    model = add_lora_spec(copy.deepcopy(base), spec)
    lcfg = fcfg.model_copy(update={"batch_size": batch})
    lcurve = train_with_evals(model, concept.pairs.subset(kept), lcfg, steps, args.eval_every, evaluate)
    reach = next((r for r in lcurve if r["lpips"] <= best["lpips"]), None)
    result["e2gan"] = {"curve": lcurve, "final_lpips": lcurve[-1]["lpips"], "seconds": lcurve[-1]["train_seconds"],
                       "seconds_to_pix2pix_best": reach["train_seconds"] if reach else None,
                       "kid": kid(model), "pairs_used": len(kept), "trainable_params": trainable_parameters(model),
                       "stored_bytes_fp32": 4 * trainable_parameters(model)}
    e, p = result["e2gan"], result["pix2pix"]
    cross = next((r for r in p_curve_sorted(result) if r["lpips"] <= e["final_lpips"]), None)
    result["pix2pix"]["seconds_to_e2gan_final"] = cross["train_seconds"] if cross else None
    result["ratios"] = {
        "time_to_e2gan_final_quality": (e["seconds"] / cross["train_seconds"]) if cross else None,
        "time_to_pix2pix_best": (e["seconds_to_pix2pix_best"] / p["seconds_to_best"]) if reach else None,
        "full_run_time_vs_pix2pix_to_best": e["seconds"] / p["seconds_to_best"],
        "lpips_e2gan_minus_pix2pix_best": e["final_lpips"] - p["best_lpips"],
        "kid_e2gan_minus_pix2pix": e["kid"] - p["kid"],
        "stored_bytes": e["stored_bytes_fp32"] / p["stored_bytes_fp32"],
    }
    atomic_write_json(args.out, result)
    print(json.dumps(result["ratios"], indent=1))


if __name__ == "__main__":
    main()
