"""Safe image loading, deterministic crops and the train / val / test split (by photo, never by crop).

A photo folder may hold anything: every file is either loaded or skipped with an ImageLoadError that names
it and says why, never a traceback. Memory is bounded however large a file's header says the image is:
nothing is decoded beyond MAX_DECODE_PIXELS (JPEGs are decoded at 1/2, 1/4 or 1/8 scale to get there), and
what is returned is downscaled to at most MAX_PIXELS.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
import os
import stat
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError

from pipeline.core.errors import E2GANError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")  # what is read as a photo (any case)
# what a photo file may contain, whatever its suffix (JPEG includes MPO); never EPS (Ghostscript) or other
# exotic decoders
IMAGE_FORMATS = ("JPEG", "PNG", "BMP", "WEBP", "TIFF", "GIF")
# Loaded photos are downscaled (aspect kept) to at most this many pixels, 6144 x 6144 = 37.7 MP (108 MiB as
# RGB): 12-36 MP cameras and the 6000 px sample wallpapers load untouched, 48-200 MP phone photos are shrunk;
# nothing downstream uses more (crops are 128-256 px, `e2gan apply` runs the model at its input size).
MAX_PIXELS = 6144 * 6144
# Nothing is decoded at more than 2**27 = 134 MP (PIL holds 4 bytes a pixel: at most 512 MiB, plus the
# downscaled copy). JPEGs are decoded at up to 1/8 scale, so a 200 MP phone JPEG (16320 x 12240) decodes at
# 1/2 (50 MP); other formats must fit as they are. A larger header (a 100000 x 100000 JPEG, a 200 MP PNG)
# is a named skip before any pixel is allocated.
MAX_DECODE_PIXELS = 2**27
MAX_HEADER_PIXELS = 64 * MAX_DECODE_PIXELS  # PIL's own bomb limit while we read: anything beyond is refused
_JPEG = ("JPEG", "MPO")
_TRANSPOSE = {  # EXIF orientation -> the transpose that displays the stored pixels upright
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


class ImageLoadError(E2GANError):
    """A file that is not a readable image, or too small to use."""


# ----------------------------------------------------------------------------- loading

_limit_lock = threading.Lock()
_limit_users = 0
_pil_limit: int | None = None


@contextlib.contextmanager
def _decode_limits() -> Iterator[None]:
    """Raise PIL's decompression-bomb limit to MAX_HEADER_PIXELS while reading (restored after, thread-safe),
    with PIL's bomb warning an error; MAX_DECODE_PIXELS is checked by us once the decode size is known.
    PIL's notes on corrupt metadata ("Corrupt EXIF data") are silenced: the file is read or a named skip."""
    global _limit_users, _pil_limit
    with _limit_lock:
        if _limit_users == 0:
            _pil_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, MAX_HEADER_PIXELS
        _limit_users += 1
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    finally:
        with _limit_lock:
            _limit_users -= 1
            if _limit_users == 0:
                Image.MAX_IMAGE_PIXELS = _pil_limit


def _source_name(src: str | Path | BinaryIO) -> str:
    return str(src) if isinstance(src, (str, Path)) else getattr(src, "name", "<bytes>")


def _open(src: str | Path | BinaryIO, name: str) -> Image.Image:
    """Image.open restricted to IMAGE_FORMATS; a path must be a regular file (a FIFO would block for ever)."""
    if isinstance(src, (str, Path)):
        st = os.stat(src)  # FileNotFoundError / PermissionError: the caller names them
        if stat.S_ISDIR(st.st_mode):
            raise ImageLoadError(f"{name}: is a folder, not an image file")
        if not stat.S_ISREG(st.st_mode):
            raise ImageLoadError(f"{name}: not a regular file (a pipe, socket or device)")
        if st.st_size == 0:
            raise ImageLoadError(f"{name}: an empty file (0 bytes)")
    return Image.open(src, formats=IMAGE_FORMATS)


def _fit(size: tuple[int, int], limit: int) -> tuple[int, int]:
    """The largest size with the aspect ratio of `size` and at most `limit` pixels (or `size` if it fits)."""
    w, h = size
    if w * h <= limit:
        return size
    scale = math.sqrt(limit / (w * h))
    return max(1, int(w * scale)), max(1, int(h * scale))


