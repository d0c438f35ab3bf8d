"""LoRA adapters (peft) on chosen layers of a frozen generator: build, count, save, load, merge."""
from __future__ import annotations

import copy
import time
from pathlib import Path

import torch
from torch import nn

from pipeline.errors import E2GANError


def adaptable_layers(model: nn.Module) -> list[str]:
    """Names of the layers peft can wrap with LoRA here: every Linear and Conv2d."""
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def lora_parameters(layer: nn.Module, r: int) -> int:
    """Trainable parameters of a rank-r LoRA on `layer`: A (r x fan_in) + B (fan_out x r)."""
    if isinstance(layer, nn.Conv2d):
        return r * (layer.in_channels // layer.groups * layer.kernel_size[0] * layer.kernel_size[1] + layer.out_channels)
    if isinstance(layer, nn.Linear):
        return r * (layer.in_features + layer.out_features)
    raise E2GANError(f"{type(layer).__name__} is not a layer LoRA can adapt here (Linear or Conv2d)")


def lora_spec(ranks: dict[str, int], alpha_scale: float = 1.0) -> dict:
    """The LoraConfig keyword arguments for per-layer ranks (what search_ranks writes and peft takes):
    target_modules, r, lora_alpha and anchored rank_pattern / alpha_pattern for the layers that differ."""
    if not ranks:
        raise E2GANError("no LoRA target layers; analyze_layers chose none (lower analyze_layers.min_gain)")
    r = max(set(ranks.values()), key=list(ranks.values()).count)  # the most common rank is the default
    return {"target_modules": sorted(ranks), "r": r, "lora_alpha": alpha_scale * r,
            "rank_pattern": {f"^{k}$": v for k, v in sorted(ranks.items()) if v != r},
            "alpha_pattern": {f"^{k}$": alpha_scale * v for k, v in sorted(ranks.items()) if v != r}}


def spec_ranks(spec: dict) -> dict[str, int]:
    """Per-layer ranks of a lora_spec (the inverse of lora_spec)."""
    pattern = {k.strip("^$"): v for k, v in spec.get("rank_pattern", {}).items()}
    return {t: pattern.get(t, spec["r"]) for t in spec["target_modules"]}


def add_lora_spec(model: nn.Module, spec: dict):
    """add_lora from a lora_spec dict."""
    from peft import LoraConfig, get_peft_model

    _check_targets(model, spec["target_modules"])
    return get_peft_model(model, LoraConfig(**spec, lora_dropout=0.0, bias="none"))


def _check_targets(model: nn.Module, targets: list[str]) -> None:
    known = set(adaptable_layers(model))
    unknown = [t for t in targets if t not in known]
    if unknown:
        raise E2GANError(f"LoRA targets {unknown} are not Linear/Conv2d layers of the generator; "
                         f"choose from: {', '.join(sorted(known))}")


def lora_config(targets: list[str], rank_pattern: dict[str, int] | None = None,
                alpha_pattern: dict[str, float] | None = None, r: int = 4, alpha: float | None = None,
                init: bool = True):
    """A peft LoraConfig on exact module names (anchored regexes, so `up.0.conv` never matches `res.up.0.conv`)."""
    from peft import LoraConfig

    return LoraConfig(
        target_modules=targets, r=r, lora_alpha=alpha if alpha is not None else r,
        rank_pattern={f"^{k}$": v for k, v in (rank_pattern or {}).items()},
        alpha_pattern={f"^{k}$": v for k, v in (alpha_pattern or {}).items()},
        lora_dropout=0.0, bias="none", init_lora_weights=init,
    )


def add_lora(model: nn.Module, targets: list[str], rank_pattern: dict[str, int] | None = None,
             alpha_pattern: dict[str, float] | None = None, r: int = 4, init: bool = True):
    """Wrap `model` with peft LoRA on `targets`; the base weights are frozen, only LoRA weights train."""
    from peft import get_peft_model

    _check_targets(model, targets)
    return get_peft_model(model, lora_config(targets, rank_pattern, alpha_pattern, r, init=init))


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def save_adapter(peft_model, folder: Path) -> int:
    """A standard peft adapter folder (adapter_config.json + adapter_model.safetensors); returns its bytes."""
    peft_model.save_pretrained(str(folder), safe_serialization=True)
    return sum(f.stat().st_size for f in Path(folder).iterdir() if f.is_file())


def load_adapter(base: nn.Module, folder: Path, merge: bool = False) -> nn.Module:
    """PeftModel.from_pretrained on a base generator; with `merge`, the merged plain nn.Module."""
    from peft import PeftModel

    folder = Path(folder)
    if not (folder / "adapter_config.json").is_file():
        raise E2GANError(f"{folder}: no adapter_config.json; run 'dvc repro finetune_lora' for this concept")
    try:
        model = PeftModel.from_pretrained(base, str(folder))
    except (ValueError, RuntimeError, OSError) as e:
        raise E2GANError(f"{folder}: adapter does not load on this base ({str(e).splitlines()[0]})") from None
    return model.merge_and_unload() if merge else model


@torch.no_grad()
def merged_copy(peft_model) -> nn.Module:
    """merge_and_unload on the peft model (the LoRA deltas folded into the base weights)."""
    return peft_model.merge_and_unload()


def finetune(base: nn.Module, spec: dict | None, data, cfg, work: Path, desc: str = "finetune", perceptual=None):
    """Train a copy of `base` on `data` with the shared loop: LoRA per `spec`, or every weight when spec is None.

    Returns (model, history, seconds); the model is a PeftModel when a spec is given."""
    from pipeline.train import build_models, fit

    torch.manual_seed(cfg.seed)  # LoRA A init
    G = copy.deepcopy(base).train()
    model = add_lora_spec(G, spec) if spec is not None else G.requires_grad_(True)
    t0 = time.perf_counter()
    m = build_models(model, cfg)
    history = fit(m, data, cfg, work, desc=desc, perceptual=perceptual)
    return (m.ema if m.ema is not None else model).eval(), history, time.perf_counter() - t0


def finetune_concept(base: nn.Module, spec: dict, concept, cfg, work: Path) -> tuple[nn.Module, list[dict], dict]:
    """finetune_lora@C: LoRA per `spec` on the frozen base, the concept's subset of pairs, the shared loop.

    `concept` is an importance.ConceptData. Returns (the PeftModel, the loss history, facts for the metrics)."""
    from pipeline.subset import choose_subset, coverage, image_features

    pairs = concept.pairs
    kept = choose_subset(pairs.inputs, cfg.subset, cfg.subset_fraction, cfg.subset_features, cfg.seed)
    facts = {"pairs_total": len(pairs.inputs), "pairs_used": len(kept), "subset": cfg.subset,
             "subset_fraction": cfg.subset_fraction}
    if cfg.subset != "all" and len(kept) < len(pairs.inputs):
        from pipeline.subset import random_subset

        feats = image_features(pairs.inputs, cfg.subset_features) if cfg.subset_features == "lpips" else None
        if feats is not None:  # how well the kept inputs cover all inputs, vs a random subset of the same size
            facts["subset_coverage"] = coverage(feats, kept)
            facts["random_subset_coverage"] = coverage(feats, random_subset(len(feats), len(kept), cfg.seed))
    model, history, seconds = finetune(base, spec, pairs.subset(kept), cfg, work, desc=f"finetune_lora {concept.name}")
    facts["train_seconds"] = round(seconds, 2)
    facts["trainable_params"] = trainable_parameters(model)
    return model, history, facts
