"""train_base: one text-conditioned generator trained on the base concepts' pairs with the shared loop."""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import Field

from pipeline.core.frozen import FrozenConfig
from pipeline.data.dataset import load_pair_data, patch_pairs
from pipeline.model.nets.generator import E2GANGenerator, GeneratorConfig
from pipeline.model.train import Models, TrainConfig, build_models, fit


class TrainBaseConfig(FrozenConfig):
    """train_base: the base generator's architecture (owned by the generator) and the training loop's settings."""

    generator: GeneratorConfig = Field(default_factory=GeneratorConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    # train on random `patch` x `patch` windows of the pairs (the same window of input and target; 0 = whole crops):
    # a step sees (patch / image_size)^2 of a whole-crop step's pixels; every report runs on whole images
    patch: int = Field(0, ge=0, multiple_of=16)
    report_limit: int = Field(48, ge=0)  # test crops per concept in the base's quality report, spread over all its
    # test photos (0 = all); the report chooses nothing


def build_generator(cfg: TrainBaseConfig, text_dim: int) -> E2GANGenerator:
    """A freshly initialised generator of the configured architecture (seeded by the training seed)."""
    torch.manual_seed(cfg.train.seed)
    return E2GANGenerator(cfg.generator.model_copy(update={"text_dim": text_dim}))


def train_base(
    folders: dict[str, Path], cfg: TrainBaseConfig, encoder: str, work: Path, on_log=None
) -> tuple[E2GANGenerator, list[dict]]:
    """Train one generator on all base concepts' training pairs; resumable through `work`."""
    data = patch_pairs(load_pair_data(folders, encoder), cfg.patch)
    G = build_generator(cfg, data.tokens.shape[-1])
    m: Models = build_models(G, cfg.train)
    history = fit(m, data, cfg.train, work, desc="train_base", on_log=on_log)
    return (m.ema if m.ema is not None else m.G).eval(), history
