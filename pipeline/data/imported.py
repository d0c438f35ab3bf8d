"""Pairs made elsewhere (teacher kind `pairs`): a folder of `input/` + `edited/` images matched by name, a
`metadata.jsonl` in the InstructPix2Pix columns, or a Hugging Face dataset with those columns.

They go through what the pipeline's own pairs go through: split by photo (each input image is a photo, with
`data`'s fractions and seed), the same crops of the input and its edit (`data.image_size`,
`data.crops_per_photo` / `eval_crops_per_photo`), the same quality filter, the same output folder. Missing,
mismatched and unreadable pairs are skipped, counted and named in the metrics.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pipeline.core.errors import E2GANError
from pipeline.core.images import (
    IMAGE_SUFFIXES,
    ImageLoadError,
    load_rgb,
    random_crops,
    save_png,
    split_photos,
    stable_seed,
)
from pipeline.core.io import work_folder
from pipeline.core.progress import progress

log = logging.getLogger(__name__)

INPUT_COLUMNS = ("input_image", "original_image")  # e2gan / diffusers' script, the InstructPix2Pix dataset
EDITED_COLUMNS = ("edited_image",)
PROMPT_COLUMNS = ("edit_prompt",)
ASPECT_TOLERANCE = 0.02  # an edit at another size but the same shape is resized to its input; else skipped


class PairsSourceError(E2GANError):
    """The `pairs` source cannot be read at all (a single bad pair is a counted skip instead)."""


@dataclass
class Found:
    name: str  # the photo: pairs of one name never cross splits
    load_input: Any  # () -> np.ndarray
    load_edited: Any
    prompt: str | None = None


def _first(row: dict, columns: tuple[str, ...]) -> Any:
    return next((row[c] for c in columns if c in row and row[c] is not None), None)


def _from_folder(root: Path, skips: list[dict]) -> list[Found]:
    def images(d: Path) -> dict[str, Path]:
        return {p.stem: p for p in sorted(d.iterdir()) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES}

    ins, eds = images(root / "input"), images(root / "edited")
    for name in sorted(set(ins) - set(eds)):
        skips.append({"pair": name, "reason": f"no edited image for input/{ins[name].name}"})
    for name in sorted(set(eds) - set(ins)):
        skips.append({"pair": name, "reason": f"no input image for edited/{eds[name].name}"})
    return [Found(n, _loader(ins[n]), _loader(eds[n])) for n in sorted(set(ins) & set(eds))]


def _loader(path: Path):
    return lambda: load_rgb(path)


def _from_jsonl(path: Path, skips: list[dict]) -> list[Found]:
    root, found, names = path.parent, [], set()
    for i, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            skips.append({"pair": f"line {i}", "reason": f"not JSON ({e.msg})"})
            continue
        src, dst = _first(row, INPUT_COLUMNS), _first(row, EDITED_COLUMNS)
        if not isinstance(src, str) or not isinstance(dst, str):
            skips.append({"pair": f"line {i}", "reason": f"needs {INPUT_COLUMNS[0]} and {EDITED_COLUMNS[0]} paths"})
            continue
        a, b = (root / src).resolve(), (root / dst).resolve()
        if not (a.is_relative_to(root.resolve()) and b.is_relative_to(root.resolve())):
            skips.append({"pair": f"line {i}", "reason": "an image path leaves the dataset folder"})
            continue
        name = str(row.get("photo") or Path(src).stem)
        if name in names:
            name = f"{name}#{i}"
        names.add(name)
        found.append(Found(name, _loader(a), _loader(b), _first(row, PROMPT_COLUMNS)))
    return found


def _from_hub(dataset_id: str, split: str, skips: list[dict]) -> list[Found]:
    try:
        import datasets
    except ImportError:
        raise PairsSourceError(
            f"teacher.source {dataset_id!r} is not a local folder; reading a Hugging Face dataset needs "
            "`pip install datasets` (and a reachable hub), or download it and give the folder"
        ) from None
    try:
        ds = datasets.load_dataset(dataset_id, split=split)
    except Exception as e:  # noqa: BLE001 - any hub/network/format failure is one line for the user
        raise PairsSourceError(
            f"teacher.source: cannot load the dataset {dataset_id!r} ({type(e).__name__}: {e})"
        ) from None
    found = []
    for i, row in enumerate(ds):
        src, dst = _first(row, INPUT_COLUMNS), _first(row, EDITED_COLUMNS)
        if src is None or dst is None:
            skips.append({"pair": f"row {i}", "reason": f"needs {INPUT_COLUMNS[0]} and {EDITED_COLUMNS[0]} images"})
            continue
        found.append(
            Found(
                f"row{i:06d}",
                lambda im=src: np.asarray(im.convert("RGB")),
                lambda im=dst: np.asarray(im.convert("RGB")),
                _first(row, PROMPT_COLUMNS),
            )
        )
    return found


def find_pairs(source: str, split: str = "train") -> tuple[list[Found], list[dict]]:
    """The pairs a `pairs` teacher's source holds, and the ones skipped while listing them."""
    skips: list[dict] = []
    path = Path(source).expanduser()
    if path.is_file() and path.name.endswith(".jsonl"):
        return _from_jsonl(path, skips), skips
    if path.is_dir():
        if (path / "metadata.jsonl").is_file():
            return _from_jsonl(path / "metadata.jsonl", skips), skips
        if (path / "input").is_dir() and (path / "edited").is_dir():
            return _from_folder(path, skips), skips
        raise PairsSourceError(
            f"teacher.source {source!r}: a pairs folder holds input/ and edited/ (images matched by name) or a "
            "metadata.jsonl with input_image, edited_image (and edit_prompt) columns"
        )
    if "/" in source and not source.startswith((".", "/", "~")) and not path.exists():
        return _from_hub(source, split, skips), skips
    raise PairsSourceError(f"teacher.source {source!r}: no such folder or file; give the folder of your pairs")


