"""Paired data: source crops -> teacher edits -> quality-filtered pairs, sharded and resumable.

Output (`data/pairs/<concept>/`): `input/`, `edited/`, `metadata.jsonl` with the columns diffusers'
InstructPix2Pix training script reads (`input_image`, `edit_prompt`, `edited_image`) plus seed,
photo, split (`train` / `val` / `test`, from the source manifest), teacher settings and quality scores, and `index.parquet` with the same rows. Work happens in
a scratch folder keyed by a fingerprint of everything the pairs depend on; each finished shard is
recorded atomically, so a killed run restarts at the first unfinished shard.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import Field

from pipeline.core.frozen import FrozenConfig
from pipeline.core.images import SPLITS, load_rgb, save_png, stable_seed
from pipeline.core.io import atomic_dir, atomic_write_json, atomic_write_text, work_folder
from pipeline.core.progress import bar
from pipeline.data.dataset import photo_of, read_pairs
from pipeline.data.prompts import ExpandPromptsConfig, expand_concept
from pipeline.data.teachers import ConceptConfig, Teacher, build_teacher
from pipeline.data.teachers.filters import FILTER_PROMPTS

log = logging.getLogger(__name__)


class GeneratePairsConfig(FrozenConfig):
    """Pair generation and filtering of failed edits."""

    min_change: float = Field(0.005, ge=0.0)  # mean |edited - input| (0..1) below this: the edit failed
    max_change: float = Field(0.95, le=1.0)  # above this: the edit destroyed the photo
    min_lpips: float = Field(0.02, ge=0.0)  # LPIPS(input, edited) below this: too weak an edit
    max_lpips: float = Field(1.2, le=2.0)  # above this: the structure is gone
    clip_model: str | None = None  # CLIP id/path for directional similarity (none ships offline)
    min_clip_direction: float = Field(0.0, ge=-1.0, le=1.0)  # with clip_model: edits pointing away are dropped
    shard_size: int = Field(32, ge=1)  # pairs per checkpointed shard
    seed: int = 0


class GenerateBasePairsConfig(FrozenConfig):
    """Pairs for the base and calibration concepts (thresholds come from generate_pairs)."""

    max_train_per_concept: int = Field(0, ge=0)  # 0 = every training crop


@dataclass(frozen=True)
class Job:
    """One pair to make: a source crop, its instruction and its seed."""

    id: str
    photo: str
    split: str
    source: Path
    prompt: str
    seed: int


def plan_jobs(concept: str, sources: Path, instructions: list[str], seed: int) -> list[Job]:
    """Every source crop (train, val and test) with a deterministic instruction and seed."""
    manifest = json.loads((sources / "manifest.json").read_text())
    jobs = []
    for c in manifest["crops"]:
        pid = Path(c["file"]).stem
        s = stable_seed(concept, pid, seed)
        jobs.append(Job(pid, c["photo"], c["split"], sources / c["file"], instructions[s % len(instructions)], s))
    return jobs


# ----------------------------------------------------------------------------- quality


def quality_scores(
    inputs: list[np.ndarray], edited: list[np.ndarray], prompts: list[str] | None = None, clip_model: str | None = None
) -> list[dict[str, float]]:
    """LPIPS (alex), mean absolute change (0..1) and SSIM between each input and its edit; with a CLIP
    model, also the directional CLIP similarity of the edit to its instruction."""
    from pipeline.core.metrics import lpips_distance, ssim

    lp = lpips_distance(inputs, edited, net="alex")
    scores = [
        {
            "lpips": round(float(d), 5),
            "change": round(float(np.abs(a.astype(np.float32) - b).mean() / 255.0), 5),
            "ssim": round(ssim(a, b), 5),
        }
        for d, a, b in zip(lp, inputs, edited)
    ]
    if clip_model:
        for s, c in zip(scores, _clip(clip_model).directional(inputs, edited, prompts or [""] * len(inputs))):
            s["clip_direction"] = round(float(c), 5)
    return scores


@functools.lru_cache(maxsize=2)
def _clip(model: str):
    from pipeline.core.metrics import ClipScorer

    return ClipScorer(model)


def verdict(q: dict[str, float], cfg: GeneratePairsConfig) -> str | None:
    """None if the pair is kept, else the reason it is dropped."""
    if q["change"] < cfg.min_change or q["lpips"] < cfg.min_lpips:
        return "edit too weak"
    if q["change"] > cfg.max_change or q["lpips"] > cfg.max_lpips:
        return "edit destroyed the structure"
    if "clip_direction" in q and q["clip_direction"] < cfg.min_clip_direction:
        return "edit does not follow the instruction (directional CLIP)"
    return None


# ----------------------------------------------------------------------------- generation


def _run_shard(jobs: list[Job], teacher: Teacher, work: Path, cfg: GeneratePairsConfig, settings: dict) -> list[dict]:
    t0 = time.perf_counter()
    inputs = [load_rgb(j.source) for j in jobs]
    edited = teacher.edit(inputs, [j.prompt for j in jobs], [j.seed for j in jobs])
    teacher_s = (time.perf_counter() - t0) / max(1, len(jobs))  # timings are per pair, so resumes add up
    rows = []
    scores = quality_scores(inputs, edited, [j.prompt for j in jobs], cfg.clip_model)
    for job, src, out, q in zip(jobs, inputs, edited, scores):
        save_png(src, work / "input" / f"{job.id}.png")
        save_png(out, work / "edited" / f"{job.id}.png")
        rows.append(
            {
                "id": job.id,
                "input_image": f"input/{job.id}.png",
                "edit_prompt": job.prompt,
                "edited_image": f"edited/{job.id}.png",
                "seed": job.seed,
                "photo": job.photo,
                "split": job.split,
                **q,
                "rejected": verdict(q, cfg),
                "teacher_seconds": round(teacher_s, 5),
                "teacher": settings,
            }
        )
    total_s = (time.perf_counter() - t0) / max(1, len(jobs))  # teacher + quality scores + writing
    for r in rows:
        r["pair_seconds"] = round(total_s, 5)
    return rows


def generate_pairs(
    concept: str,
    ccfg: ConceptConfig,
    cfg: GeneratePairsConfig,
    teacher: Teacher,
    sources: Path,
    prompts: dict,
    out: Path,
    work_root: Path,
    code: str = "",
) -> dict:
    """Make all pairs for `concept` into `out` (swapped in atomically); return the summary. Finished shards
    are kept under `work_root` for a resume, keyed on the inputs and `code` (the stage's code hash)."""
    # 1. plan the work and find the checkpoint folder for exactly these inputs
    jobs = plan_jobs(concept, sources, prompts["instructions"], cfg.seed)
    settings = {"name": teacher.name, **teacher.settings()}
    src_manifest = hashlib.sha256((sources / "manifest.json").read_bytes()).hexdigest()
    with work_folder(work_root, concept, code, ccfg.model_dump(), cfg.model_dump(), prompts, src_manifest) as work:
        return _make_pairs(concept, ccfg, cfg, teacher, jobs, settings, out, work)


def _make_pairs(
    concept: str,
    ccfg: ConceptConfig,
    cfg: GeneratePairsConfig,
    teacher: Teacher,
    jobs: list[Job],
    settings: dict,
    out: Path,
    work: Path,
) -> dict:
    shards = work / "shards"
    shards.mkdir(parents=True, exist_ok=True)
    leftovers = list(work.rglob(".*.tmp"))  # a kill -9 mid-write leaves these behind; never read them
    for f in leftovers:
        f.unlink(missing_ok=True)
    if leftovers:
        log.info("%s: removed %d partial files left by an interrupted run", concept, len(leftovers))

    # 2. run the shards that are not finished yet
    n_shards = (len(jobs) + cfg.shard_size - 1) // cfg.shard_size
    done = {int(p.stem.split("-")[1]) for p in shards.glob("shard-*.jsonl")}
    resumed = sum(min(cfg.shard_size, len(jobs) - i * cfg.shard_size) for i in done)
    if done:
        log.info("%s: resuming, %d of %d shards already done", concept, len(done), n_shards)
    made = 0
    with bar(f"pairs {concept}", len(jobs), unit="pairs", completed=resumed) as b:
        for i in (i for i in range(n_shards) if i not in done):
            batch = jobs[i * cfg.shard_size : (i + 1) * cfg.shard_size]
            rows = _run_shard(batch, teacher, work, cfg, settings)
            atomic_write_text(shards / f"shard-{i:05d}.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
            made += len(batch)
            b.advance(len(batch))

    # 3. assemble the kept pairs into the output folder
    rows = [json.loads(line) for p in sorted(shards.glob("shard-*.jsonl")) for line in p.read_text().splitlines()]
    summary = _assemble(rows, work, out, concept, ccfg)
    teacher_s, total_s = sum(r["teacher_seconds"] for r in rows), sum(r["pair_seconds"] for r in rows)
    summary.update(
        {
            "made": made,
            "resumed": resumed,
            "teacher_seconds": round(teacher_s, 2),
            "seconds": round(total_s, 2),
            "teacher_pairs_per_second": round(len(rows) / teacher_s, 2) if teacher_s > 0 else None,
            "pairs_per_second": round(len(rows) / total_s, 2) if total_s > 0 else None,
        }
    )
    return summary


def _assemble(rows: list[dict], work: Path, out: Path, concept: str, ccfg: ConceptConfig) -> dict:
    import pandas as pd

    kept = [r for r in rows if r["rejected"] is None]
    with atomic_dir(out) as tmp:
        for sub in ("input", "edited"):
            (tmp / sub).mkdir()
        for r in kept:
            for col in ("input_image", "edited_image"):
                os.link(work / r[col], tmp / r[col]) if _same_fs(work, tmp) else shutil.copy2(
                    work / r[col], tmp / r[col]
                )
        atomic_write_text(tmp / "metadata.jsonl", "".join(json.dumps(_meta(r)) + "\n" for r in kept))
        flat = pd.DataFrame([{**_meta(r), "teacher": json.dumps(r["teacher"], sort_keys=True)} for r in kept])
        flat.to_parquet(tmp / "index.parquet", index=False)
        atomic_write_text(tmp / "rejected.jsonl", "".join(json.dumps(_meta(r)) + "\n" for r in rows if r["rejected"]))
    reasons: dict[str, int] = {}
    for r in rows:
        if r["rejected"]:
            reasons[r["rejected"]] = reasons.get(r["rejected"], 0) + 1
    lp = np.array([r["lpips"] for r in kept]) if kept else np.zeros(1)
    return {
        "concept": concept,
        "prompt": ccfg.prompt,
        "teacher": ccfg.teacher.kind,
        "pairs": len(rows),
        "kept": len(kept),
        **{f"kept_{split}": sum(r["split"] == split for r in kept) for split in SPLITS},
        "dropped": len(rows) - len(kept),
        "dropped_reasons": reasons,
        "lpips_mean": round(float(lp.mean()), 4),
        "lpips_min": round(float(lp.min()), 4),
        "lpips_max": round(float(lp.max()), 4),
    }


def _meta(r: dict) -> dict:
    """The stored row: everything but the internal id and the timing (which is not deterministic)."""
    return {k: v for k, v in r.items() if k not in ("id", "teacher_seconds", "pair_seconds")}


def _same_fs(a: Path, b: Path) -> bool:
    return os.stat(a).st_dev == os.stat(b).st_dev


def write_grid(folder: Path, out_png: Path, n: int = 8) -> None:
    """An image grid, input row over edited row, of `n` pairs from different photos (test, then val, then train)."""
    from PIL import Image

    rows, seen = [], set()
    order = {s: i for i, s in enumerate(reversed(SPLITS))}
    for r in sorted(read_pairs(folder), key=lambda r: (order.get(r["split"], len(order)), r["input_image"])):
        photo = photo_of(r)
        if photo not in seen:  # one crop per photo, so the grid shows different scenes
            seen.add(photo)
            rows.append(r)
    rows = rows[:n]
    if not rows:
        return
    ims = [(Image.open(r["input_path"]).convert("RGB"), Image.open(r["edited_path"]).convert("RGB")) for r in rows]
    s = ims[0][0].width
    grid = Image.new("RGB", (s * len(ims), 2 * s), "white")
    for i, (a, b) in enumerate(ims):
        grid.paste(a, (i * s, 0))
        grid.paste(b, (i * s, s))
    save_png(np.asarray(grid), out_png)


# ----------------------------------------------------------------------------- base concepts


def filter_concept(op: str) -> ConceptConfig:
    """A pool filter as a concept, with its default prompt."""
    return ConceptConfig(prompt=FILTER_PROMPTS[op], teacher={"kind": "filters", "op": op})


def generate_base_pairs(
    selection: dict,
    sources: Path,
    pcfg: GeneratePairsConfig,
    ecfg: ExpandPromptsConfig,
    out: Path,
    work: Path,
    code: str = "",
) -> dict:
    """Prompts and pairs for every base and calibration concept into `out/<concept>/`."""
    summaries = {}
    with atomic_dir(out) as tmp:
        for op in selection["base"] + selection["calibration"]:
            concept = filter_concept(op)
            prompts = expand_concept(op, concept, ecfg)
            s = generate_pairs(
                op, concept, pcfg, build_teacher(concept.teacher), sources, prompts, tmp / op, work, code
            )
            atomic_write_json(tmp / op / "prompts.json", prompts)
            summaries[op] = s
    return summaries
