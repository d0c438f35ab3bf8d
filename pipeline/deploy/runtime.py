"""Running an exported concept model on image files with onnxruntime (no torch at run time): `e2gan apply`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.core.errors import E2GANError
from pipeline.core.images import IMAGE_SUFFIXES, ImageLoadError, load_rgb
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
    skipped: list[str] = field(default_factory=list)


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


def image_files(inputs: list[Path]) -> list[Path]:
    """Images given directly or found (recursively) in the given folders."""
    files = [
        f
        for p in inputs
        for f in (sorted(x for x in p.rglob("*") if x.suffix.lower() in IMAGE_SUFFIXES) if p.is_dir() else [p])
    ]
    if not files:
        raise E2GANError(f"no images in {', '.join(map(str, inputs))} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    return files


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
    unreadable images, and with fit='refuse' images of another size, are skipped and counted."""
    from PIL import Image

    if fit not in FITS:
        raise E2GANError(f"--fit {fit!r}: use 'resize' or 'refuse'")
    files = image_files(inputs)
    single = len(files) == 1 and not any(p.is_dir() for p in inputs) and out.suffix.lower() in IMAGE_SUFFIXES
    sess = ort_session(model, threads)
    size = sess.get_inputs()[0].shape[-1]
    result = ApplyResult()
    with bar(desc, len(files), unit="img") as b:
        for f in files:
            b.advance(1)
            try:
                im = load_rgb(f)
            except ImageLoadError as e:
                result.skipped.append(f"{f}: {e}")
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
