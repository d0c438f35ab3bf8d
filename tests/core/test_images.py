"""Image loading (modes, EXIF, size, corrupt files, memory bounds), photo folders (symlinks, hidden files),
deterministic crops and the train / val / test split by photo."""

from __future__ import annotations

import builtins
import io
import os
import struct
import time

import numpy as np
import pytest
from PIL import Image, ImageFile

from pipeline.core import images
from pipeline.core.images import (
    SPLITS,
    ImageLoadError,
    SplitError,
    center_crop,
    list_images,
    load_rgb,
    probe,
    random_crops,
    split_photos,
)
from tests.conftest import synthetic_photo
from tests.data.hostile import _png_header


def _encoded(img: Image.Image, fmt: str = "PNG", **kw) -> io.BytesIO:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    buf.seek(0)
    return buf


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16", "RGB"])
def test_any_mode_becomes_rgb_uint8(mode):
    base = Image.fromarray(synthetic_photo(40, 60))
    img = (
        base.convert(mode)
        if mode != "I;16"
        else Image.fromarray((np.asarray(base.convert("L")).astype(np.uint16) * 257))
    )
    fmt = "TIFF" if mode in ("CMYK", "I;16") else "PNG"
    out = load_rgb(_encoded(img, fmt))
    assert out.dtype == np.uint8 and out.shape == (40, 60, 3)
    if mode in ("L", "I;16"):
        assert np.array_equal(out[..., 0], out[..., 1])
        assert abs(int(out.mean()) - int(np.asarray(base.convert("L")).mean())) <= 1


def _red_corners(out: np.ndarray) -> set[str]:
    h, w = out.shape[:2]
    corners = {
        "top-left": out[:8, :8],
        "top-right": out[:8, w - 8 :],
        "bottom-left": out[h - 8 :, :8],
        "bottom-right": out[h - 8 :, w - 8 :],
    }
    return {k for k, v in corners.items() if v[..., 0].mean() > 200 and v[..., 1].mean() < 60}


@pytest.mark.parametrize("shrink", [False, True], ids=["as-is", "downscaled"])
@pytest.mark.parametrize(("orientation", "corner"), [(3, "bottom-right"), (6, "top-right"), (8, "bottom-left")])
def test_exif_orientation_puts_the_marker_where_it_is_displayed(monkeypatch, orientation, corner, shrink):
    """A red top-left corner in the stored pixels lands where a viewer shows it (6 = turn 90 deg clockwise)."""
    arr = np.full((60, 100, 3), 40, np.uint8)
    arr[:20, :20] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = orientation
    if shrink:  # orientation is applied after the downscale too (the resized image has no EXIF of its own)
        monkeypatch.setattr(images, "MAX_PIXELS", 1500)
    out = load_rgb(_encoded(Image.fromarray(arr), "JPEG", exif=exif.tobytes(), quality=95))
    h, w = out.shape[:2]
    assert (w > h) == (orientation == 3)  # 6 and 8 turn the landscape photo upright
    assert _red_corners(out) == {corner}
    assert h * w <= (1500 if shrink else 6000)


def test_too_small_and_corrupt_files_are_named_errors(tmp_path):
    small = tmp_path / "small.png"
    Image.fromarray(synthetic_photo(20, 20)).save(small)
    with pytest.raises(ImageLoadError, match="small.png: 20x20 is smaller than data.min_size=64"):
        load_rgb(small, min_size=64)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(ImageLoadError, match="bad.jpg: not a readable image"):
        load_rgb(bad)


def test_crops_are_deterministic_and_sized():
    img = synthetic_photo(300, 500)
    a, b = random_crops(img, 64, 5, seed=3), random_crops(img, 64, 5, seed=3)
    assert all(x.shape == (64, 64, 3) for x in a)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], random_crops(img, 64, 1, seed=4)[0])
    assert center_crop(img, 64).shape == (64, 64, 3)


def test_split_is_by_photo_disjoint_and_deterministic():
    names = [f"photo{i}" for i in range(50)]
    s = split_photos(names, 0.15, 0.2, seed=0)
    assert set(s) == set(SPLITS) and [len(s[k]) for k in ("train", "val", "test")] == [32, 8, 10]
    assert not (set(s["train"]) & set(s["val"]) or set(s["train"]) & set(s["test"]) or set(s["val"]) & set(s["test"]))
    assert sorted(s["train"] + s["val"] + s["test"]) == sorted(names)
    assert s == split_photos(list(reversed(names)), 0.15, 0.2, seed=0)  # the order of the names does not matter
    assert s["test"] != split_photos(names, 0.15, 0.2, seed=1)["test"]
    assert split_photos(names, 0.3, 0.2, seed=0)["test"] == s["test"]  # a bigger val leaves test as it is


