"""Running an exported concept model on image files with onnxruntime (no torch at run time): `e2gan apply`."""

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
from pipeline.deploy.export import check_onnx, ort_session

VARIANTS = {"fp32": "model.onnx", "fp16": "model_fp16.onnx", "int8": "model_int8.onnx"}
FITS = ("resize", "refuse")


@dataclass
class ApplyResult:
    written: int = 0
    skipped: list[str] = field(default_factory=list)  # one line per file: its path and why
    ignored: list[Path] = field(default_factory=list)  # files in the folders without a photo suffix


def model_path(models: Path, concept: str, variant: str) -> Path:
    """The concept's exported model file, checked; errors name the stage that makes it."""
    check_slug(concept)
    name = VARIANTS.get(variant)
    if name is None:
        raise E2GANError(f"--variant {variant!r}: use {', '.join(VARIANTS)}")
    model = models / concept / name
    if not model.is_file():
        known = sorted(p.name for p in models.iterdir() if (p / "model.onnx").is_file()) if models.is_dir() else []
        raise E2GANError(
            f"{model}: no exported model for concept {concept!r}; run 'dvc repro export_onnx@{concept}'"
            + (f" (exported: {', '.join(known)})" if known else "")
        )
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


def _edit(sess, im: np.ndarray, size: int) -> np.ndarray:
    """One photo through the fixed-size model: resized to its input and back when the sizes differ."""
    from PIL import Image

    h, w = im.shape[:2]
    x = np.asarray(Image.fromarray(im).resize((size, size), Image.BICUBIC)) if (h, w) != (size, size) else im
    y = array_to_image(sess.run(None, {"image": image_to_array(x)})[0][0])
    return np.asarray(Image.fromarray(y).resize((w, h), Image.BICUBIC)) if (h, w) != (size, size) else y


def apply_model(
    model: Path, inputs: list[Path], out: Path, fit: str = "resize", threads: int = 0, desc: str = "apply"
) -> ApplyResult:
    """Run `model` on every image of `inputs`, writing PNGs under `out` (or to `out` for one image file);
    unreadable images (named, with the reason; the others are still written), and with fit='refuse' images
    of another size, are skipped and counted."""
    from PIL import Image

    if fit not in FITS:
        raise E2GANError(f"--fit {fit!r}: use 'resize' or 'refuse'")
    found = image_files(inputs)
    files = found.files
    single = len(files) == 1 and not any(p.is_dir() for p in inputs) and out.suffix.lower() in IMAGE_SUFFIXES
    sess = ort_session(model, threads)
    size = sess.get_inputs()[0].shape[-1]
    result = ApplyResult(skipped=[reason for _, reason in found.skipped], ignored=found.ignored)
    with bar(desc, len(files), unit="img") as b:
        for f in files:
            b.advance(1)
            try:
                im = load_rgb(f)
            except ImageLoadError as e:  # names the file
                result.skipped.append(str(e))
                continue
            if im.shape[:2] != (size, size) and fit == "refuse":
                result.skipped.append(
                    f"{f}: {im.shape[1]}x{im.shape[0]}, the model takes {size}x{size} (use --fit resize)"
                )
                continue
            root = next((p for p in inputs if p.is_dir() and p in f.parents), None)
            dest = out if single else out / (f.relative_to(root) if root else Path(f.name)).with_suffix(".png")
            with atomic_path(dest) as tmp:
                Image.fromarray(_edit(sess, im, size)).save(tmp, format="PNG")
            result.written += 1
    return result
