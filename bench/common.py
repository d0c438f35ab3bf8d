"""What the training benchmarks share: one concept's data, held-out pairs, conditioning and scorers
(`ConceptBench`), and the timed training loop with held-out evaluations (`train_with_evals`).

Every benchmark trains with `pipeline.train.gan_step`, the loop the pipeline stages use, on the device
from E2GAN_DEVICE (auto: CUDA when there is one); evaluation runs on the CPU and is not timed.
"""
from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.checkpoint import load_generator
from pipeline.config import Params, load_params
from pipeline.importance import load_concepts
from pipeline.infer import concept_condition, heldout_pairs, run_generator
from pipeline.metrics import inception_features, kid_from_features, lpips_distance
from pipeline.subset import choose_subset
from pipeline.train import (
    build_models,
    gan_step,
    lpips_loss,
    move_models,
    train_device,
    update_ema,
)

RESULTS = Path("bench/results")


@dataclass
class ConceptBench:
    """One concept as the pipeline left it (`make run`): the base, the searched LoRA spec, the training
    pairs, `eval_limit` held-out pairs (0 = all) and the prompts' text condition."""

    name: str
    params: Params
    base: torch.nn.Module
    meta: dict
    spec: dict
    pairs: object  # pipeline.train.PairData
    inputs: list
    teacher: list
    tokens: torch.Tensor
    mask: torch.Tensor

    @classmethod
    def load(cls, name: str, eval_limit: int = 48, params: Params | None = None,
             root: Path = Path(".")) -> ConceptBench:
        params = params or load_params()
        base, meta = load_generator(root / "models/base")
        concept = load_concepts({name: root / "data/pairs" / name}, meta["text_encoder"],
                                {name: root / "data/prompts" / name / "prompts.json"})[name]
        inputs, teacher = heldout_pairs(concept.folder, eval_limit)
        tokens, mask = concept_condition(concept.prompts, meta["text_encoder"])
        spec = json.loads((root / "models/ranks/lora.json").read_text())
        return cls(name, params, base, meta, spec, concept.pairs, inputs, teacher, tokens, mask)

    def outputs(self, G) -> list:
        return run_generator(G, self.inputs, self.tokens, self.mask)

    def lpips(self, G) -> float:
        """Mean held-out LPIPS (alex) of G's outputs against the teacher's."""
        return float(np.mean(lpips_distance(self.outputs(G), self.teacher)))

    @functools.cached_property
    def teacher_features(self) -> np.ndarray:
        return inception_features(self.teacher)

    def kid(self, G=None) -> float:
        """KID of G's held-out outputs (the inputs when G is None) against the teacher's."""
        return kid_from_features(inception_features(self.outputs(G) if G is not None else self.inputs),
                                 self.teacher_features)

    def lpips_identity(self) -> float:
        return float(np.mean(lpips_distance(self.inputs, self.teacher)))

    def subset(self, strategy: str) -> list[int]:
        """Training-pair indices: every pair ('all') or finetune_lora.subset_fraction of them by `strategy`."""
        if strategy == "all":
            return list(range(len(self.pairs.inputs)))
        f = self.params.finetune_lora
        return choose_subset(self.pairs.inputs, strategy, f.subset_fraction, f.subset_features, f.seed)


def train_with_evals(G, data, cfg, steps: int, eval_every: int, evaluate) -> list[dict]:
    """`gan_step` in a plain loop with `evaluate(G)` every `eval_every` steps, outside the timed part.

    Returns [{step, train_seconds, lpips}, ...]; G is on the CPU again when it returns."""
    dev = train_device()
    m = build_models(G, cfg)
    perceptual = lpips_loss(device=dev) if cfg.lambda_lpips > 0 else None
    curve, trained = [], 0.0
    move_models(m, dev)
    for step in range(steps):
        G.train()
        t0 = time.perf_counter()
        x, y, text, mask = (t.to(dev) for t in data.batch(step, cfg.batch_size, cfg.seed, cfg.flip))
        gan_step(m, x, y, text, mask, cfg, perceptual)
        if m.ema is not None:
            update_ema(m.ema, G, cfg.ema)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        trained += time.perf_counter() - t0
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            move_models(m, torch.device("cpu"))
            curve.append({"step": step + 1, "train_seconds": round(trained, 2), "lpips": evaluate(G)})
            print(f"  step {step + 1}: lpips {curve[-1]['lpips']:.4f} after {trained:.0f} s", flush=True)
            move_models(m, dev)
    move_models(m, torch.device("cpu"))
    return curve
