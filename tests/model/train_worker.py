"""A tiny training run in its own process (for the kill-and-resume and DDP tests), with the settings the
stages ship (params.yaml: text norms, stem skip, EMA for the base, GAN + L1 + LPIPS losses):
python -m tests.model.train_worker WORK OUT STEPS [base|lora], or under torchrun --nproc_per_node 2 -m ...
Rank 0 writes the generator's weights to OUT and the loss history to OUT.json; the full training state
(G, EMA, D, both optimisers) is WORK/last.pt."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from pipeline.data.dataset import PairData
from pipeline.model.nets.generator import E2GANGenerator, GeneratorConfig
from pipeline.model.train import TrainConfig, build_models, fit, init_distributed
from tests.conftest import ROOT

TINY = {"batch_size": 4, "ndf": 8, "ckpt_every": 2, "log_every": 2}


def tiny_data(n: int = 16, size: int = 32) -> PairData:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    y = 255 - x  # a known edit: the negative
    tokens = torch.randn(2, 5, 384, generator=g)
    return PairData(x, y, [[0, 1]] * n, tokens, torch.ones(2, 5))


def tiny_run(work: Path, steps: int = 40, history: list | None = None, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    G = E2GANGenerator(GeneratorConfig(ngf=8, heads=2))
    cfg = TrainConfig(steps=steps, batch_size=4, ndf=8, ckpt_every=2, log_every=2, **kw)
    rows = fit(build_models(G, cfg), tiny_data(), cfg, work)
    if history is not None:
        history.extend(rows)
    return G


def shipped_generator(trained: bool = False) -> E2GANGenerator:
    """The shipped architecture (params.yaml's train_base.generator), narrower, seeded. `trained`: the layers
    that start at zero (the residual head, the text norms' scale and shift) get small random values, as in a
    trained base; at zero they pass no gradient to the LoRA adapters before them."""
    from pipeline.config import read_params

    arch = read_params(ROOT / "params.yaml").train_base.generator.model_copy(update={"ngf": 8, "heads": 2})
    torch.manual_seed(0)
    G = E2GANGenerator(arch)
    if trained:
        with torch.no_grad():
            for p in G.parameters():
                if not p.any():
                    p.normal_(0.0, 0.05)
    return G


def shipped_run(work: Path, steps: int, mode: str, history: list) -> torch.nn.Module:
    """`fit` as train_base (mode 'base') or finetune_lora (mode 'lora') run it: the shipped params.yaml's
    architecture and training settings, only smaller (width, batch, steps)."""
    from pipeline.adapt.lora import finetune_models, lora_spec
    from pipeline.config import read_params

    params = read_params(ROOT / "params.yaml")
    G = shipped_generator(trained=mode == "lora")
    if mode == "base":
        cfg = params.train_base.train.model_copy(update={**TINY, "steps": steps})
        m = build_models(G, cfg)
    else:
        cfg = params.finetune_lora.train.model_copy(update={**TINY, "steps": steps})
        m = finetune_models(G.eval(), lora_spec({"ds.conv": 2, "tb.attn_cross.to_q": 2, "up.1.conv": 4}), cfg)
    history.extend(fit(m, tiny_data(), cfg, work))
    return m.ema if m.ema is not None else m.G


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")  # "resuming from step N"
    rank, _ = init_distributed()
    rows: list = []
    G = shipped_run(Path(sys.argv[1]), int(sys.argv[3]), sys.argv[4] if len(sys.argv) > 4 else "base", rows)
    if rank == 0:
        save_file({k: v.contiguous() for k, v in G.state_dict().items()}, sys.argv[2])
        Path(sys.argv[2] + ".json").write_text(json.dumps(rows))