@pytest.mark.parametrize("n", [3, 4, 5, 7, 10])
@pytest.mark.parametrize("fractions", [(0.15, 0.2), (0.01, 0.01), (0.45, 0.5)])
def test_every_split_gets_a_photo_from_three_photos_on(n, fractions):
    s = split_photos([f"p{i}" for i in range(n)], *fractions, seed=0)
    assert all(s[k] for k in SPLITS) and sum(map(len, s.values())) == n


def test_fewer_than_three_photos_cannot_be_split():
    with pytest.raises(SplitError, match="2 usable photo.*3 needed.*add photos"):
        split_photos(["a", "b"], 0.15, 0.2, seed=0)


def test_a_phone_sized_jpeg_is_read_downscaled_within_the_bound(tmp_path):
    """192 MP (a 200 MP phone's photo; PIL alone refuses it as a bomb): decoded at 1/2, shrunk to MAX_PIXELS."""
    path = tmp_path / "phone.jpg"
    Image.new("RGB", (16000, 12000), (90, 140, 200)).save(path, quality=30)
    limit = Image.MAX_IMAGE_PIXELS
    t0 = time.perf_counter()
    out = load_rgb(path, min_size=256)
    took = time.perf_counter() - t0
    h, w = out.shape[:2]
    assert 0.99 * images.MAX_PIXELS <= h * w <= images.MAX_PIXELS  # at the bound, not needlessly smaller
    assert abs(w / h - 4 / 3) < 1e-3 and out.dtype == np.uint8
    assert np.abs(out[::500, ::500].reshape(-1, 3).mean(0) - (90, 140, 200)).max() < 3
    assert probe(path, 256) == (16000, 12000)
    assert Image.MAX_IMAGE_PIXELS == limit  # PIL's own limit is raised only while reading
    assert took < 30


@pytest.mark.parametrize("mode", ["RGB", "P", "P+alpha", "I;16", "1", "LA", "CMYK", "F"])
def test_big_images_of_any_mode_are_downscaled_and_bounded(tmp_path, monkeypatch, mode):
    """With small bounds: a PNG/TIFF under the decode bound is read and shrunk (aspect kept, colours kept),
    a JPEG over it is decoded at a reduced scale, a PNG over it is a named skip before decoding."""
    monkeypatch.setattr(images, "MAX_PIXELS", 200_000)
    monkeypatch.setattr(images, "MAX_DECODE_PIXELS", 1_000_000)
    base = Image.fromarray(synthetic_photo(800, 1200))
    if mode == "I;16":
        img = Image.fromarray(np.asarray(base.convert("L")).astype(np.uint16) * 257)
    elif mode == "F":
        img = Image.fromarray(np.asarray(base.convert("L")).astype(np.float32))
    else:
        img = base.convert(mode[0] if mode == "P+alpha" else mode)
    path = tmp_path / ("wide.tif" if mode in ("CMYK", "F") else "wide.png")
    img.save(path, **({"transparency": 0} if mode == "P+alpha" else {}))
    img = Image.open(path)
    out = load_rgb(path)
    h, w = out.shape[:2]
    assert h * w <= 200_000 and abs(w / h - 1.5) < 0.01 and out.dtype == np.uint8
    want = np.asarray(images._to_rgb(img).resize((w, h), Image.BILINEAR), dtype=float)
    assert np.abs(out.astype(float).mean((0, 1)) - want.mean((0, 1))).max() < 4


def test_decode_bound_jpeg_draft_and_refusal(tmp_path, monkeypatch):
    monkeypatch.setattr(images, "MAX_PIXELS", 200_000)
    monkeypatch.setattr(images, "MAX_DECODE_PIXELS", 1_000_000)
    jpg = tmp_path / "big.jpg"
    Image.fromarray(synthetic_photo(2000, 3000)).save(jpg)  # 6 MP: over the decode bound, read at 1/4 scale
    out = load_rgb(jpg)
    assert out.shape[0] * out.shape[1] <= 200_000 and abs(out.shape[1] / out.shape[0] - 1.5) < 0.01
    png = tmp_path / "too.png"
    Image.fromarray(synthetic_photo(1000, 1500)).save(png)  # 1.5 MP PNG: no reduced decode, so refused
    for read in (load_rgb, probe):
        with pytest.raises(ImageLoadError, match=r"too.png: 1500x1000 .*memory bound"):
            read(png)


@pytest.mark.parametrize(("w", "h"), [(100_000, 100_000), (30_000, 30_000), (2**31 - 1, 2**31 - 1)])
def test_headers_claiming_absurd_sizes_are_named_errors(tmp_path, w, h):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header(w, h))
    limit = Image.MAX_IMAGE_PIXELS
    for read in (load_rgb, probe):
        with pytest.raises(ImageLoadError, match="bomb.png: .*(memory bound|header declares)"):
            read(path)
    assert Image.MAX_IMAGE_PIXELS == limit


