"""Teacher kind `pairs`: pairs made elsewhere (input/ + edited/, or a metadata.jsonl) go through the same split
by photo, the same crops of input and edit, the same quality filter and output layout as the teacher's pairs;
missing, mismatched and unreadable pairs are counted, named skips."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.config import parse_params, read_params
from pipeline.core.errors import E2GANError
from pipeline.data.dataset import read_pairs
from pipeline.data.imported import import_pairs
from tests.conftest import ROOT


def _photo(i: int, w: int = 320, h: int = 288) -> np.ndarray:
    """A photo-like image: smooth colour fields plus texture, different per index."""
    rng = np.random.default_rng(i)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([np.sin(6 * x + i), np.cos(5 * y - i), np.sin(4 * (x + y) + 2 * i)], -1) * 90 + 128
    return np.clip(base + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)


def _edit(img: np.ndarray) -> np.ndarray:
    return 255 - img  # pixelwise, so an edit crop must equal the edit of the input crop


def _save(img: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)


def _params(source: str):
    raw = read_params(ROOT / "params.yaml").model_dump()
    raw["data"].update(image_size=64, crops_per_photo=2, eval_crops_per_photo=2, min_size=256)
    raw["concepts"]["mine"] = {"prompt": "invert the colours", "teacher": {"kind": "pairs", "source": source}}
    return parse_params(raw)


PROMPTS = {"instructions": ["invert the colours", "make it a negative"]}


def _run(tmp_path: Path, source: Path):
    p = _params(str(source))
    out = tmp_path / "out"
    summary = import_pairs("mine", p.concept("mine"), p.generate_pairs, p.data, PROMPTS, out, tmp_path / "work")
    return summary, out


def test_a_folder_of_pairs_is_split_by_photo_cropped_alike_and_its_bad_pairs_counted(tmp_path):
    src = tmp_path / "edits"
    for i in range(10):
        img = _photo(i)
        _save(img, src / "input" / f"p{i}.png")
        _save(_edit(img), src / "edited" / f"p{i}.png")
    _save(_photo(20), src / "input" / "lonely.png")  # no edit
    _save(_photo(21), src / "edited" / "orphan.png")  # no input
    _save(_photo(22), src / "input" / "wide.png")
    _save(_photo(22, w=600, h=200), src / "edited" / "wide.png")  # another shape
    _save(_photo(23, 200, 200), src / "input" / "small.png")
    _save(_photo(23, 200, 200), src / "edited" / "small.png")  # below data.min_size
    _save(_photo(24), src / "input" / "broken.png")
    (src / "edited" / "broken.png").write_bytes(b"not a png")
    big = _photo(25, 640, 576)
    _save(big, src / "input" / "big.png")
    _save(
        _edit(np.asarray(Image.fromarray(big).resize((320, 288), Image.Resampling.LANCZOS))), src / "edited" / "big.png"
    )

    summary, out = _run(tmp_path, src)
    reasons = {s["pair"]: s["reason"] for s in summary["skipped_pairs"]}
    assert set(reasons) == {"lonely", "orphan", "wide", "small", "broken"}
    assert "no edited image" in reasons["lonely"] and "no input image" in reasons["orphan"]
    assert (
        "another shape" in reasons["wide"] and "data.min_size" in reasons["small"] and "broken.png" in reasons["broken"]
    )
    assert summary["skipped"] == 5 and summary["source_pairs"] == 14  # matched by name

    rows = read_pairs(out)
    photos = {r["photo"] for r in rows}
    assert photos == {f"p{i}" for i in range(10)} | {"big"}  # 'big': its edit at half size, resized to fit
    by_photo: dict[str, set] = {}
    for r in rows:
        by_photo.setdefault(r["photo"], set()).add(r["split"])
    assert all(len(s) == 1 for s in by_photo.values())  # a photo never crosses splits
    assert {s for (s,) in by_photo.values()} == {"train", "val", "test"}
    assert summary["kept"] == len(rows) == 2 * 11 and summary["dropped"] == 0
    for r in rows:
        a = np.asarray(Image.open(r["input_path"]).convert("RGB"), dtype=np.int16)
        b = np.asarray(Image.open(r["edited_path"]).convert("RGB"), dtype=np.int16)
        assert a.shape == b.shape == (64, 64, 3)
        tol = 6 if r["photo"] == "big" else 1  # rounding of the same resize; 'big' went through another one
        assert np.abs((255 - a) - b).max() <= tol, r["photo"]
        assert r["edit_prompt"] in PROMPTS["instructions"]
    # the same folder again: the same pairs, bit for bit
    again, out2 = _run(tmp_path / "again", src)
    assert again["source_sha256"] == summary["source_sha256"]
    assert (out / "metadata.jsonl").read_text() == (out2 / "metadata.jsonl").read_text()


def test_a_metadata_jsonl_keeps_its_prompts_and_names_its_bad_lines(tmp_path):
    src = tmp_path / "ds"
    lines = []
    for i in range(6):
        img = _photo(i)
        _save(img, src / "images" / f"a{i}.jpg")
        _save(_edit(img), src / "images" / f"b{i}.png")
        lines.append(
            json.dumps(
                {"input_image": f"images/a{i}.jpg", "edit_prompt": f"invert {i}", "edited_image": f"images/b{i}.png"}
            )
        )
    lines += [
        "{broken",
        json.dumps({"input_image": "images/a0.jpg"}),
        json.dumps({"input_image": "../x.png", "edited_image": "images/b0.png"}),
    ]
    (src / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    summary, out = _run(tmp_path, src)
    reasons = [s["reason"] for s in summary["skipped_pairs"]]
    assert len(reasons) == 3 and "not JSON" in reasons[0] and "needs input_image and edited_image" in reasons[1]
    assert "leaves the dataset folder" in reasons[2]
    rows = read_pairs(out)
    assert {r["edit_prompt"] for r in rows} == {f"invert {i}" for i in range(6)}


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: None, "no such folder"),
        (lambda d: d.mkdir(), "holds input/ and edited/"),
    ],
    ids=["missing", "empty"],
)
def test_an_unusable_source_is_one_clear_error(tmp_path, make, message):
    src = tmp_path / "nothing"
    make(src)
    with pytest.raises(E2GANError, match=message):
        _run(tmp_path, src)
    assert not (tmp_path / "out").exists()


def test_a_pairs_concept_cannot_be_run_as_an_editor():
    from pipeline.data.teachers import TeacherError, build_teacher

    p = _params("somewhere")
    with pytest.raises(TeacherError, match="has its pairs already"):
        build_teacher(p.concept("mine").teacher)
