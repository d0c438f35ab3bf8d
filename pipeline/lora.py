"""LoRA adapters (peft) on chosen layers of a frozen generator: build, count, save, load, merge."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from pipeline.errors import E2GANError


def adaptable_layers(model: nn.Module) -> list[str]:
    """Names of the layers peft can wrap with LoRA here: every Linear and Conv2d."""
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


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

    known = set(adaptable_layers(model))
    unknown = [t for t in targets if t not in known]
    if unknown:
        raise E2GANError(f"LoRA targets {unknown} are not Linear/Conv2d layers of the generator; "
                         f"choose from: {', '.join(sorted(known))}")
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
