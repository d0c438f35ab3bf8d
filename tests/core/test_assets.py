"""Offline assets: pinned tables, fetch/verify/re-fetch on a small real package, safe unpickling."""

from __future__ import annotations

import dataclasses
import io
import os
import pickle
import re

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import load

from pipeline.core import assets
from pipeline.core.errors import AssetError


def test_tables_are_pinned_and_unique():
    photos, weights = assets.photo_items(), assets.weight_items()
    assert len(photos) == 106
    for item in photos + weights:
        assert re.fullmatch(r"[0-9a-f]{64}", item.sha256), item
    dests = [i.dest for i in photos + weights]
    assert len(set(dests)) == len(dests)
    assert all(".." not in d and not d.startswith("/") for d in dests)


def test_real_cache_has_enough_photos_and_all_weights():
    """`make test` fetched everything: >= 60 distinct colour photos on a Debian machine, every weight file."""
    photos = assets.cached_photos()
    assert len(photos) >= 60, f"{len(photos)} colour photos"
    assert len({p["source_sha256"] for p in photos}) == len(photos)  # distinct
    manifest = assets.read_manifest()
    for item in assets.weight_items():
        assert item.dest in manifest and (assets.cache_dir() / item.dest).is_file()


@pytest.fixture
def small_item():
    """One photo from a ~2 MB wheel (mahotas): cheap to download in a test."""
    return next(i for i in assets.photo_items() if i.package == "mahotas")


def test_fetch_is_verified_idempotent_and_repairs_corruption(tmp_path, small_item):
    rep = assets.fetch([small_item], root=tmp_path)
    assert (rep.fetched, rep.ok, rep.skipped) == (1, 0, 0)
    out = tmp_path / small_item.dest
    img = Image.open(out)
    assert img.mode == "RGB" and min(img.size) >= 256
    first = out.read_bytes()

    rep = assets.fetch([small_item], root=tmp_path)
    assert (rep.fetched, rep.ok) == (0, 1)

    corrupt = bytearray(first)
    corrupt[len(corrupt) // 2] ^= 0xFF  # same size, one flipped byte
    out.write_bytes(bytes(corrupt))
    rep = assets.fetch([small_item], root=tmp_path)
    assert (rep.fetched, rep.ok) == (1, 0)
    assert out.read_bytes() == first


def test_checksum_mismatch_is_skipped_with_a_note_or_raised_when_strict(tmp_path, small_item):
    bad = dataclasses.replace(small_item, sha256="0" * 64)
    rep = assets.fetch([bad], root=tmp_path)
    assert rep.skipped == 1 and rep.fetched == 0
    assert "does not match the pinned" in rep.notes[0]
    assert not (tmp_path / bad.dest).exists()
    with pytest.raises(AssetError, match="does not match the pinned"):
        assets.fetch([bad], root=tmp_path, strict=True)


def test_unavailable_source_is_skipped(tmp_path, small_item):
    gone = dataclasses.replace(small_item, package="e2gan-no-such-package-xyz")
    rep = assets.fetch([gone], root=tmp_path)
    assert rep.skipped == 1 and "pip download" in rep.notes[0]


def test_restricted_unpickler_refuses_code():
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        assets._NumpyOnly(io.BytesIO(pickle.dumps(Evil()))).load()


def test_lpips_backbone_layout_matches_torchvision():
    import torchvision

    for net, model in (("alex", torchvision.models.alexnet()), ("vgg", torchvision.models.vgg16())):
        tensors = load(assets.lpips_backbone(net).read_bytes())
        expected = {k: tuple(v.shape) for k, v in model.features.state_dict().items()}
        assert {k: v.shape for k, v in tensors.items()} == expected
        assert all(np.isfinite(v).all() and np.abs(v).max() > 0 for v in tensors.values())
