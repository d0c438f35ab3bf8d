"""`e2gan apply` on what users really pass it: every bad file a named skip, the rest still written, exit 0."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.core.images import MAX_PIXELS
from pipeline.deploy.runtime import apply_model
from tests.conftest import ROOT, synthetic_photo
from tests.data.hostile import BIG, BIG_SIZE, _png_header, build_hostile_folder


def _negating_model(path: Path, size: int = 32) -> Path:
    """A valid exported-model stand-in, instant to build: 1x3xSxS 'image' in [-1, 1] -> its negative."""
    import onnx
    from onnx import TensorProto, helper

    x, y = (helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 3, size, size]) for n in ("image", "edited"))
    graph = helper.make_graph([helper.make_node("Neg", ["image"], ["edited"])], "negate", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.orchestrate.cli", "apply", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT), "E2GAN_PROGRESS": "0"},
        capture_output=True,
        text=True,
        timeout=240,
    )


@pytest.mark.timeout(300)
def test_apply_cli_on_a_hostile_folder(tmp_path):
    h = build_hostile_folder(tmp_path)
    _negating_model(tmp_path / "models/onnx/demo/model.onnx")
    p = _cli(str(h.folder), "-c", "demo", "-o", "out", cwd=tmp_path)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr[-4000:]
    good = h.good + h.small  # apply has no minimum size
    out = tmp_path / "out"
    assert sorted(out.rglob("*.png")) == sorted((out / rel).with_suffix(".png") for rel in good)
    assert f"{len(good)} image(s) written to out; {len(h.bad)} skipped:" in p.stderr
    lines = [line for line in p.stderr.splitlines() if line.startswith("  skipped: ")]
    named = {rel for rel in h.bad for line in lines if line.startswith(f"  skipped: {h.folder / rel}: ")}
    assert named == set(h.bad) and len(lines) == len(h.bad), sorted(set(h.bad) - named)
    assert f"{len(h.ignored)} file(s) without a photo suffix ignored" in p.stderr
    src = np.asarray(Image.open(h.folder / "good.jpg"), dtype=float)
    got = np.asarray(Image.open(out / "good.png"), dtype=float)
    assert got.shape == src.shape and abs(got.mean() - (255 - src.mean())) < 8  # really through the model
    w, h_ = Image.open(out / Path(BIG).with_suffix(".png")).size
    assert w * h_ <= MAX_PIXELS and abs(w / h_ - BIG_SIZE[0] / BIG_SIZE[1]) < 1e-3  # written at the loaded size


def test_apply_model_keeps_going_past_bad_files_given_by_name(tmp_path):
    model = _negating_model(tmp_path / "m.onnx")
    good = tmp_path / "good.png"
    Image.fromarray(synthetic_photo(32, 32)).save(good)
    (tmp_path / "text.jpg").write_text("not an image")
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_header(100_000, 100_000))
    inputs = [tmp_path / "text.jpg", bomb, tmp_path / "missing.jpg", good]
    result = apply_model(model, inputs, tmp_path / "out")
    assert result.written == 1 and (tmp_path / "out" / "good.png").is_file()
    assert [line.split(": ")[0] for line in result.skipped] == [str(p) for p in inputs[:3]]