def _aligned(a: np.ndarray, b: np.ndarray) -> np.ndarray | None:
    """`b` at `a`'s size when they have the same shape (within ASPECT_TOLERANCE), else None."""
    if a.shape[:2] == b.shape[:2]:
        return b
    ra, rb = a.shape[1] / a.shape[0], b.shape[1] / b.shape[0]
    if abs(ra - rb) / ra > ASPECT_TOLERANCE:
        return None
    return np.asarray(Image.fromarray(b).resize((a.shape[1], a.shape[0]), Image.Resampling.LANCZOS))


def source_digest(found: list[Found]) -> str:
    """A hash of the pairs' names and pixels (the metrics record it: a changed folder shows in `dvc metrics diff`)."""
    h = hashlib.sha256()
    for f in found:
        h.update(f.name.encode())
        for load in (f.load_input, f.load_edited):
            try:
                h.update(hashlib.sha256(load().tobytes()).digest())
            except ImageLoadError:
                h.update(b"unreadable")
    return h.hexdigest()


def crops(found: list[Found], data_cfg, skips: list[dict]) -> Iterator[tuple[Found, str, int, np.ndarray, np.ndarray]]:
    """(pair, split, k, input crop, edited crop) for every readable pair, split by photo."""
    loaded = []
    for f in progress(found, "reading pairs"):
        try:
            a, b = f.load_input(), f.load_edited()
        except ImageLoadError as e:
            skips.append({"pair": f.name, "reason": str(e)})
            continue
        if min(a.shape[:2]) < data_cfg.min_size:
            skips.append(
                {
                    "pair": f.name,
                    "reason": f"input {a.shape[1]}x{a.shape[0]} is below data.min_size {data_cfg.min_size}",
                }
            )
            continue
        b2 = _aligned(a, b)
        if b2 is None:
            skips.append(
                {
                    "pair": f.name,
                    "reason": f"edit {b.shape[1]}x{b.shape[0]} has another shape than its input {a.shape[1]}x{a.shape[0]}",
                }
            )
            continue
        loaded.append((f, a, b2))
    if not loaded:
        raise PairsSourceError(
            f"teacher.source: no usable pairs ({len(skips)} skipped; first: {skips[0]['reason'] if skips else 'none found'})"
        )
    splits = split_photos([f.name for f, _, _ in loaded], data_cfg.val_fraction, data_cfg.test_fraction, data_cfg.seed)
    split_of = {n: s for s, names in splits.items() for n in names}
    for f, a, b in loaded:
        split = split_of[f.name]
        n = data_cfg.crops_per_photo if split == "train" else data_cfg.eval_crops_per_photo
        seed = stable_seed(data_cfg.seed, f.name)
        for k, (ca, cb) in enumerate(
            zip(random_crops(a, data_cfg.image_size, n, seed), random_crops(b, data_cfg.image_size, n, seed))
        ):
            yield f, split, k, ca, cb


def import_pairs(concept: str, ccfg, cfg, data_cfg, prompts: dict, out: Path, work_root: Path, code: str = "") -> dict:
    """The `pairs` concept's pairs into `out` (the layout generate_pairs writes); return its summary."""
    from pipeline.data.pairs import _assemble, quality_scores, verdict

    t0 = time.perf_counter()
    tcfg = ccfg.teacher
    found, skips = find_pairs(tcfg.source, tcfg.split)
    digest = source_digest(found)
    instructions = prompts["instructions"]
    settings = {"name": "pairs", **tcfg.model_dump(), "source_sha256": digest}
    with work_folder(
        work_root, concept, code, ccfg.model_dump(), cfg.model_dump(), data_cfg.model_dump(), prompts, digest
    ) as work:
        rows: list[dict] = []
        batch: list[tuple] = []

        def flush():
            ins, eds = [x[3] for x in batch], [x[4] for x in batch]
            for (f, split, _k, a, b, prompt, pid), q in zip(batch, quality_scores(ins, eds, None, cfg.clip_model)):
                save_png(a, work / "input" / f"{pid}.png")
                save_png(b, work / "edited" / f"{pid}.png")
                rows.append(
                    {
                        "id": pid,
                        "input_image": f"input/{pid}.png",
                        "edit_prompt": prompt,
                        "edited_image": f"edited/{pid}.png",
                        "seed": stable_seed(concept, pid, cfg.seed),
                        "photo": f.name,
                        "split": split,
                        **q,
                        "rejected": verdict(q, cfg),
                        "teacher": settings,
                    }
                )
            batch.clear()

        for f, split, k, a, b in crops(found, data_cfg, skips):
            pid = f"{_safe(f.name)}_{k:02d}"
            prompt = f.prompt or instructions[stable_seed(concept, pid, cfg.seed) % len(instructions)]
            batch.append((f, split, k, a, b, prompt, pid))
            if len(batch) >= 32:
                flush()
        if batch:
            flush()
        summary = _assemble(rows, work, out, concept, ccfg)
    seconds = time.perf_counter() - t0
    summary.update(
        {
            "source": tcfg.source,
            "source_sha256": digest,
            "source_pairs": len(found),
            "skipped": len(skips),
            "skipped_pairs": skips,
            "seconds": round(seconds, 2),
        }
    )
    for s in skips:
        log.warning("%s: skipped %s: %s", concept, s["pair"], s["reason"])
    return summary


def _safe(name: str) -> str:
    """A file-name-safe form of a pair's name."""
    keep = "".join(c if c.isascii() and (c.isalnum() or c in "-_") else "_" for c in name)[:60]
    return keep if keep == name else f"{keep}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"
