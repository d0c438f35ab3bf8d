"""What the training benchmarks share: one concept's data, held-out pairs, conditioning and scorers
(`ConceptBench`), and a training curve through the pipeline's own loop (`train_curve`: `fit` with its
untimed evaluation hook), on the device from E2GAN_DEVICE (auto: CUDA when there is one).
"""

from __future__ import annotations

import functools
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.adapt.subset import choose_subset
from pipeline.config import PipelineConfig, load_params
from pipeline.core.metrics import inception_features, kid_from_features, lpips_distance
from pipeline.data.dataset import concept_condition, heldout_pairs, load_concepts
from pipeline.model.checkpoint import load_generator
from pipeline.model.infer import run_generator
from pipeline.model.train import build_models, fit
from pipeline.orchestrate.dvc import stage_paths

RESULTS = Path("bench/results")


@dataclass
class ConceptBench:
    """One concept as the pipeline left it (`make run`): the base, the searched LoRA spec, the training
    pairs, `eval_limit` held-out pairs (0 = all) and the prompts' text condition."""

    name: str
    params: PipelineConfig
    base: torch.nn.Module
    meta: dict
    spec: dict
    pairs: object  # pipeline.data.dataset.PairData
    inputs: list
    teacher: list
    tokens: torch.Tensor
    mask: torch.Tensor

    @classmethod
    def load(
        cls, name: str, eval_limit: int = 48, params: PipelineConfig | None = None, root: Path = Path(".")
    ) -> ConceptBench:
        params = params or load_params()
        paths = stage_paths("finetune_lora", name, root)  # where the pipeline keeps this concept's inputs
        base, meta = load_generator(paths["base"])
        concept = load_concepts({name: paths["pairs"]}, meta["text_encoder"], {name: paths["prompts"]})[name]
        inputs, teacher = heldout_pairs(concept.folder, eval_limit)
        tokens, mask = concept_condition(concept.prompts, meta["text_encoder"])
        spec = json.loads(paths["ranks"].read_text())
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
        return kid_from_features(
            inception_features(self.outputs(G) if G is not None else self.inputs), self.teacher_features
        )

    def lpips_identity(self) -> float:
        return float(np.mean(lpips_distance(self.inputs, self.teacher)))

    def subset(self, strategy: str) -> list[int]:
        """Training-pair indices: every pair ('all') or finetune_lora.subset_fraction of them by `strategy`."""
        if strategy == "all":
            return list(range(len(self.pairs.inputs)))
        f = self.params.finetune_lora
        return choose_subset(self.pairs.inputs, strategy, f.subset_fraction, f.subset_features, f.train.seed)


def train_curve(G, data, cfg, steps: int, eval_every: int, evaluate) -> list[dict]:
    """Train G with the pipeline's `fit` for `steps`, calling `evaluate(model)` every `eval_every` steps through
    fit's evaluation hook (not timed). Returns [{step, train_seconds, lpips}, ...]; G ends on the CPU."""
    cfg = cfg.model_copy(update={"steps": steps, "ckpt_every": steps, "log_every": min(cfg.log_every, steps)})
    curve: list[dict] = []

    def hook(model, step: int, seconds: float) -> None:
        curve.append({"step": step, "train_seconds": round(seconds, 2), "lpips": evaluate(model)})
        print(f"  step {step}: lpips {curve[-1]['lpips']:.4f} after {seconds:.0f} s", flush=True)

    with tempfile.TemporaryDirectory(prefix="e2gan-bench-") as work:
        fit(build_models(G, cfg), data, cfg, Path(work), desc="bench", evaluate=hook, eval_every=eval_every)
    return curve
