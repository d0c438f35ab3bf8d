"""Running an exported concept model on image files (`e2gan apply`): onnxruntime (no torch at run time), the
ExecuTorch runtime or the LiteRT interpreter, at each photo's own resolution.

The models take a fixed 1x3xSxS input. A larger photo is edited in overlapping SxS tiles whose outputs are blended
with weights that fall to zero towards each tile's edges, so no tile border shows; a smaller side is reflect-padded
up to S and cropped back. The generator's transformer block attends within a tile and its instance norms measure
a tile's statistics, so a tiled result is close to, not equal to, a whole-image run (docs/deploy.md has the figures).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.core.errors import E2GANError
from pipeline.core.images import IMAGE_SUFFIXES, FolderScan, ImageLoadError, load_rgb, scan_images
from pipeline.core.io import atomic_path
from pipeline.core.progress import bar
from pipeline.core.slug import check_slug
from pipeline.core.tensors import array_to_image, image_to_array
from pipeline.deploy.export import check_onnx

VARIANTS = {"fp32": "model.onnx", "fp16": "model_fp16.onnx", "int8": "model_int8.onnx"}
# runtime -> variant -> file name in the concept's folder (onnx: export_onnx's, the others: export_mobile's)
RUNTIME_FILES = {
    "onnx": VARIANTS,
    "executorch": {"fp32": "model.pte", "int8": "model_int8.pte"},
    "litert": {"fp32": "model.tflite", "int8": "model_int8.tflite"},
}
STAGE = {"onnx": "export_onnx", "executorch": "export_mobile", "litert": "export_mobile"}
SUFFIX_RUNTIME = {".onnx": "onnx", ".pte": "executorch", ".tflite": "litert"}
FITS = ("tile", "resize", "refuse")


@dataclass
class ApplyResult:
    written: int = 0
    skipped: list[str] = field(default_factory=list)  # one line per file: its path and why
    ignored: list[Path] = field(default_factory=list)  # files in the folders without a photo suffix


def model_path(models: Path, concept: str, variant: str, runtime: str = "onnx") -> Path:
    """The concept's exported model file for a runtime, checked; errors name the stage that makes it."""
    check_slug(concept)
    files = RUNTIME_FILES.get(runtime)
    if files is None:
        raise E2GANError(f"--runtime {runtime!r}: use {', '.join(RUNTIME_FILES)}")
    name = files.get(variant)
    if name is None:
        raise E2GANError(f"--variant {variant!r} with --runtime {runtime}: use {', '.join(files)}")
    model = models / concept / name
    if not model.is_file():
        known = sorted(p.name for p in models.iterdir() if (p / name).is_file()) if models.is_dir() else []
        opt_in = f"add {runtime} to export_mobile.formats in params.yaml, then " if runtime != "onnx" else ""
        raise E2GANError(
            f"{model}: no exported model for concept {concept!r}; {opt_in}run 'dvc repro {STAGE[runtime]}@{concept}'"
            + (f" (exported: {', '.join(known)})" if known else "")
        )
    if runtime == "onnx":
        check_onnx(model)
    return model


def image_files(inputs: list[Path]) -> FolderScan:
    """Images given directly or found (recursively) in the given folders; in folders, symlinks, hidden files
    and pipes are named skips and files without a photo suffix are ignored (see scan_images)."""
    found = FolderScan()
    for p in inputs:
        if p.is_dir():
            scan = scan_images(p)
            found.files += scan.files
            found.skipped += scan.skipped
            found.ignored += scan.ignored
        else:
            found.files.append(p)  # named on the command line: read (or skipped by load_rgb), whatever it is
    if not found.files:
        why = f"; skipped: {'; '.join(r for _, r in found.skipped[:3])}" if found.skipped else ""
        raise E2GANError(
            f"no images in {', '.join(map(str, inputs))} (looked for {', '.join(sorted(IMAGE_SUFFIXES))}){why}"
        )
    return found


