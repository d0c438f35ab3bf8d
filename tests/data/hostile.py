"""A "hostile" photo folder: what a user's folder may really hold, each file with the outcome it must get."""

from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from tests.conftest import synthetic_photo

MIN_SIZE = 64  # data.min_size the folder is meant for: `small` files are below it
BIG = "phone_192mp.jpg"  # a 16000x12000 JPEG, like a 200 MP phone's: read downscaled
BIG_SIZE = (16000, 12000)


@dataclass
class Hostile:
    folder: Path
    outside: Path  # a folder next to it that only symlinks lead to; none of its photos may be read
    good: list[str] = field(default_factory=list)  # converted, everywhere (paths relative to folder)
    small: list[str] = field(default_factory=list)  # below MIN_SIZE: a skip in the stage, converted by apply
    bad: list[str] = field(default_factory=list)  # a named skip everywhere
    ignored: list[str] = field(default_factory=list)  # no photo suffix, or inside a hidden folder: not photos


def _bytes(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _png_header(w: int, h: int) -> bytes:
    """A PNG whose valid header declares w x h pixels, with almost no data behind it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    )


def _photo(seed: int, h: int = 96, w: int = 128) -> Image.Image:
    return Image.fromarray(synthetic_photo(h, w, seed=seed))


def _write(h: Hostile, rel: str, data: bytes, kind: str) -> None:
    path = h.folder / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    getattr(h, kind).append(rel)


def _good_files(h: Hostile) -> None:
    _write(h, "good.jpg", _bytes(_photo(0), "JPEG"), "good")
    _write(h, "sub/UPPER.JPG", _bytes(_photo(1), "JPEG"), "good")  # suffix case, sub-folder
    _write(h, "sub/deeper/mixed.Jpeg", _bytes(_photo(2), "JPEG"), "good")
    _write(h, "scan.tif", _bytes(_photo(3), "TIFF", save_all=True, append_images=[_photo(4)]), "good")  # 2 pages
    _write(h, "anim.png", _bytes(_photo(5), "PNG", save_all=True, append_images=[_photo(6), _photo(7)]), "good")
    _write(h, "jpeg_inside.png", _bytes(_photo(8), "JPEG"), "good")  # content, not suffix, decides
    _write(h, "gif_inside.png", _bytes(_photo(9).convert("P"), "GIF"), "good")
    _write(h, "cmyk.jpg", _bytes(_photo(10).convert("CMYK"), "JPEG"), "good")
    deep = (np.asarray(_photo(11).convert("L")).astype(np.uint16) * 257).astype(np.uint16)
    _write(h, "deep16.png", _bytes(Image.fromarray(deep), "PNG"), "good")
    _write(h, "palette_alpha.png", _bytes(_photo(12).convert("P"), "PNG", transparency=0), "good")
    exif = Image.Exif()
    exif[0x0112] = 6
    _write(h, "rotated.jpg", _bytes(_photo(13), "JPEG", exif=exif.tobytes()), "good")
    _write(h, "bad_exif.jpg", _bytes(_photo(14), "JPEG", exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff"), "good")
    _write(h, "album.jpg/inside.png", _bytes(_photo(15), "PNG"), "good")  # a folder named like a photo
    _write(h, os.fsdecode(b"caf\xe9.jpg"), _bytes(_photo(16), "JPEG"), "good")  # not valid UTF-8
    _write(h, BIG, _bytes(Image.new("RGB", BIG_SIZE, (90, 140, 200)), "JPEG", quality=30), "good")
    _write(h, "tiny.png", _bytes(_photo(17, 40, 40), "PNG"), "small")


def _bad_files(h: Hostile) -> None:
    full_png, full_jpg = _bytes(_photo(20), "PNG"), _bytes(_photo(21), "JPEG")
    _write(h, "text.jpg", b"<html>not an image</html>\n", "bad")
    _write(h, "empty.jpg", b"", "bad")
    _write(h, "truncated.png", full_png[: len(full_png) // 3], "bad")
    _write(h, "truncated.jpg", full_jpg[: len(full_jpg) // 3], "bad")
    _write(h, "garbage.png", b"\x89PNG\r\n\x1a\n" + np.random.default_rng(0).bytes(300), "bad")
    _write(h, "bomb.png", _png_header(100_000, 100_000), "bad")  # beyond PIL's limit even when raised
    _write(h, "bomb_mid.png", _png_header(30_000, 30_000), "bad")  # 900 MP: beyond the decode bound
    _write(h, "sub/corrupt.tif", b"II*\x00" + struct.pack("<IH", 8, 3) + b"\x00\x01\x04\x00" + b"\xff" * 10, "bad")
    _write(h, "eps.jpg", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 100 100\nshowpage\n", "bad")
    _write(h, "[red]markup[/red].jpg", b"not an image", "bad")  # printed verbatim, not as rich markup
    _write(h, "._good.jpg", b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ", "bad")  # AppleDouble
    _write(h, ".hidden.png", full_png, "bad")  # hidden files are skipped even when they are images
    os.mkfifo(h.folder / "pipe.jpg")  # opening it would block for ever
    h.bad.append("pipe.jpg")
    locked = "locked.jpg"
    _write(h, locked, full_jpg, "good" if os.geteuid() == 0 else "bad")  # root reads a mode-000 file anyway
    (h.folder / locked).chmod(0)


def _links(h: Hostile) -> None:
    h.outside.mkdir()
    (h.outside / "elsewhere.jpg").write_bytes(_bytes(_photo(30), "JPEG"))
    os.symlink(h.outside / "elsewhere.jpg", h.folder / "outside_link.jpg")
    os.symlink(h.outside, h.folder / "outside_dir")
    os.symlink("good.jpg", h.folder / "inside_link.jpg")  # within the folder: skipped too (read as itself)
    os.symlink("nowhere.jpg", h.folder / "broken_link.jpg")
    os.symlink(".", h.folder / "sub" / "loop")  # a cycle: never walked
    h.bad += ["outside_link.jpg", "outside_dir", "inside_link.jpg", "broken_link.jpg", "sub/loop"]


def _not_photos(h: Hostile) -> None:
    _write(h, ".DS_Store", b"\x00\x00\x00\x01Bud1" + b"\x00" * 40, "ignored")
    _write(h, "notes.txt", b"holiday 2024\n", "ignored")
    _write(h, "IMG_0001.HEIC", b"\x00\x00\x00\x18ftypheic", "ignored")
    (h.folder / ".git").mkdir()
    (h.folder / ".git" / "x.jpg").write_bytes(b"never read")
    h.ignored.append(".git")
    (h.folder / "sub" / "empty_dir").mkdir()


def build_hostile_folder(root: Path) -> Hostile:
    """`root/photos` with good, small, bad and non-photo files (see Hostile), and `root/outside`."""
    h = Hostile(folder=root / "photos", outside=root / "outside")
    h.folder.mkdir(parents=True)
    _good_files(h)
    _bad_files(h)
    _links(h)
    _not_photos(h)
    return h
