import numpy as np

from bench.cartoon_kid import outline_luminance, parts
from pipeline.data.teachers import filters


def test_the_parts_rebuild_the_cartoon_filter_exactly():
    rng = np.random.default_rng(0)
    for size in (96, 128):
        img = (rng.random((size, size, 3)) * 255).astype(np.uint8)
        p = parts(img)
        np.testing.assert_array_equal(p["full"], filters.cartoon(img, np.random.default_rng(0)))
        assert set(np.unique(p["edges"])) <= {0, 255} and (p["edges"] == 0).any()


def test_outline_luminance_reads_the_outline_pixels_against_the_rest():
    x = np.full((4, 4, 3), 200, np.uint8)
    m = np.zeros((4, 4), bool)
    m[0] = True  # a quarter of the pixels are outline
    s = x.copy()
    s[0] = 50  # the student draws them at a quarter of the brightness, leaves the rest
    out = outline_luminance([s], [x], [m])
    assert out["outline_pixels"] == np.float64(0.25) and out["other_pixels"] == 1.0 and out["outline_share"] == 0.25
