"""Scoring pairs by split: a limit takes a seeded sample spread over every photo of the split (never the first
rows), and a split must be named."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.core.images import save_png
from pipeline.data.dataset import DataError, PairData, patch_pairs, photo_of, split_pairs, spread_sample


def _rows(n_photos: int, crops: int) -> list[dict]:
    """Rows as a pairs folder lists them: ordered by photo, then crop."""
    return [{"input_image": f"input/p{k}_{j:02d}.png", "photo": f"p{k}"} for k in range(n_photos) for j in range(crops)]


def test_a_limit_spreads_over_every_photo_and_is_not_the_first_rows():
    rows = _rows(5, 8)
    one_each = spread_sample(rows, 5, seed=0)
    assert sorted(Counter(photo_of(r) for r in one_each).values()) == [1] * 5  # one crop of every photo
    assert one_each != rows[:5]
    counts = Counter(photo_of(r) for r in spread_sample(rows, 12, seed=0))
    assert len(counts) == 5 and set(counts.values()) == {2, 3}  # round robin: no photo a crop ahead of another
    assert spread_sample(rows, 12, seed=0) == [r for r in rows if r in spread_sample(rows, 12, seed=0)]  # in order


def test_the_sample_depends_on_the_seed_and_the_rows_not_their_order():
    rows = _rows(6, 4)
    shuffled = rows[:]
    random.Random(3).shuffle(shuffled)
    key = lambda rs: sorted(r["input_image"] for r in rs)  # noqa: E731
    assert key(spread_sample(rows, 9, seed=0)) == key(spread_sample(shuffled, 9, seed=0))
    assert key(spread_sample(rows, 9, seed=0)) != key(spread_sample(rows, 9, seed=1))


def test_no_limit_or_a_large_one_keeps_every_row():
    rows = _rows(3, 2)
    assert spread_sample(rows, 0, seed=0) == rows == spread_sample(rows, 99, seed=0)


def test_the_photo_of_older_rows_comes_from_the_file_name():
    assert photo_of({"input_image": "input/IMG_0042-123456_03.png"}) == "IMG_0042-123456"


def _folder(tmp_path: Path) -> Path:
    folder = tmp_path / "pairs"
    splits = {"p0": "train", "p1": "val", "p2": "val", "p3": "test"}
    rows = []
    for photo, split in splits.items():
        for j in range(3):
            name = f"{photo}_{j:02d}.png"
            img = np.full((16, 16, 3), 10 * len(rows), np.uint8)
            save_png(img, folder / "input" / name)
            save_png(255 - img, folder / "edited" / name)
            rows.append({"input_image": f"input/{name}", "edited_image": f"edited/{name}", "photo": photo})
            rows[-1].update(edit_prompt="x", split=split)
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_split_pairs_reads_one_named_split_with_its_photos(tmp_path):
    folder = _folder(tmp_path)
    val = split_pairs(folder, "val")
    assert val.photos == ["p1"] * 3 + ["p2"] * 3 and len(val.inputs) == len(val.teacher) == 6
    assert np.array_equal(val.teacher[0], 255 - val.inputs[0])
    assert sorted(split_pairs(folder, "val", limit=2).photos) == ["p1", "p2"]
    assert split_pairs(folder, "test").photos == ["p3"] * 3
    with pytest.raises(TypeError):
        split_pairs(folder)  # type: ignore[call-arg]  # no default split: scoring on test is never an accident
    with pytest.raises(Exception, match="unknown split 'heldout'"):
        split_pairs(folder, "heldout")


def test_a_folder_without_the_split_says_how_to_remake_it(tmp_path):
    folder = _folder(tmp_path)
    rows = [{**json.loads(line), "split": "heldout"} for line in (folder / "metadata.jsonl").read_text().splitlines()]
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match="no val pairs.*rerun prepare_sources and generate_pairs"):
        split_pairs(folder, "val")


def test_patch_windows_cut_the_same_window_of_input_and_target_and_resume_exactly():
    g = torch.Generator().manual_seed(0)
    imgs = torch.randint(0, 256, (6, 3, 48, 48), generator=g, dtype=torch.uint8)
    pairs = PairData(imgs, 255 - imgs, [[0], [1]] * 3, torch.randn(2, 5, 8, generator=g), torch.ones(2, 5))
    assert patch_pairs(pairs, 0) is pairs and patch_pairs(pairs, 48) is pairs  # whole crops: the pairs as they are
    patched = patch_pairs(pairs, 16)
    x, y, tokens, mask = patched.batch(7, 4, 3, True)
    whole_x, whole_y, whole_tokens, _ = pairs.batch(7, 4, 3, True)  # the same pairs, flips and prompts
    assert x.shape == y.shape == (4, 3, 16, 16) and torch.equal(tokens, whole_tokens)
    for i in range(4):  # each window is one window of its pair, the same place in input and target
        where = [
            (t, s)
            for t in range(33)
            for s in range(33)
            if torch.equal(whole_x[i, :, t : t + 16, s : s + 16], x[i])
            and torch.equal(whole_y[i, :, t : t + 16, s : s + 16], y[i])
        ]
        assert where
    again = patch_pairs(pairs, 16).batch(7, 4, 3, True)  # a pure function of (seed, step): resuming needs no state
    assert all(torch.equal(a, b) for a, b in zip(again, (x, y, tokens, mask)))
    windows = {tuple(patched.batch(s, 4, 3, False)[0][:, 0, 0, 0].tolist()) for s in range(8)}
    assert len(windows) > 1
