"""Teachers: every filter is deterministic and size-agnostic; the diffusers teacher loads a real pipeline class."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.data.teachers import TEACHERS, TeacherError, build_teacher
from pipeline.data.teachers import DiffusersTeacherConfig as DiffusersCfg
from pipeline.data.teachers import FiltersTeacherConfig as FiltersCfg
from pipeline.data.teachers.filters import FILTER_PROMPTS, FILTERS, apply_filter
from tests.conftest import synthetic_photo
from tests.data.tiny_diffusers import build_tiny_pipeline


def test_registry_is_explicit():
    assert set(TEACHERS) == {"filters", "diffusers", "pairs"}
    assert len(FILTERS) >= 14 and set(FILTER_PROMPTS) == set(FILTERS)


@pytest.mark.parametrize("op", sorted(FILTERS))
def test_filter_is_deterministic_any_size_and_edits(op, crops128):
    photo = crops128[7]
    a, b = apply_filter(op, photo, seed=5), apply_filter(op, photo, seed=5)
    assert a.dtype == np.uint8 and a.shape == photo.shape
    assert np.array_equal(a, b)
    change = np.mean([np.abs(apply_filter(op, c).astype(int) - c).mean() for c in crops128[:8]])
    assert change > 1.0  # it edits (autumn only where there is foliage, hence several photos)
    for h, w in ((37, 53), (300, 200)):
        assert apply_filter(op, synthetic_photo(h, w), seed=1).shape == (h, w, 3)
    assert np.array_equal(apply_filter(op, photo, strength=0.0), photo)


def test_filters_teacher_records_settings_and_checks_batches(crops128):
    t = build_teacher(FiltersCfg(op="cartoon", strength=0.8))
    out = t.edit(crops128[:3], ["p"] * 3, [1, 2, 3])
    assert len(out) == 3 and t.settings() == {"kind": "filters", "op": "cartoon", "strength": 0.8}
    with pytest.raises(ValueError, match="one prompt and one seed per image"):
        t.edit(crops128[:3], ["p"], [1, 2, 3])


@pytest.mark.parametrize("kind", ["instruct_pix2pix", "img2img"])
def test_diffusers_teacher_tiny_pipeline(tmp_path, kind):
    path = build_tiny_pipeline(tmp_path / "tiny", kind)
    cfg = DiffusersCfg(pipeline=kind, model=str(path), steps=2, batch_size=2, device="auto")
    t = build_teacher(cfg)
    imgs = [synthetic_photo(32, 32, seed=i) for i in range(3)]
    a = t.edit(imgs, ["make it a watercolor painting"] * 3, [10, 11, 12])
    b = t.edit(imgs[:1], ["make it a watercolor painting"], [10])
    assert [x.shape for x in a] == [(32, 32, 3)] * 3 and a[0].dtype == np.uint8
    assert np.array_equal(a[0], b[0])  # per-sample seeds: same seed, same edit, whatever the batch
    assert not np.array_equal(a[0], a[1])
    s = t.settings()
    assert s["resolved_device"] == "cpu" and s["dtype"] == "float32" and s["steps"] == 2


def test_diffusers_missing_path_is_a_clear_error(tmp_path):
    t = build_teacher(DiffusersCfg(model=str(tmp_path / "nope")))
    with pytest.raises(TeacherError, match="does not exist; give a local diffusers folder"):
        t.edit([synthetic_photo(32, 32)], ["x"], [0])


def test_diffusers_unreachable_hub_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t = build_teacher(DiffusersCfg(model="e2gan-test/no-such-model"))
    with pytest.raises(TeacherError, match="cannot load 'e2gan-test/no-such-model'"):
        t.edit([synthetic_photo(32, 32)], ["x"], [0])
