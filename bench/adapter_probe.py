"""Val-only probes of the adapter's settings on one concept: the shipped allocation (one rank on every adaptable
layer) with another rank, learning rate, LoRA+ ratio, lora_alpha scale or step count, trained like the concept
benchmark's adapter (same scale, subset and seed) and scored on the concept's val photos every `eval_every`
steps. Nothing here reads test: it is for choosing, and the concept benchmark reports.

    python -m bench.adapter_probe --concept winter --rank 16          # does rank limit the adapter here?
    python -m bench.adapter_probe --concept winter --lr 0.005 --steps 300
    python -m bench.adapter_probe --concept winter --train-as full_rank --ranks 1,2,4,8   # truncation ranks
    python -m bench.adapter_probe --concept cartoon --train-as full_rank --ranks 4 --kid --steps 900 --eval-every 60
    python -m bench.adapter_probe --concept winter --train-as full_rank --ranks 4 --precision bf16

With `--train-as full_rank` (finetune_lora's default) one full-rank fine-tune of the base is scored at every
evaluation both as it is and through the truncated adapter at each of `--ranks` (one rank on every adaptable
layer), so the rank the adapter ships at is chosen on val.

Each probe is appended to bench/results/adapter_probe.json (with the settings, the val curve and the commit).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from bench.common import RESULTS, code_version, train_curve
from bench.concept_bench import SCALES, build, concept_data, job_config
from pipeline.adapt.lora import adaptable_layers, trainable_parameters
from pipeline.adapt.ranks import spec_for
from pipeline.config import load_params
from pipeline.core.io import atomic_write_json
from pipeline.data.dataset import patch_pairs

OUT = RESULTS / "adapter_probe.json"


def full_rank_curve(cb, args, params, job: dict, steps: int, scale: dict) -> tuple[list[dict], dict]:
    """One full-rank fine-tune (finetune_lora's full_rank settings), scored on val as it is (`lpips_val_full`) and
    through the truncated adapter at each rank of --ranks (`lpips_val_r<r>`). Returns (curve, params per rank)."""
    from pipeline.adapt.lora import scaled_head_start, truncated_adapter
    from pipeline.model.nets.generator import pooled_text
    from pipeline.model.nets.tone import with_tone

    ranks = [int(r) for r in args.ranks.split(",")]
    specs = {r: spec_for({n: r for n in adaptable_layers(cb.base)}, params.search_ranks) for r in ranks}
    cond = pooled_text(cb.tokens[:1], None if cb.mask is None else cb.mask[:1])[0]
    lr = args.lr or params.finetune_lora.full_rank_lr_g
    cfg = job["cfg"].model_copy(update={"lr_g": lr, **overrides(args, job["cfg"])})

    def scores(m) -> dict:
        out = {"lpips_val_full": cb.lpips(m, "val")}
        for r, spec in specs.items():
            adapter = truncated_adapter(cb.base, m, spec, cond).eval()
            out[f"lpips_val_r{r}"] = cb.lpips(adapter, "val")
            if args.kid:
                out[f"kid_val_r{r}"] = cb.kid(adapter, "val")
        return out

    G = scaled_head_start(cb.base, args.head_scale).requires_grad_(True)
    if args.tone:
        G = with_tone(G, args.tone, args.tone_window)
    subset = list(range(len(cb.pairs.inputs))) if args.all_pairs else job["subset"]
    data = patch_pairs(cb.pairs.subset(subset), args.patch)
    curve = train_curve(
        G,
        data,
        cfg,
        steps,
        scale["eval_every"],
        scores,
        d_warmup=args.d_warmup,
        tone_lr=args.tone_lr if args.tone else None,
    )
    trainable = {f"r{r}": trainable_parameters(truncated_adapter(cb.base, G, spec, cond)) for r, spec in specs.items()}
    return curve, trainable


def overrides(args, cfg) -> dict:
    """The training settings a probe may change besides the rate: --lr-decay, --precision and the loss weights of
    --lambda-gan / --lambda-lpips / --lambda-l1 (the job's own where not given)."""
    return {
        "lr_decay": cfg.lr_decay if args.lr_decay is None else args.lr_decay,
        "precision": cfg.precision if args.precision is None else args.precision,
        "lambda_gan": cfg.lambda_gan if args.lambda_gan is None else args.lambda_gan,
        "lambda_lpips": cfg.lambda_lpips if args.lambda_lpips is None else args.lambda_lpips,
        "lambda_l1": cfg.lambda_l1 if args.lambda_l1 is None else args.lambda_l1,
    }


def best_of(curve: list[dict]) -> dict:
    """The best val LPIPS of each scored series of a curve (`lpips_val`, or `lpips_val_full` and each rank's)."""
    series = [k for k in curve[0] if k.startswith("lpips_val")]
    kids = {k.removeprefix("kid_val_"): min(c[k] for c in curve) for k in curve[0] if k.startswith("kid_val")}
    if series == ["lpips_val"]:
        return {"best_lpips_val": min(c["lpips_val"] for c in curve)}
    best = {"best_lpips_val": {k.removeprefix("lpips_val_"): min(c[k] for c in curve) for k in series}}
    return {**best, "best_kid_val": kids} if kids else best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concept", default="winter")
    ap.add_argument("--rank", type=int, default=4)
    ap.add_argument(
        "--lr", type=float, default=None, help="lr_g (default: finetune_lora.train.lr_g, or full_rank_lr_g)"
    )
    ap.add_argument("--loraplus", type=float, default=None, help="default: finetune_lora.loraplus_ratio")
    ap.add_argument("--alpha-scale", type=float, default=None, help="default: search_ranks.alpha_scale")
    ap.add_argument("--steps", type=int, default=None, help="default: finetune_lora.train.steps")
    ap.add_argument("--train-as", choices=("lora", "full_rank"), default="lora")
    ap.add_argument("--ranks", default="1,2,4,8", help="--train-as full_rank: the truncation ranks scored")
    ap.add_argument(
        "--head-scale",
        type=float,
        default=None,
        help="--train-as full_rank: the base's output layer scaled by this first (default finetune_lora.start_head_scale)",
    )
    ap.add_argument("--all-pairs", action="store_true", help="--train-as full_rank: every pair, not the subset")
    ap.add_argument(
        "--lr-decay", choices=("constant", "linear", "cosine"), default=None, help="default: finetune_lora.train's"
    )
    ap.add_argument("--precision", choices=("fp32", "bf16"), default=None, help="default: finetune_lora.train's")
    ap.add_argument("--lambda-gan", type=float, default=None, help="default: finetune_lora.train.lambda_gan")
    ap.add_argument("--lambda-lpips", type=float, default=None, help="default: finetune_lora.train.lambda_lpips")
    ap.add_argument("--lambda-l1", type=float, default=None, help="default: finetune_lora.train.lambda_l1")
    ap.add_argument(
        "--d-warmup",
        type=int,
        default=0,
        help="--train-as full_rank: discriminator-only steps against the starting generator first (default 0)",
    )
    ap.add_argument(
        "--tone",
        type=int,
        default=None,
        help="--train-as full_rank: output curve segments (default finetune_lora.tone_knots)",
    )
    ap.add_argument("--tone-lr", type=float, default=None, help="the curve's rate (default finetune_lora.tone_lr)")
    ap.add_argument(
        "--tone-window",
        type=int,
        default=None,
        help="with --tone: the outline gate's box, odd (0: none; default finetune_lora.tone_window)",
    )
    ap.add_argument("--kid", action="store_true", help="--train-as full_rank: also each rank's KID on val")
    ap.add_argument(
        "--patch", type=int, default=None, help="training windows (0: whole crops; default finetune_lora.patch)"
    )
    ap.add_argument("--batch", type=int, default=None, help="pairs per step (default: the benchmark's)")
    ap.add_argument(
        "--eval-every", type=int, default=None, help="score on val every this many steps (default: the benchmark's)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--base",
        type=Path,
        default=None,
        help="adapt another base folder (bench.base_variant) instead of the pipeline's",
    )
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    params = load_params()
    f, s = params.finetune_lora, params.search_ranks
    f = f.model_copy(update={"loraplus_ratio": args.loraplus if args.loraplus is not None else f.loraplus_ratio})
    s = s.model_copy(update={"alpha_scale": args.alpha_scale if args.alpha_scale is not None else s.alpha_scale})
    params = params.model_copy(update={"finetune_lora": f, "search_ranks": s})
    if args.patch is None:
        args.patch = f.patch
    if args.head_scale is None:
        args.head_scale = f.start_head_scale
    if args.tone is None:
        args.tone = f.tone_knots
    if args.tone_lr is None:
        args.tone_lr = f.tone_lr
    if args.tone_window is None:
        args.tone_window = f.tone_window if args.tone else 0
    if args.tone_window and (not args.tone or args.tone_window < 3 or args.tone_window % 2 == 0):
        raise SystemExit("--tone-window: an odd box of at least 3 (or 0), with --tone")
    if args.tone and args.train_as != "full_rank":
        raise SystemExit("--tone trains a curve beside a full-rank fine-tune: add --train-as full_rank")
    scale = SCALES["default"]
    cb = concept_data(args.concept, params, scale["val_limit"])
    if args.base is not None:
        from pipeline.model.checkpoint import load_generator

        if not (args.base / "generator.json").is_file():
            raise SystemExit(f"{args.base}: no generator.json; train it first (python -m bench.base_variant)")
        base, meta = load_generator(args.base)
        cb = dataclasses.replace(cb, base=base, meta=meta, base_dir=args.base)
    if args.batch:
        scale = {**scale, "batch": args.batch}
    if args.eval_every:
        scale = {**scale, "eval_every": args.eval_every}
    job = job_config(cb, "lora" if args.train_as == "lora" else "adapter", args.seed, None, scale, params)
    spec = spec_for({n: args.rank for n in adaptable_layers(cb.base)}, s)
    cfg = job["cfg"].model_copy(update={"lr_g": args.lr or job["cfg"].lr_g, **overrides(args, job["cfg"])})
    steps = args.steps or job["steps"]
    if args.train_as == "full_rank":
        curve, trainable = full_rank_curve(cb, args, params, job, steps, scale)
    else:
        G, _ = build("adapter", cb, args.seed, spec)
        trainable = trainable_parameters(G)
        curve = train_curve(
            G,
            patch_pairs(cb.pairs.subset(job["subset"]), args.patch),
            cfg,
            steps,
            scale["eval_every"],
            lambda m: {"lpips_val": cb.lpips(m, "val")},
            f.loraplus_ratio,
        )
    probes = json.loads(args.out.read_text())["probes"] if args.out.is_file() else []
    probes.append(
        {
            "train_as": args.train_as,
            "concept": args.concept,
            "seed": args.seed,
            "rank": args.rank if args.train_as == "lora" else [int(r) for r in args.ranks.split(",")],
            "lr_g": cfg.lr_g,
            "loraplus_ratio": f.loraplus_ratio,
            "alpha_scale": s.alpha_scale,
            "steps": steps,
            **overrides(args, job["cfg"]),
            **({"start_head_scale": args.head_scale} if args.train_as == "full_rank" else {}),
            **({"all_pairs": True} if args.all_pairs else {}),
            **({"d_warmup": args.d_warmup} if args.d_warmup else {}),
            **({"tone_knots": args.tone, "tone_lr": args.tone_lr} if args.tone else {}),
            **({"tone_window": args.tone_window} if args.tone_window else {}),
            **({"patch": args.patch} if args.patch else {}),
            **({"base": str(args.base)} if args.base is not None else {}),
            "batch": cfg.batch_size,
            "eval_every": scale["eval_every"],
            "trainable_params": trainable,
            "split": "val",
            **best_of(curve),
            **({"kid_val_base": cb.kid(cb.base, "val"), "kid_val_identity": cb.kid(None, "val")} if args.kid else {}),
            "curve": curve,
            "commit": code_version(),
        }
    )
    atomic_write_json(args.out, {"split": "val", "probes": probes})
    print(json.dumps(probes[-1], indent=1))


if __name__ == "__main__":
    main()
