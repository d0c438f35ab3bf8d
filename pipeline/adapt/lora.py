"""LoRA adapters (peft) on chosen layers of a frozen generator: build, count, save, load, merge."""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from pipeline.core.errors import E2GANError
from pipeline.core.frozen import FrozenConfig
from pipeline.model.train import Models, TrainConfig, build_models, fit


class FinetuneConfig(FrozenConfig):
    """finetune_lora@C: LoRA (peft) on the crucial layers of the frozen base, on a clustered subset."""

    subset: Literal["kmeans", "random", "all"] = "kmeans"  # which training pairs to keep
    subset_fraction: float = Field(0.5, gt=0.0, le=1.0)  # kept share of the concept's training pairs
    subset_features: str = "lpips"  # "lpips" (offline AlexNet features) or a CLIP id/path
    eval_limit: int = Field(0, ge=0)  # val crops scored before and after (0 = all; else spread over all val photos)
    train: TrainConfig = Field(default_factory=TrainConfig)  # the shared loop's settings


def adaptable_layers(model: nn.Module) -> list[str]:
    """Names of the layers peft can wrap with LoRA here: every Linear and Conv2d."""
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def lora_parameters(layer: nn.Module, r: int) -> int:
    """Trainable parameters of a rank-r LoRA on `layer`: A (r x fan_in) + B (fan_out x r)."""
    if isinstance(layer, nn.Conv2d):
        return r * (
            layer.in_channels // layer.groups * layer.kernel_size[0] * layer.kernel_size[1] + layer.out_channels
        )
    if isinstance(layer, nn.Linear):
        return r * (layer.in_features + layer.out_features)
    raise E2GANError(f"{type(layer).__name__} is not a layer LoRA can adapt here (Linear or Conv2d)")


def lora_spec(ranks: dict[str, int], alpha_scale: float = 1.0) -> dict:
    """The LoraConfig keyword arguments for per-layer ranks (what search_ranks writes and peft takes):
    target_modules, r, lora_alpha and anchored rank_pattern / alpha_pattern for the layers that differ."""
    if not ranks:
        raise E2GANError("no LoRA target layers; analyze_layers chose none (lower analyze_layers.min_gain)")
    r = max(set(ranks.values()), key=list(ranks.values()).count)  # the most common rank is the default
    return {
        "target_modules": sorted(ranks),
        "r": r,
        "lora_alpha": alpha_scale * r,
        "rank_pattern": {f"^{k}$": v for k, v in sorted(ranks.items()) if v != r},
        "alpha_pattern": {f"^{k}$": alpha_scale * v for k, v in sorted(ranks.items()) if v != r},
    }


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
        raise E2GANError(
            f"LoRA targets {unknown} are not Linear/Conv2d layers of the generator; "
            f"choose from: {', '.join(sorted(known))}"
        )


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def save_adapter(peft_model, folder: Path) -> int:
    """A standard peft adapter folder (adapter_config.json + adapter_model.safetensors); returns its bytes."""
    import json

    peft_model.save_pretrained(str(folder), safe_serialization=True)
    cfg_file = Path(folder) / "adapter_config.json"  # peft writes target_modules from a set: order by process
    cfg = json.loads(cfg_file.read_text())
    if isinstance(cfg.get("target_modules"), list):
        cfg["target_modules"] = sorted(cfg["target_modules"])
    cfg_file.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")  # the same bytes for the same adapter
    return sum(f.stat().st_size for f in Path(folder).iterdir() if f.is_file())


def save_adapter_folder(peft_model, spec: dict, card: dict, out: Path) -> dict[str, int]:
    """The adapter folder, swapped in atomically: peft's files plus e2gan.json (`card` and the per-layer ranks).
    Returns its sizes in bytes."""
    from pipeline.core.io import atomic_dir, atomic_write_json

    with atomic_dir(out) as tmp:
        save_adapter(peft_model, tmp)
        atomic_write_json(tmp / "e2gan.json", {**card, "ranks": spec_ranks(spec)})
        folder_bytes = sum(f.stat().st_size for f in tmp.iterdir() if f.is_file())
    return {"adapter_bytes": (Path(out) / "adapter_model.safetensors").stat().st_size, "folder_bytes": folder_bytes}


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


def finetune(
    base: nn.Module,
    spec: dict | None,
    data,
    cfg: TrainConfig,
    work: Path,
    desc: str = "finetune",
    perceptual=None,
    evaluate=None,
    eval_every: int = 0,
):
    """Train a copy of `base` on `data` with the shared loop: LoRA per `spec`, or every weight when spec is None.

    Returns (model, history, seconds); the model is a PeftModel when a spec is given. `evaluate` and
    `eval_every` go to `fit` (an untimed evaluation hook)."""
    t0 = time.perf_counter()
    m = finetune_models(base, spec, cfg)
    history = fit(m, data, cfg, work, desc=desc, perceptual=perceptual, evaluate=evaluate, eval_every=eval_every)
    return (m.ema if m.ema is not None else m.G).eval(), history, time.perf_counter() - t0


def finetune_models(base: nn.Module, spec: dict | None, cfg: TrainConfig) -> Models:
    """What `finetune` trains: a copy of `base` with LoRA per `spec` (or every weight trainable), a fresh
    discriminator and optimisers, seeded by cfg.seed."""
    torch.manual_seed(cfg.seed)  # LoRA A init
    G = copy.deepcopy(base).train()
    model = add_lora_spec(G, spec) if spec is not None else G.requires_grad_(True)
    return build_models(model, cfg)


def finetune_concept(
    base: nn.Module, spec: dict, concept, cfg: FinetuneConfig, work: Path
) -> tuple[nn.Module, list[dict], dict]:
    """finetune_lora@C: LoRA per `spec` on the frozen base, the concept's subset of pairs, the shared loop.

    `concept` is a data.dataset.ConceptData. Returns (the PeftModel, the loss history, facts for the metrics)."""
    from pipeline.adapt.subset import choose_subset, coverage, image_features, random_subset

    pairs = concept.pairs
    kept = choose_subset(pairs.inputs, cfg.subset, cfg.subset_fraction, cfg.subset_features, cfg.train.seed)
    facts = {
        "pairs_total": len(pairs.inputs),
        "pairs_used": len(kept),
        "subset": cfg.subset,
        "subset_fraction": cfg.subset_fraction,
    }
    if cfg.subset != "all" and len(kept) < len(pairs.inputs):
        feats = image_features(pairs.inputs, cfg.subset_features) if cfg.subset_features == "lpips" else None
        if feats is not None:  # how well the kept inputs cover all inputs, vs a random subset of the same size
            facts["subset_coverage"] = coverage(feats, kept)
            facts["random_subset_coverage"] = coverage(feats, random_subset(len(feats), len(kept), cfg.train.seed))
    model, history, seconds = finetune(
        base, spec, pairs.subset(kept), cfg.train, work, desc=f"finetune_lora {concept.name}"
    )
    facts["train_seconds"] = round(seconds, 2)
    facts["trainable_params"] = trainable_parameters(model)
    return model, history, facts