@pytest.mark.parametrize(
    "exc",
    [struct.error("unpack"), IndexError("x"), TypeError("y"), EOFError(), MemoryError(), RecursionError("deep")]
    + [Image.DecompressionBombError("huge"), KeyError("MPO"), ZeroDivisionError("z"), SyntaxError("s")],
    ids=lambda e: type(e).__name__,
)
@pytest.mark.parametrize("where", ["open", "decode"])
def test_anything_pil_raises_becomes_a_named_error(tmp_path, monkeypatch, exc, where):
    path = tmp_path / "photo.png"
    Image.fromarray(synthetic_photo(40, 60)).save(path)

    def boom(*args, **kwargs):
        raise exc

    if where == "open":
        monkeypatch.setattr(Image, "open", boom)
    else:
        monkeypatch.setattr(ImageFile.ImageFile, "load", boom)
    with pytest.raises(ImageLoadError, match="photo.png: "):
        load_rgb(path)
    if where == "open":
        with pytest.raises(ImageLoadError, match="photo.png: "):
            probe(path)


@pytest.mark.timeout(60)  # reading a pipe must not block
def test_unreadable_files_pipes_and_folders_are_named_errors(tmp_path, monkeypatch):
    locked = tmp_path / "locked.png"
    Image.fromarray(synthetic_photo(40, 60)).save(locked)
    real_open = builtins.open

    def no_read(file, *args, **kwargs):  # what chmod 000 does for anyone but root (the tests run as root)
        if str(file) == str(locked):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", no_read)
    with pytest.raises(ImageLoadError, match="locked.png: cannot be read"):
        load_rgb(locked)
    monkeypatch.undo()
    os.mkfifo(tmp_path / "pipe.jpg")  # opening it for reading would wait for a writer for ever
    (tmp_path / "dir.jpg").mkdir()
    for name, why in [("pipe.jpg", "not a regular file"), ("dir.jpg", "is a folder"), ("gone.jpg", "no such file")]:
        for read in (load_rgb, probe):
            with pytest.raises(ImageLoadError, match=f"{name}: {why}"):
                read(tmp_path / name)


# ----------------------------------------------------------------------------- photo folders


def test_symlinks_are_not_followed_out_of_the_folder(tmp_path):
    folder, outside = tmp_path / "photos", tmp_path / "outside"
    (folder / "sub").mkdir(parents=True)
    outside.mkdir()
    for p in (folder / "a.jpg", folder / "sub" / "b.png", outside / "secret.jpg", outside / "deep.png"):
        Image.fromarray(synthetic_photo(40, 60)).save(p)
    os.symlink(outside / "secret.jpg", folder / "link.jpg")
    os.symlink(outside, folder / "sub" / "away")  # a folder outside: not walked
    os.symlink(folder, folder / "sub" / "loop")  # a cycle: not walked
    os.symlink("a.jpg", folder / "again.jpg")  # inside: skipped too, a.jpg is read as itself
    os.symlink(tmp_path / "nothing.jpg", folder / "dangling.jpg")
    assert list_images(folder) == [folder / "a.jpg", folder / "sub" / "b.png"]
    scan = images.scan_images(folder)
    reasons = dict(scan.skipped)
    assert set(reasons) == {folder / n for n in ("link.jpg", "sub/away", "sub/loop", "again.jpg", "dangling.jpg")}
    assert "outside the folder" in reasons[folder / "link.jpg"] and str(outside) in reasons[folder / "link.jpg"]
    assert "outside the folder" in reasons[folder / "sub" / "away"]
    assert (
        "within the folder" in reasons[folder / "sub" / "loop"] and "within the folder" in reasons[folder / "again.jpg"]
    )
    assert "broken symlink" in reasons[folder / "dangling.jpg"]
    assert all(str(p) in r for p, r in scan.skipped)  # each reason names its file


def test_hidden_files_pipes_and_odd_suffixes_in_a_folder(tmp_path):
    folder = tmp_path / "photos"
    (folder / ".thumbnails").mkdir(parents=True)
    (folder / "album.jpg").mkdir()
    for name in ("UP.JPG", "x.Jpeg", "y.tif", "album.jpg/in.png", ".thumbnails/t.jpg", ".hidden.png"):
        Image.fromarray(synthetic_photo(40, 60)).save(folder / name, format="PNG")
    (folder / "._UP.JPG").write_bytes(b"\x00\x05\x16\x07")
    (folder / ".DS_Store").write_bytes(b"Bud1")
    (folder / "notes.txt").write_text("hi")
    os.mkfifo(folder / "pipe.png")
    scan = images.scan_images(folder)
    assert scan.files == [folder / n for n in ("UP.JPG", "album.jpg/in.png", "x.Jpeg", "y.tif")]
    assert {p.name for p, _ in scan.skipped} == {"._UP.JPG", ".hidden.png", "pipe.png"}
    assert {p.name for p in scan.ignored} == {".thumbnails", ".DS_Store", "notes.txt"}
    assert [load_rgb(f).shape for f in scan.files] == [(40, 60, 3)] * 4  # content decides, not the suffix
