"""Image loading (modes, EXIF, size, corrupt files), deterministic crops and the split by photo."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pipeline.core.images import ImageLoadError, center_crop, load_rgb, random_crops, split_photos
from tests.conftest import synthetic_photo


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


def test_exif_orientation_is_applied():
    img = Image.fromarray(synthetic_photo(30, 50))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    out = load_rgb(_encoded(img, "JPEG", exif=exif.tobytes()))
    assert out.shape == (50, 30, 3)


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
    train, held = split_photos(names, 0.2, seed=0)
    assert len(held) == 10 and not set(train) & set(held) and sorted(train + held) == sorted(names)
    assert (train, held) == split_photos(list(reversed(names)), 0.2, seed=0)
    assert held != split_photos(names, 0.2, seed=1)[1]
