"""evaluate@C: the student's held-out outputs against the teacher's, beside the base without its adapter and the
identity mapping; and the input | teacher | base | student grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import Field

from pipeline.adapt.lora import load_adapter
from pipeline.core.errors import E2GANError
from pipeline.core.frozen import FrozenConfig
from pipeline.core.images import save_png
from pipeline.core.metrics import inception_features
from pipeline.core.plots import grid
from pipeline.data.dataset import concept_condition, concept_prompt, heldout_pairs
from pipeline.evaluate.sets import compare_sets
from pipeline.model.checkpoint import load_generator
from pipeline.model.infer import run_generator


class EvaluateConfig(FrozenConfig):
    """evaluate@C: held-out quality of the student against the teacher."""

    bootstrap: int = Field(20, ge=1)  # resamples of the held-out set for the spread of every metric
    fid: bool = True  # FID per set (a 2048x2048 matrix square root: ~16 s on 2 CPU cores); false: KID only
    fid_bootstrap: int = Field(5, ge=0)  # of those, how many also give FID (seconds each on a CPU; student only)
    clip_model: str | None = None  # CLIP id/path for the directional CLIP score (none ships offline)
    grid: int = Field(6, ge=1)  # photos in the input | teacher | base | student grid
    seed: int = 0


def evaluate_student(
    concept: str, base_dir: Path, adapter: Path, pairs: Path, prompts: Path, cfg: EvaluateConfig
) -> tuple[dict, np.ndarray]:
    """All metrics of the concept's student, its base without the adapter and the identity against the teacher
    on every held-out pair; returns (the metrics, the grid image)."""
    # 1. check inputs
    if not (adapter / "adapter_config.json").is_file():
        raise E2GANError(f"{adapter}: no adapter; run 'dvc repro finetune_lora@{concept}' first")
    inputs, teacher = heldout_pairs(pairs)
    if len(inputs) < 2:
        raise E2GANError(
            f"{pairs}: {len(inputs)} held-out pairs; FID/KID need at least 2 (raise data.heldout_crops_per_photo)"
        )
    # 2. the base and the student (base + merged adapter) on the held-out inputs
    base, meta = load_generator(base_dir)
    tokens, mask = concept_condition(prompts, meta["text_encoder"])
    base_out = run_generator(base, inputs, tokens, mask)
    student = load_adapter(load_generator(base_dir)[0], adapter, merge=True)
    student_out = run_generator(student, inputs, tokens, mask)
    clip = None
    if cfg.clip_model:
        from pipeline.core.metrics import ClipScorer

        clip = ClipScorer(cfg.clip_model)
    # 3. every metric of the three against the teacher (the teacher's Inception features once)
    prompt = concept_prompt(prompts)
    tf = inception_features(teacher)
    result = {
        "concept": concept,
        "prompt": prompt,
        "heldout_pairs": len(inputs),
        "bootstrap": cfg.bootstrap,
        "student": compare_sets(
            student_out, teacher, tf, inputs, prompt, cfg.bootstrap, cfg.seed, clip, cfg.fid_bootstrap, fid=cfg.fid
        ),
        "base_without_adapter": compare_sets(
            base_out, teacher, tf, inputs, prompt, cfg.bootstrap, cfg.seed, clip, fid=cfg.fid
        ),
        "identity": compare_sets(inputs, teacher, tf, inputs, prompt, cfg.bootstrap, cfg.seed, clip, fid=cfg.fid),
    }
    # 4. the picture: photos spread over the held-out set
    n = min(cfg.grid, len(inputs))
    step = max(1, len(inputs) // n)
    pick = list(range(0, len(inputs), step))[:n]
    rows = [[x[i] for i in pick] for x in (inputs, teacher, base_out, student_out)]
    return result, grid(rows, [f"{concept}: input", "teacher", "base (no adapter)", "E2GAN student"])


def write_evaluation(result: dict, picture: np.ndarray, out: Path, png: Path) -> None:
    from pipeline.core.io import atomic_write_json

    atomic_write_json(out, result)
    save_png(picture, png)
