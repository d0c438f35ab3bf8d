"""Generator checkpoints: safetensors weights + a JSON of the constructor arguments (and provenance)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from pipeline.core.errors import E2GANError
from pipeline.core.io import atomic_write_bytes, atomic_write_json
from pipeline.model.nets.generator import E2GANGenerator, GeneratorConfig

WEIGHTS, CONFIG = "generator.safetensors", "generator.json"


class CheckpointError(E2GANError):
    """A checkpoint is missing, corrupt or from a different architecture."""


def save_generator(G: E2GANGenerator, folder: Path, meta: dict) -> None:
    """Write `folder/generator.safetensors` and `folder/generator.json` ({"config": ..., **meta})."""
    state = {k: v.detach().contiguous() for k, v in G.state_dict().items()}
    atomic_write_bytes(Path(folder) / WEIGHTS, save(state))
    atomic_write_json(Path(folder) / CONFIG, {"config": G.cfg.to_dict(), **meta})


def load_generator(folder: Path) -> tuple[E2GANGenerator, dict]:
    """Rebuild the generator from its JSON and load its weights strictly; mismatches name the keys."""
    folder = Path(folder)
    if not (folder / CONFIG).is_file() or not (folder / WEIGHTS).is_file():
        raise CheckpointError(f"{folder}: no {CONFIG} + {WEIGHTS}; run 'dvc repro train_base' first")
    meta = json.loads((folder / CONFIG).read_text())
    try:
        G = E2GANGenerator(GeneratorConfig(**meta["config"]))
        state = load_file(str(folder / WEIGHTS))
    except (TypeError, KeyError, OSError, RuntimeError) as e:
        raise CheckpointError(f"{folder}: unreadable checkpoint ({type(e).__name__}: {e})") from None
    check_state(G, state, str(folder))
    G.load_state_dict(state)
    return G.eval(), meta


def check_state(model: torch.nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Raise CheckpointError naming missing, unexpected and mis-shaped tensors."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or extra or shapes:
        parts = []
        if shapes:
            parts.append(f"shape mismatch: {'; '.join(shapes[:3])}{' ...' if len(shapes) > 3 else ''}")
        if missing:
            parts.append(f"missing: {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}")
        if extra:
            parts.append(f"unexpected: {', '.join(extra[:4])}{' ...' if len(extra) > 4 else ''}")
        raise CheckpointError(f"{where}: checkpoint does not fit this architecture ({'; '.join(parts)})")