def _decodable(img: Image.Image, name: str) -> None:
    """Pick the JPEG decode scale for the MAX_PIXELS target (draft, no pixels yet), then refuse a decode
    beyond MAX_DECODE_PIXELS before anything is allocated."""
    if img.format in _JPEG and img.width * img.height > MAX_PIXELS:
        img.draft(img.mode, _fit(img.size, MAX_PIXELS))
    if img.width * img.height > MAX_DECODE_PIXELS:
        hint = "" if img.format in _JPEG else "; a JPEG copy would load (JPEGs decode at down to 1/8 scale)"
        raise ImageLoadError(
            f"{name}: {img.width}x{img.height} ({img.width * img.height / 1e6:.0f} MP) is more than can be "
            f"decoded within the {MAX_DECODE_PIXELS / 1e6:.0f} MP memory bound{hint}"
        )


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation (1 = upright); unreadable EXIF counts as upright rather than losing the photo."""
    try:
        return int(img.getexif().get(0x0112, 1))
    except Exception:
        return 1


def _white_level(img: Image.Image) -> float | None:
    """For 16-bit, 32-bit integer and float modes, the value that maps to 255 (taken before any resampling)."""
    if img.mode.startswith("I;16"):
        return 65535.0
    if img.mode in ("I", "F"):
        return 65535.0 if (img.getextrema()[1] or 0) > 255 else 255.0
    return None


def _downscaled(img: Image.Image) -> Image.Image:
    """`img` (decoded) shrunk to at most MAX_PIXELS, aspect kept; modes PIL cannot resample well are widened."""
    if img.width * img.height <= MAX_PIXELS:
        return img
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA")
    elif img.mode == "1":
        img = img.convert("L")
    elif img.mode.startswith("I;16"):
        img = img.convert("I")
    img.thumbnail(_fit(img.size, MAX_PIXELS))
    return img


def _to_rgb(img: Image.Image, hi: float | None = None) -> Image.Image:
    """Any PIL mode (L, LA, P, RGBA, CMYK, I;16, I, F, ...) -> 8-bit RGB; alpha composited on white.

    `hi` is the white level of I;16/I/F images (65535 or 255; from the values when not given)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.array(img, dtype=np.float64)
        hi = hi or (65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0)
        arr /= hi
        arr *= 255.0
        arr += 0.5
        img = Image.fromarray(np.clip(arr, 0, 255, out=arr).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def _reason(e: BaseException) -> str:
    """Why a file could not be read, in words (whatever PIL, zlib, libjpeg or the OS raised)."""
    if isinstance(e, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return f"its header declares more pixels than are ever read ({MAX_HEADER_PIXELS / 1e9:.1f} gigapixels): {e}"
    if isinstance(e, UnidentifiedImageError):
        return f"not a readable image (not a {', '.join(IMAGE_FORMATS[:-1])} or {IMAGE_FORMATS[-1]} file)"
    if isinstance(e, FileNotFoundError):
        return "no such file"
    if isinstance(e, PermissionError):
        return f"cannot be read ({e.strerror or 'permission denied'})"
    if isinstance(e, MemoryError):
        return "not enough memory to decode it"
    detail = " ".join(str(e).split())[:200]
    return f"not a readable image ({type(e).__name__}{': ' + detail if detail else ''})"


def _check_size(name: str, size: tuple[int, int], min_size: int) -> None:
    if min(size) < min_size:
        raise ImageLoadError(f"{name}: {size[0]}x{size[1]} is smaller than data.min_size={min_size}")


def load_rgb(src: str | Path | BinaryIO, min_size: int = 0) -> np.ndarray:
    """Load an image file as an RGB uint8 array (H, W, 3), EXIF orientation applied, first frame only.

    Photos over MAX_PIXELS (37.7 MP) are downscaled to fit it, aspect ratio kept; decoding never holds more
    than MAX_DECODE_PIXELS (134 MP: about 0.5 GiB, a palette image widened to RGBA about 0.65 GiB). Raises
    ImageLoadError naming the file and the reason for anything that cannot be read (not an image, corrupt,
    truncated, unreadable, a header beyond the bound, a FIFO...) and for images whose short side is below
    `min_size` (the photo's own size, before any downscaling).
    """
    name = _source_name(src)
    try:
        with _decode_limits(), _open(src, name) as img:
            _check_size(name, img.size, min_size)
            orientation = _orientation(img)
            _decodable(img, name)
            img.load()
            hi = _white_level(img)
            small = _downscaled(img)
            if orientation in _TRANSPOSE:
                small = small.transpose(_TRANSPOSE[orientation])
            rgb = _to_rgb(small, hi)
    except ImageLoadError:
        raise
    except Exception as e:  # PIL, zlib and libjpeg raise OSError, ValueError, SyntaxError, struct.error, ...
        raise ImageLoadError(f"{name}: {_reason(e)}") from None
    return np.asarray(rgb)


def probe(path: str | Path, min_size: int = 0) -> tuple[int, int]:
    """Cheap check (header + integrity, no full decode) that `path` is a usable image; returns (w, h).

    The same refusals as load_rgb that can be made without decoding, as ImageLoadError naming the file."""
    try:
        with _decode_limits(), _open(path, str(path)) as img:
            size = img.size
            _decodable(img, str(path))
            img.verify()
    except ImageLoadError:
        raise
    except Exception as e:
        raise ImageLoadError(f"{path}: {_reason(e)}") from None
    _check_size(str(path), size, min_size)
    return size


def save_png(img: np.ndarray, path: str | Path) -> None:
    """Write an RGB uint8 array as PNG, atomically. zlib level 1: faster to write than PIL's default 6, for
    slightly larger files (lossless either way)."""
    from pipeline.core.io import atomic_write_bytes

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", compress_level=1)
    atomic_write_bytes(path, buf.getvalue())


# ----------------------------------------------------------------------------- photo folders


@dataclass
class FolderScan:
    """A photo folder's contents: photo files to read, named skips (path, reason) and non-photo files."""

    files: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    ignored: list[Path] = field(default_factory=list)  # no photo suffix (.txt, .mov, .heic, .DS_Store), hidden folders


def _symlink_reason(path: Path, root: Path) -> str:
    try:
        target = path.resolve(strict=True)
    except (OSError, RuntimeError):  # dangling, or a loop of links
        return f"{path}: a broken symlink (to {os.readlink(path)}), skipped"
    if target != root and root not in target.parents:
        return f"{path}: a symlink to {target}, outside the folder; links are not followed out of it, skipped"
    return f"{path}: a symlink within the folder (to {target}); links are not followed, the target is read as itself"


def _classify(path: Path, root: Path, scan: FolderScan) -> None:
    """One entry that os.walk lists as a file: a photo, a named skip, or ignored."""
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        scan.ignored.append(path)
    elif path.name.startswith("."):
        scan.skipped.append((path, f"{path}: a hidden file (a dot name, like macOS '._' metadata), skipped"))
    elif path.is_symlink():
        scan.skipped.append((path, _symlink_reason(path, root)))
    elif not path.is_file():
        scan.skipped.append((path, f"{path}: not a regular file (a pipe, socket or device), skipped"))
    else:
        scan.files.append(path)


def scan_images(folder: str | Path) -> FolderScan:
    """Photo files under `folder` (recursive, sorted) by suffix, any case; the rest named.

    Symlinks (to files or folders, inside the folder or out, dangling or looping) are never followed: each is
    a named skip, as are hidden files with a photo suffix (e.g. AppleDouble '._x.jpg'), pipes and devices,
    and folders that cannot be listed. Hidden folders (.git, .thumbnails) are not entered. Whether a photo
    file decodes is for load_rgb/probe to say.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise E2GANError(f"data.sources: {folder} is not a folder; set it to 'offline' or a folder of photos")
    root, scan = folder.resolve(), FolderScan()

    def unlistable(e: OSError) -> None:
        scan.skipped.append((Path(e.filename), f"{e.filename}: a folder that cannot be listed ({e.strerror})"))

    for here, dirs, files in os.walk(folder, onerror=unlistable):
        keep = []
        for d in sorted(dirs):
            sub = Path(here) / d
            if sub.is_symlink():
                scan.skipped.append((sub, _symlink_reason(sub, root)))
            elif d.startswith("."):
                scan.ignored.append(sub)
            else:
                keep.append(d)
        dirs[:] = keep
        for f in files:
            _classify(Path(here) / f, root, scan)
    scan.files.sort()
    return scan


def list_images(folder: str | Path) -> list[Path]:
    """Image files under `folder` (recursive), sorted for determinism; see scan_images for what is left out."""
    return scan_images(folder).files


# ----------------------------------------------------------------------------- crops and split


def stable_seed(*parts: object) -> int:
    """A seed from strings/ints that does not depend on Python's hash randomisation."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode("utf-8", "surrogateescape")).digest()
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


SPLITS = ("train", "val", "test")  # train: fitting; val: every choice; test: every reported figure


class SplitError(E2GANError):
    """Too few photos to fill train, val and test."""


def split_photos(names: list[str], val_fraction: float, test_fraction: float, seed: int) -> dict[str, list[str]]:
    """Split photo names into {"train", "val", "test"} by photo, so crops of one photo never cross splits.

    Photos are ranked by a hash of (seed, name), so the split depends on the seed and the names only, not on
    their order. The first round(n * test_fraction) are test, the next round(n * val_fraction) val, the rest
    train; each split gets at least one photo (val and test shrink, larger first, to leave one for train).
    Raises SplitError for fewer than 3 photos."""
    if len(names) < 3:
        raise SplitError(
            f"data: {len(names)} usable photo(s) cannot fill train, val and test (3 needed); "
            "add photos or lower data.min_size"
        )
    ranked = sorted(names, key=lambda n: stable_seed("split", seed, n))
    n_test, n_val = max(1, round(len(ranked) * test_fraction)), max(1, round(len(ranked) * val_fraction))
    while n_test + n_val > len(ranked) - 1:
        n_test, n_val = (n_test - 1, n_val) if n_test >= n_val else (n_test, n_val - 1)
    return {
        "train": sorted(ranked[n_test + n_val :]),
        "val": sorted(ranked[n_test : n_test + n_val]),
        "test": sorted(ranked[:n_test]),
    }