def _resized(run, im: np.ndarray, size: int) -> np.ndarray:
    """One photo squeezed to the model's input and stretched back (the --fit resize path)."""
    from PIL import Image

    h, w = im.shape[:2]
    x = np.asarray(Image.fromarray(im).resize((size, size), Image.BICUBIC)) if (h, w) != (size, size) else im
    y = array_to_image(run(image_to_array(x))[0])
    return np.asarray(Image.fromarray(y).resize((w, h), Image.BICUBIC)) if (h, w) != (size, size) else y


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Tile offsets along one side: a step of tile - overlap, the last tile flush with the end."""
    if length <= tile:
        return [0]
    step = tile - overlap
    starts = list(range(0, length - tile, step))
    return starts + [length - tile]


def tile_weights(tile: int, overlap: int) -> np.ndarray:
    """(tile, tile) blending weights: a raised-cosine ramp over `overlap` pixels at every edge, 1 inside,
    never 0 (a pixel at the photo's border is covered by one tile only, and normalisation makes that 1)."""
    ramp = np.ones(tile)
    if overlap:
        r = 0.5 - 0.5 * np.cos(np.pi * (np.arange(overlap) + 0.5) / overlap)
        ramp[:overlap], ramp[-overlap:] = r, r[::-1]
    return np.maximum(np.outer(ramp, ramp), 1e-3)


def edit_tiled(run, im: np.ndarray, size: int, overlap: int, advance=None) -> np.ndarray:
    """A photo of any size through a fixed SxS model in overlapping tiles, blended; sides below S are
    reflect-padded up to S and cropped back."""
    if not 0 <= overlap <= size // 2:
        raise E2GANError(f"--overlap {overlap}: use 0 to {size // 2} pixels (the model's tiles are {size}x{size})")
    h, w = im.shape[:2]
    ph, pw = max(0, size - h), max(0, size - w)
    x = np.pad(im, ((0, ph), (0, pw), (0, 0)), mode="reflect" if min(h, w) > 1 else "edge") if ph or pw else im
    H, W = x.shape[:2]
    acc = np.zeros((H, W, 3))
    norm = np.zeros((H, W, 1))
    weight = tile_weights(size, overlap)[:, :, None]
    for top in tile_starts(H, size, overlap):
        for left in tile_starts(W, size, overlap):
            y = run(image_to_array(x[top : top + size, left : left + size]))[0]  # (3, S, S) in [-1, 1]
            acc[top : top + size, left : left + size] += (np.transpose(y, (1, 2, 0)) + 1) * 127.5 * weight
            norm[top : top + size, left : left + size] += weight
            if advance is not None:
                advance()
    return np.clip(np.rint(acc / norm), 0, 255).astype(np.uint8)[:h, :w]


def tiles_for(shape: tuple[int, ...], size: int, overlap: int) -> int:
    h, w = max(shape[0], size), max(shape[1], size)
    return len(tile_starts(h, size, overlap)) * len(tile_starts(w, size, overlap))


def load_runner(model: Path, threads: int = 0):
    """An exported model (.onnx, .pte or .tflite) as a callable (1, 3, S, S) -> (1, 3, S, S) with `.size`."""
    from pipeline.deploy import mobile

    fmt = SUFFIX_RUNTIME.get(Path(model).suffix)
    if fmt is None:
        raise E2GANError(f"{model}: not a model e2gan apply runs ({', '.join(SUFFIX_RUNTIME)})")
    return mobile.runner(fmt, model, threads)


def apply_model(
    model: Path,
    inputs: list[Path],
    out: Path,
    fit: str = "tile",
    threads: int = 0,
    desc: str = "apply",
    overlap: int | None = None,
) -> ApplyResult:
    """Run `model` (.onnx, .pte or .tflite) on every image of `inputs`, writing PNGs under `out` (or to `out` for
    one image file) at each image's own size: fit='tile' (overlapping tiles, blended), 'resize' (squeezed to the
    model's input and back: blurry for large photos) or 'refuse' (images of another size are skipped). Unreadable
    images are named skips, with the reason; the others are still written."""
    from PIL import Image

    if fit not in FITS:
        raise E2GANError(f"--fit {fit!r}: use {', '.join(map(repr, FITS))}")
    found = image_files(inputs)
    files = found.files
    single = len(files) == 1 and not any(p.is_dir() for p in inputs) and out.suffix.lower() in IMAGE_SUFFIXES
    run = load_runner(model, threads)
    size = run.size
    overlap = size // 4 if overlap is None else overlap  # 64 pixels for the usual 256
    result = ApplyResult(skipped=[reason for _, reason in found.skipped], ignored=found.ignored)
    with bar(desc, len(files), unit="img") as b:
        for f in files:
            try:
                im = load_rgb(f)
            except ImageLoadError as e:  # names the file
                result.skipped.append(str(e))
                b.advance(1)
                continue
            if im.shape[:2] != (size, size) and fit == "refuse":
                result.skipped.append(
                    f"{f}: {im.shape[1]}x{im.shape[0]}, the model takes {size}x{size} (use --fit tile)"
                )
                b.advance(1)
                continue
            root = next((p for p in inputs if p.is_dir() and p in f.parents), None)
            dest = out if single else out / (f.relative_to(root) if root else Path(f.name)).with_suffix(".png")
            if fit == "tile":
                n = tiles_for(im.shape, size, overlap)
                edited = edit_tiled(run, im, size, overlap, advance=lambda n=n: b.advance(1 / n))
            else:
                edited = _resized(run, im, size)
                b.advance(1)
            with atomic_path(dest) as tmp:
                Image.fromarray(edited).save(tmp, format="PNG")
            result.written += 1
    return result
