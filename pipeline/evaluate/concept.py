"""evaluate@C: the student's outputs on the test photos against the teacher's, beside the base without its
adapter and the identity mapping, with paired differences; and the input | teacher | base | student grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import Field

from pipeline.adapt.lora import load_adapter
from pipeline.core.errors import E2GANError
from pipeline.core.frozen import FrozenConfig
from pipeline.core.images import save_png
from pipeline.core.plots import grid
from pipeline.data.dataset import concept_condition, concept_prompt, split_pairs
from pipeline.evaluate.sets import cached_features, compare_sets, paired_difference, paired_kid
from pipeline.model.checkpoint import load_generator
from pipeline.model.infer import run_generator


class EvaluateConfig(FrozenConfig):
    """evaluate@C: the student's quality against the teacher on the test photos (a reported figure)."""

    bootstrap: int = Field(1000, ge=1)  # resamples of the test photos: 95 % interval of every per-crop metric
    kid_bootstrap: int = Field(200, ge=0)  # photo half-samples (paired KID differences), crop resamples (KID spread)
    fid_min_crops: int = Field(2048, ge=2)  # FID only for test sets of at least this many crops (below the
    # features' 2048 dimensions their covariance is singular); KID, unbiased at any size, always
    fid_bootstrap: int = Field(5, ge=0)  # of the KID resamples, how many also give FID (seconds each; student only)
    clip_model: str | None = None  # CLIP id/path for the directional CLIP score (none ships offline)
    grid: int = Field(6, ge=1)  # photos in the input | teacher | base | student grid
    seed: int = 0


PAIRED = ("lpips", "psnr", "ssim", "clip_direction")  # per-crop metrics that get paired differences


def evaluate_student(
    concept: str,
    base_dir: Path,
    adapter: Path,
    pairs: Path,
    prompts: Path,
    cfg: EvaluateConfig,
    features: tuple[Path, str] | None = None,
) -> tuple[dict, np.ndarray]:
    """All metrics of the concept's student, its base without the adapter and the identity against the teacher
    on every `test` pair (test only: nothing is chosen from these figures), and the paired differences
    student - identity and student - base on the same crops; returns (the metrics, the grid image).
    `features`: (a folder, the code hash) where Inception features are kept by content (sets.cached_features):
    the test inputs are the same for every concept, so the identity's are computed once."""
    # 1. check inputs
    if not (adapter / "adapter_config.json").is_file():
        raise E2GANError(f"{adapter}: no adapter; run 'dvc repro finetune_lora@{concept}' first")
    inputs, teacher, photos = split_pairs(pairs, "test")
    if len(inputs) < 2:
        raise E2GANError(
            f"{pairs}: {len(inputs)} test pairs; FID/KID need at least 2 (raise data.eval_crops_per_photo)"
        )
    # 2. the base and the student (base + merged adapter) on the test inputs
    base, meta = load_generator(base_dir)
    tokens, mask = concept_condition(prompts, meta["text_encoder"])
    base_out = run_generator(base, inputs, tokens, mask)
    student = load_adapter(load_generator(base_dir)[0], adapter, merge=True)
    student_out = run_generator(student, inputs, tokens, mask)
    clip = None
    if cfg.clip_model:
        from pipeline.core.metrics import ClipScorer

        clip = ClipScorer(cfg.clip_model)
    # 3. every metric of the three against the teacher (the teacher's Inception features once), then paired
    prompt = concept_prompt(prompts)
    cache, code = features or (None, "")
    tf = cached_features(teacher, cache, code)
    fid = len(inputs) >= cfg.fid_min_crops
    boot = dict(n_boot=cfg.bootstrap, set_boot=cfg.kid_bootstrap, seed=cfg.seed, clip=clip, fid=fid)
    sets, crops, feats = {}, {}, {}
    for name, out in (("student", student_out), ("base_without_adapter", base_out), ("identity", inputs)):
        fid_boot = cfg.fid_bootstrap if name == "student" else 0
        feats[name] = cached_features(out, cache, code)  # each set's features once: metrics and paired KIDs
        sets[name], crops[name] = compare_sets(
            out, teacher, tf, inputs, prompt, photos, fid_boot=fid_boot, feats=feats[name], **boot
        )
    result = {
        "concept": concept,
        "prompt": prompt,
        "split": "test",
        "test_pairs": len(inputs),
        "test_photos": len(set(photos)),
        "bootstrap": {"unit": "photo", "resamples": cfg.bootstrap, "kid_resamples": cfg.kid_bootstrap},
        "fid": {"computed": fid, "min_crops": cfg.fid_min_crops},
        **sets,
        "paired": {
            f"student_minus_{other}": {
                k: paired_difference(crops["student"][k], crops[other][k], photos, cfg.bootstrap, cfg.seed)
                for k in PAIRED
                if k in crops["student"]
            }
            | {"kid": paired_kid(feats["student"], feats[other], tf, photos, cfg.kid_bootstrap, cfg.seed)}
            for other in ("identity", "base_without_adapter")
        },
    }
    # 4. the picture: crops of different photos where there are enough
    pick = _spread(photos, min(cfg.grid, len(inputs)))
    rows = [[x[i] for i in pick] for x in (inputs, teacher, base_out, student_out)]
    return result, grid(rows, [f"{concept}: input (test)", "teacher", "base (no adapter)", "E2GAN student"])


def _spread(photos: list[str], n: int) -> list[int]:
    """`n` crop indices, round-robin over the photos (one crop per photo before a second), in order."""
    by_photo: dict[str, list[int]] = {}
    for i, p in enumerate(photos):
        by_photo.setdefault(p, []).append(i)
    order = [q[k] for k in range(max(map(len, by_photo.values()))) for q in by_photo.values() if k < len(q)]
    return sorted(order[:n])


def write_evaluation(result: dict, picture: np.ndarray, out: Path, png: Path) -> None:
    from pipeline.core.io import atomic_write_json

    atomic_write_json(out, result)
    save_png(picture, png)
