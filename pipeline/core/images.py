"""Safe image loading, deterministic crops and the train/held-out split (by photo, never by crop)."""

from __future__ import annotations

import hashlib
import io
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline.core.errors import E2GANError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")  # what is read as a photo
MAX_PIXELS = 80_000_000  # refuse decompression bombs beyond ~80 MP


class ImageLoadError(E2GANError):
    """A file that is not a readable image, or too small to use."""


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode (L, LA, P, RGBA, CMYK, I;16, I, F, ...) -> 8-bit RGB; alpha composited on white."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def load_rgb(src: str | Path | BinaryIO, min_size: int = 0) -> np.ndarray:
    """Load an image file as an RGB uint8 array (H, W, 3), EXIF orientation applied.

    Raises ImageLoadError (naming the file) for unreadable files, and for images whose short side is
    below `min_size`.
    """
    name = str(src) if isinstance(src, (str, Path)) else getattr(src, "name", "<bytes>")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(src) as img:
                if img.width * img.height > MAX_PIXELS:
                    raise ImageLoadError(f"{name}: {img.width}x{img.height} is too large (>{MAX_PIXELS} pixels)")
                img.load()
                rgb = _to_rgb(ImageOps.exif_transpose(img))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombWarning) as e:
        if isinstance(e, ImageLoadError):
            raise
        raise ImageLoadError(f"{name}: not a readable image ({type(e).__name__}: {e})") from None
    if min(rgb.size) < min_size:
        raise ImageLoadError(f"{name}: {rgb.width}x{rgb.height} is smaller than data.min_size={min_size}")
    return np.asarray(rgb)


def probe(path: str | Path, min_size: int = 0) -> tuple[int, int]:
    """Cheap check (header + integrity, no full decode) that `path` is a usable image; returns (w, h)."""
    try:
        with Image.open(path) as img:
            size = img.size
            img.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageLoadError(f"{path}: not a readable image ({type(e).__name__}: {e})") from None
    if min(size) < min_size:
        raise ImageLoadError(f"{path}: {size[0]}x{size[1]} is smaller than data.min_size={min_size}")
    return size


def save_png(img: np.ndarray, path: str | Path) -> None:
    """Write an RGB uint8 array as PNG, atomically."""
    from pipeline.core.io import atomic_write_bytes

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def list_images(folder: str | Path) -> list[Path]:
    """Image files under `folder` (recursive), sorted for determinism."""
    folder = Path(folder)
    if not folder.is_dir():
        raise E2GANError(f"data.sources: {folder} is not a folder; set it to 'offline' or a folder of photos")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


# ----------------------------------------------------------------------------- crops and split


def stable_seed(*parts: object) -> int:
    """A seed from strings/ints that does not depend on Python's hash randomisation."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "little")


def random_crops(img: np.ndarray, size: int, n: int, seed: int) -> list[np.ndarray]:
    """`n` deterministic square crops of `size` px, each at a random scale (short side 1x-3x the crop).

    Resizing before cropping keeps big wallpapers from giving crops of tiny texture, and varied scales
    give the generator both close-ups and wide views.
    """
    rng = np.random.default_rng(seed)
    pil = Image.fromarray(img)
    if min(pil.size) > 3 * size:  # shrink once: every crop's scale is at most 3x the crop
        pil = pil.resize(
            (round(pil.width * 3 * size / min(pil.size)), round(pil.height * 3 * size / min(pil.size))), Image.LANCZOS
        )
    w, h = pil.size
    out = []
    for _ in range(n):
        short = int(min(min(h, w), size * rng.uniform(1.0, 3.0)))
        short = max(short, size)
        scale = short / min(h, w)
        rw, rh = max(size, round(w * scale)), max(size, round(h * scale))
        resized = np.asarray(pil.resize((rw, rh), Image.LANCZOS if scale < 1 else Image.BICUBIC))
        y, x = rng.integers(0, rh - size + 1), rng.integers(0, rw - size + 1)
        out.append(np.ascontiguousarray(resized[y : y + size, x : x + size]))
    return out


def center_crop(img: np.ndarray, size: int) -> np.ndarray:
    """Resize so the short side is `size`, then take the centre square."""
    h, w = img.shape[:2]
    scale = size / min(h, w)
    pil = Image.fromarray(img).resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.LANCZOS)
    arr = np.asarray(pil)
    y, x = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return np.ascontiguousarray(arr[y : y + size, x : x + size])


def split_photos(names: list[str], heldout_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Split photo names into (train, heldout) deterministically, by photo: crops of one photo never straddle."""
    ranked = sorted(names, key=lambda n: stable_seed("split", seed, n))
    n_held = max(1, round(len(ranked) * heldout_fraction)) if len(ranked) > 1 else 0
    held = sorted(ranked[:n_held])
    return sorted(ranked[n_held:]), held
