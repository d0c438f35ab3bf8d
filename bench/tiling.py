"""`e2gan apply` at a photo's own resolution: each concept's exported model run in overlapping, blended 256² tiles
(what `--fit tile` does) and squeezed to 256² and back (`--fit resize`), both against the same generator run on
the whole photo in torch (it takes any size that is a multiple of 16), on the test photos; and the largest step
between neighbouring columns on a flat gradient, tiled with and without blending, against the whole-image run's.

Run: python -m bench.tiling [--photos 8] [--max-side 640] [--overlap 64]
     ->  bench/results/tiling.json, bench/results/tiling.jpg (one test photo per concept: input, whole, tiled,
         resized; JPEG, quality 90)
Needs `dvc repro` first (the concepts' ONNX models, the base, the adapters and the test split).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.common import code_version, machine
from pipeline.config import load_params
from pipeline.core import assets
from pipeline.core.images import load_rgb
from pipeline.core.io import atomic_path, atomic_write_json
from pipeline.core.metrics import lpips_distance
from pipeline.core.progress import bar
from pipeline.core.tensors import array_to_image, image_to_array
from pipeline.deploy.export import concept_model
from pipeline.deploy.runtime import _resized, edit_tiled, load_runner
from pipeline.orchestrate.dvc import stage_paths


def test_photos(manifest: Path, n: int, max_side: int) -> dict[str, np.ndarray]:
    """The first `n` test photos (by name) at their own resolution, shrunk to `max_side` at most (the whole-image
    reference's attention grows with the square of the pixel count) and cropped to multiples of 16."""
    crops = json.loads(manifest.read_text())["crops"]
    names = sorted({c["photo"] for c in crops if c["split"] == "test"})[:n]
    paths = {e["name"]: Path(e["path"]) for e in assets.cached_photos()}
    out = {}
    for name in names:
        im = Image.fromarray(load_rgb(paths[name]))
        scale = min(1.0, max_side / max(im.size))
        im = im.resize((round(im.width * scale), round(im.height * scale)), Image.BICUBIC) if scale < 1 else im
        w, h = im.width // 16 * 16, im.height // 16 * 16
        out[name] = np.asarray(im)[:h, :w]
    return out


def whole(model, im: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return array_to_image(model(torch.from_numpy(image_to_array(im)))[0].numpy())


def max_step(img: np.ndarray) -> float:
    """The largest mean |difference| between neighbouring columns."""
    return float(np.abs(np.diff(img.astype(np.float64), axis=1)).mean(axis=(0, 2)).max())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=int, default=8)
    ap.add_argument("--max-side", type=int, default=640)
    ap.add_argument("--overlap", type=int, default=64)
    ap.add_argument("--out", type=Path, default=Path("bench/results/tiling.json"))
    args = ap.parse_args()
    concepts = list(load_params().concepts)
    photos = test_photos(stage_paths("prepare_sources")["out"] / "manifest.json", args.photos, args.max_side)
    ramp = np.tile(np.linspace(0, 255, 1024)[None, :, None], (256, 1, 3)).astype(np.uint8)
    result: dict = {
        "commit": code_version(),
        "machine": machine(),
        "overlap": args.overlap,
        "max_side": args.max_side,
        "photos": {k: list(v.shape[:2]) for k, v in photos.items()},
        "split": "test",
        "concepts": {},
    }
    panels = []
    with bar("tiling", len(concepts) * len(photos), unit="photo") as b:
        for concept in concepts:
            paths = stage_paths("export_onnx", concept)
            model, _ = concept_model(
                stage_paths("train_base")["out"],
                stage_paths("finetune_lora", concept)["out"],
                stage_paths("expand_prompts", concept)["out"] / "prompts.json",
            )
            run = load_runner(paths["out"] / "model.onnx")
            rows = []
            for name, im in photos.items():
                ref = whole(model, im)
                tiled, squeezed = edit_tiled(run, im, run.size, args.overlap), _resized(run, im, run.size)
                d_tiled, d_squeezed = lpips_distance([tiled, squeezed], [ref, ref])
                rows.append({"photo": name, "tiled": float(d_tiled), "resized": float(d_squeezed)})
                if name == next(iter(photos)):
                    panels.append(np.concatenate([im, ref, tiled, squeezed], 1))
                b.advance(1)
            ramp_ref = whole(model, ramp)
            result["concepts"][concept] = {
                "lpips_vs_whole": {
                    k: {"mean": float(np.mean([r[k] for r in rows])), "max": float(np.max([r[k] for r in rows]))}
                    for k in ("tiled", "resized")
                },
                "per_photo": rows,
                "gradient_max_step": {
                    "whole": max_step(ramp_ref),
                    "tiled": max_step(edit_tiled(run, ramp, run.size, args.overlap)),
                    "tiled_without_overlap": max_step(edit_tiled(run, ramp, run.size, 0)),
                },
            }
    atomic_write_json(args.out, result)
    with atomic_path(args.out.with_suffix(".jpg")) as tmp:
        Image.fromarray(np.concatenate(panels, 0)).save(tmp, format="JPEG", quality=90)
    print(json.dumps({c: v["lpips_vs_whole"] for c, v in result["concepts"].items()}, indent=1))


if __name__ == "__main__":
    main()
