"""The paper's headline table and ablations on our data: every method trained on the same concept's pairs
with the same loop (pix2pix objective, same λs, same batch and resolution), scored against the teacher on
the same pairs: the best step is chosen on the concept's val photos, every figure is read on its test photos.

Methods (keys for --methods):
  pix2pix         pix2pix ResNet-9 from scratch, all pairs
  e2gan_scratch   the E²GAN generator from scratch (random init), all pairs
  full_ft         full fine-tune of the base, k-means half
  lora_all        LoRA rank 4 on every Conv2d/Linear of the base, k-means half
  uniform_low     LoRA on the crucial layers, uniform rank RowsConfig.uniform_low, k-means half
  uniform_high    the same at RowsConfig.uniform_high
  random_ranks    random ranks of the searched spec's size
  e2gan           E²GAN: the searched ranks (search_ranks' spec), k-means half   <- ours
  e2gan_all       the searched ranks, all pairs
  e2gan_random    the searched ranks, a random half
The last six are the rank search's comparison rows (pipeline.adapt.ranks.comparison_rows), trained longer here.

Columns: test LPIPS (at the final step, and at the step with the best val LPIPS), test KID, trainable params, stored bytes per concept (the real
safetensors file: the whole generator for scratch/full fine-tune, the peft adapter for LoRA), training
seconds (evaluation excluded) and training FLOPs (torch.utils.flop_counter on one step × steps).

    python -m bench.baselines --concepts winter               # default scale (~30 min per concept)
    python -m bench.baselines --concepts winter --methods pix2pix,e2gan
    python -m bench.baselines --scale paper ...               # 256² pairs (data.image_size: 256), longer runs

Writes bench/results/baselines.json and bench/results/baselines.md (after every concept).
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from bench.common import RESULTS, ConceptBench, train_curve
from pipeline.adapt.lora import (
    adaptable_layers,
    add_lora_spec,
    lora_spec,
    save_adapter,
    spec_ranks,
    trainable_parameters,
)
from pipeline.adapt.ranks import RowsConfig, comparison_rows, spec_for
from pipeline.config import load_params
from pipeline.core.io import atomic_write_json, atomic_write_text
from pipeline.model.nets.generator import E2GANGenerator
from pipeline.model.nets.pix2pix import ResnetGenerator
from pipeline.model.train import build_models, gan_step, lpips_loss

SCALES = {  # one scale for every method
    "default": {"scratch_steps": 300, "lora_steps": 0, "batch": 4, "eval_every": 25, "eval_limit": 48, "size": None},
    "smoke": {"scratch_steps": 4, "lora_steps": 4, "batch": 2, "eval_every": 2, "eval_limit": 8, "size": None},
    "paper": {"scratch_steps": 4000, "lora_steps": 1000, "batch": 16, "eval_every": 250, "eval_limit": 0, "size": 256},
}
METHODS = {
    # key: (label, model, data, steps, lr_g (None: finetune_lora's lr_g)); model "row": search_ranks' row `key`
    "pix2pix": ("pix2pix ResNet-9, from scratch", "resnet9", "all", "scratch", 2e-4),
    "e2gan_scratch": ("E²GAN generator, from scratch", "scratch", "all", "scratch", 2e-4),
    "full_ft": ("full fine-tune of the base", "full", "kmeans", "lora", 2e-4),
    "lora_all": ("LoRA r4 on all layers", "lora_all", "kmeans", "lora", None),
    "uniform_low": ("LoRA crucial layers, uniform low rank", "row", None, "lora", None),
    "uniform_high": ("LoRA crucial layers, uniform high rank", "row", None, "lora", None),
    "random_ranks": ("LoRA crucial layers, random ranks", "row", None, "lora", None),
    "e2gan": ("E²GAN: searched ranks, k-means half", "row", None, "lora", None),
    "e2gan_all": ("searched ranks, all pairs", "row", None, "lora", None),
    "e2gan_random": ("searched ranks, random half", "row", None, "lora", None),
}


def step_flops(G, data, cfg) -> int:
    """FLOPs of one training step (D + G forward and backward, the LPIPS loss included), counted by torch
    on copies."""
    from torch.utils.flop_counter import FlopCounterMode

    m = build_models(copy.deepcopy(G), cfg)
    x, y, text, mask = data.batch(0, cfg.batch_size, cfg.seed, cfg.flip)
    perceptual = lpips_loss() if cfg.lambda_lpips > 0 else None
    with FlopCounterMode(display=False) as counter:
        gan_step(m, x, y, text, mask, cfg, perceptual)
    return int(counter.get_total_flops())


def stored_bytes(G, adapter: bool) -> int:
    """The bytes a concept costs on disk: the peft adapter folder, or the whole generator as safetensors."""
    with tempfile.TemporaryDirectory() as tmp:
        if adapter:
            return save_adapter(G, Path(tmp))
        path = Path(tmp) / "g.safetensors"
        save_file({k: v.contiguous() for k, v in G.state_dict().items()}, str(path))
        return path.stat().st_size


def build(key: str, model: str, base, spec: dict, params) -> tuple[torch.nn.Module, bool, str | None]:
    """(the model to train, whether it is a LoRA adapter, its data subset when the method fixes one)"""
    if model == "resnet9":
        return ResnetGenerator(ngf=64), False, None
    if model == "scratch":
        return E2GANGenerator(base.cfg), False, None
    if model == "full":
        return copy.deepcopy(base).requires_grad_(True), False, None
    s = params.search_ranks
    if model == "lora_all":
        return (
            add_lora_spec(copy.deepcopy(base), lora_spec({n: 4 for n in adaptable_layers(base)}, s.alpha_scale)),
            True,
            None,
        )
    modules = dict(base.named_modules())
    crucial = {n: modules[n] for n in spec["target_modules"]}
    rows = comparison_rows(crucial, spec_ranks(spec), RowsConfig(), s.ranks, params.finetune_lora.subset)
    row = {r.key: r for r in rows}[key]
    return add_lora_spec(copy.deepcopy(base), spec_for(row.ranks, s)), True, row.subset


def run_concept(c: str, methods: list[str], scale: dict, params) -> dict:
    fcfg = params.finetune_lora.train
    cb = ConceptBench.load(c, scale["eval_limit"], params)
    if scale["size"] and cb.meta.get("image_size") != scale["size"]:
        raise SystemExit(
            f"this scale needs the pipeline at {scale['size']}² (data.image_size: {scale['size']}; "
            f"the base was trained at {cb.meta.get('image_size')}²): set it and run `dvc repro` first"
        )
    subsets = {kind: cb.subset(kind) for kind in ("all", "kmeans", "random")}
    rows = []
    lora_steps = scale["lora_steps"] or fcfg.steps
    for key in methods:
        label, model, data_kind, steps_kind, lr = METHODS[key]
        steps = scale["scratch_steps"] if steps_kind == "scratch" else lora_steps
        torch.manual_seed(fcfg.seed)
        G, is_adapter, row_subset = build(key, model, cb.base, cb.spec, params)
        data_kind = data_kind or row_subset
        print(f"[{c}] {label}: {steps} steps, {len(subsets[data_kind])} pairs", flush=True)
        cfg = fcfg.model_copy(update={"batch_size": scale["batch"], "ema": 0.0, **({"lr_g": lr} if lr else {})})
        data = cb.pairs.subset(subsets[data_kind])
        flops = step_flops(G, data, cfg)
        curve = train_curve(G, data, cfg, steps, scale["eval_every"], cb.scores)
        best = min(curve, key=lambda r: r["lpips_val"])  # chosen on val, reported on test
        rows.append(
            {
                "key": key,
                "method": label,
                "pairs": len(subsets[data_kind]),
                "steps": steps,
                "lpips_final": curve[-1]["lpips_test"],
                "lpips_best": best["lpips_test"],
                "steps_to_best": best["step"],
                "seconds_to_best": best["train_seconds"],
                "kid": cb.kid(G),
                "trainable_params": trainable_parameters(G),
                "stored_bytes": stored_bytes(G, is_adapter),
                "train_seconds": curve[-1]["train_seconds"],
                "train_flops": flops * steps,
                "curve": curve,
            }
        )
    return {
        "concept": c,
        "val_pairs": len(cb.val.inputs),
        "test_pairs": len(cb.test.inputs),
        "test_photos": len(set(cb.test.photos)),
        "train_pairs": len(cb.pairs.inputs),
        "lpips_identity": cb.lpips_identity(),
        "lpips_base": cb.lpips(cb.base, "test"),
        "kid_identity": cb.kid(),
        "rows": rows,
        "ratios": ratios(rows),
    }


def ratios(rows: list[dict]) -> dict:
    """The paper's headline ratios, E²GAN against pix2pix from scratch, from one run's rows."""
    by = {r["key"]: r for r in rows}
    if not {"pix2pix", "e2gan"} <= set(by):
        return {}
    p, e = by["pix2pix"], by["e2gan"]
    reach = next((r for r in e["curve"] if r["lpips_test"] <= p["lpips_best"]), None)  # E²GAN at pix2pix's best
    cross = next((r for r in p["curve"] if r["lpips_test"] <= e["lpips_final"]), None)  # pix2pix at E²GAN's final
    return {
        "time_vs_pix2pix_to_best": e["train_seconds"] / p["seconds_to_best"],
        "time_to_pix2pix_best": reach["train_seconds"] / p["seconds_to_best"] if reach else None,
        "time_to_e2gan_final_quality": e["train_seconds"] / cross["train_seconds"] if cross else None,
        "flops_vs_pix2pix_to_best": e["train_flops"] / (p["train_flops"] * p["steps_to_best"] / p["steps"]),
        "stored_bytes": e["stored_bytes"] / p["stored_bytes"],
        "lpips_e2gan_minus_pix2pix_best": e["lpips_final"] - p["lpips_best"],
        "kid_e2gan_minus_pix2pix": e["kid"] - p["kid"],
    }


def markdown(result: dict) -> str:
    out = []
    for r in result["concepts"]:
        out += [
            f"### {r['concept']} ({r['train_pairs']} training pairs, {r['val_pairs']} val, {r['test_pairs']} test; "
            f"LPIPS base {r['lpips_base']:.3f}, identity {r['lpips_identity']:.3f}; KID identity "
            f"{r['kid_identity']:.4f})",
            "",
            "| method | pairs | steps | test LPIPS final | test LPIPS at best val step | test KID | trainable params | "
            "stored bytes | train s | train TFLOPs |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for x in r["rows"]:
            out.append(
                f"| {x['method']} | {x['pairs']} | {x['steps']} | {x['lpips_final']:.4f} | {x['lpips_best']:.4f} | "
                f"{x['kid']:.4f} | {x['trainable_params']:,} | {x['stored_bytes']:,} | {x['train_seconds']:.0f} | "
                f"{x['train_flops'] / 1e12:.2f} |"
            )
        q = r.get("ratios") or {}
        if q:
            reach = q["time_to_pix2pix_best"]
            reached = f"reached that LPIPS at {reach:.3f}×" if reach else "did not reach that LPIPS"
            line = (
                f"E²GAN vs pix2pix from scratch: training time {q['time_vs_pix2pix_to_best']:.3f}× pix2pix's "
                f"time to its best LPIPS ({reached}); {q['flops_vs_pix2pix_to_best']:.3f}× its FLOPs; "
                f"{q['stored_bytes']:.4f}× its stored bytes; LPIPS {q['lpips_e2gan_minus_pix2pix_best']:+.4f} "
                f"vs its best; KID {q['kid_e2gan_minus_pix2pix']:+.4f}."
            )
            out += ["", line]
        out.append("")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concepts", default="winter", help="Comma-separated concepts (with pairs from `make run`).")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"Comma-separated, from: {', '.join(METHODS)}")
    ap.add_argument("--scale", choices=sorted(SCALES), default="default")
    ap.add_argument("--out", type=Path, default=RESULTS / "baselines.json")
    args = ap.parse_args()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    params, scale = load_params(), SCALES[args.scale]
    t0 = time.perf_counter()
    result = {
        "scale": args.scale,
        "settings": scale,
        "splits": {"best_step": "val", "figures": "test"},
        "resolution": params.data.image_size,
        "threads": torch.get_num_threads(),
        "lambda_l1": params.finetune_lora.train.lambda_l1,
        "lambda_gan": params.finetune_lora.train.lambda_gan,
        "lambda_lpips": params.finetune_lora.train.lambda_lpips,
        "concepts": [],
    }
    for c in [c.strip() for c in args.concepts.split(",") if c.strip()]:
        result["concepts"].append(run_concept(c, methods, scale, params))
        result["wall_seconds"] = round(time.perf_counter() - t0, 1)
        atomic_write_json(args.out, result)  # after every concept: a long run keeps what it has
        atomic_write_text(args.out.with_suffix(".md"), markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
