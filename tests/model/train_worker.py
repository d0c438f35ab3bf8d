"""A tiny training run in its own process (for the kill-and-resume and DDP tests):
python -m tests.model.train_worker WORK OUT [STEPS], or under torchrun --nproc_per_node 2 -m tests.model.train_worker ...
Rank 0 writes the weights to OUT and the loss history to OUT.json."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from pipeline.data.dataset import PairData
from pipeline.model.nets.generator import E2GANGenerator, GeneratorConfig
from pipeline.model.train import TrainConfig, build_models, fit, init_distributed


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


if __name__ == "__main__":
    rank, _ = init_distributed()
    rows: list = []
    G = tiny_run(Path(sys.argv[1]), steps=int(sys.argv[3]) if len(sys.argv) > 3 else 40, history=rows)
    if rank == 0:
        save_file(G.state_dict(), sys.argv[2])
        Path(sys.argv[2] + ".json").write_text(json.dumps(rows))
