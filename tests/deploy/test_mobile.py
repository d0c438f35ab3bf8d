"""Phone formats and the second ONNX consumer: the rewritten model equals the trained one, ExecuTorch programs
and LiteRT models match torch (fp32 to float rounding, int8 within the output's own variation), Core ML packages pass their
structural check, OpenCV's DNN module runs every ONNX file and matches onnxruntime, and broken files give one
clear line."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.deploy import mobile
from pipeline.deploy.artifact import pad_tokens
from pipeline.deploy.export import ExportError, ImageOnly, export_onnx, onnx_outputs, opencv_outputs, to_fp16, to_int8
from pipeline.deploy.package import ExportOnnxConfig, _side_process, check_opencv
from pipeline.deploy.portable import rewritten
from pipeline.model.nets.generator import E2GANGenerator, GeneratorConfig, freeze_text_norms


def _tiny(norm: str = "film") -> ImageOnly:
    """The default architecture (text norms, stem skip) at ngf 8, perturbed away from the identity."""
    torch.manual_seed(0)
    G = E2GANGenerator(GeneratorConfig(ngf=8, heads=2, norm=norm, skip=True))
    with torch.no_grad():
        for p in G.parameters():
            p.add_(0.05 * torch.randn_like(p))
    tokens, mask = torch.randn(1, 6, 384), torch.tensor([[1.0, 1, 1, 1, 0, 0]])  # two padded tokens
    return ImageOnly(G.eval(), tokens, mask).eval()


def _x(n=2, size=32, seed=0) -> np.ndarray:
    return (torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1).numpy()


def _ref(model, x):
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize("portable", [False, True])
def test_rewritten_model_equals_the_trained_one(portable):
    model = _tiny()
    x = _x(2, 48)
    frozen = ImageOnly(freeze_text_norms(model.G, model.tokens, model.mask), model.tokens, model.mask).eval()
    new = rewritten(frozen, portable=portable)
    kinds = {type(m).__name__ for m in new.modules()}
    assert "ExplicitAttention" in kinds and ("NearestUp2x" in kinds) == portable
    assert "ReflectionPad2d" not in kinds if portable else "ReflectionPad2d" in kinds
    assert np.abs(_ref(new, x) - _ref(model, x)).max() < 1e-4  # float rounding: the sums run in another order
    assert "Attention" in {type(m).__name__ for m in frozen.modules()}  # the original is untouched


def test_padded_transposed_convolutions_are_rewritten_exactly_and_convert_to_litert(tmp_path):
    torch.manual_seed(0)  # ResNet-9's upsampling: kernel 3, stride 2, padding 1, output padding 1
    model = nn.Sequential(nn.ConvTranspose2d(3, 4, 3, 2, 1, 1), nn.ReLU(), nn.Conv2d(4, 3, 3, 2, 1)).eval()
    x = _x(2, 16)
    new = rewritten(model, portable=True)
    assert "CroppedConvTranspose" in {type(m).__name__ for m in new.modules()}
    assert np.abs(_ref(new, x) - _ref(model, x)).max() < 1e-5
    path = mobile.to_litert(model, tmp_path / "t.tflite", 16)
    assert np.abs(mobile.outputs("litert", path, x) - _ref(model, x)).max() < 1e-4


CONVERT = {  # format -> (fp32, int8) converters at 32x32
    "executorch": (
        lambda model, path: mobile.to_executorch(model, path, 32),
        lambda model, path: mobile.to_executorch(model, path, 32, calibration=_x(8, 32, seed=2)),
    ),
    "litert": (
        lambda model, path: mobile.to_litert(model, path, 32),
        lambda model, path: mobile.to_litert(model, path, 32, int8=True),
    ),
}


@pytest.mark.parametrize("fmt", sorted(CONVERT))
def test_phone_fp32_and_int8_match_torch(tmp_path, fmt):
    model = _tiny()
    x, other = _x(3, 32), _x(3, 32, seed=1)
    ref = _ref(model, x)
    fp32, int8 = (convert(model, tmp_path / f"{n}{mobile.SUFFIX[fmt]}") for convert, n in zip(CONVERT[fmt], "mq"))
    assert np.abs(mobile.outputs(fmt, fp32, x) - ref).max() < 1e-4
    got = mobile.outputs(fmt, int8, x)
    spread = np.abs(_ref(model, other) - ref).mean()  # how much the output moves with the input
    assert 0 < np.abs(got - ref).mean() < 0.25 * spread  # quantized (not equal), and close
    assert int8.stat().st_size < 0.9 * fp32.stat().st_size  # int8 weights (most of a tiny program is not weights)
    run = mobile.runner(fmt, fp32, threads=1)
    assert run.size == 32 and np.abs(run(x[:1]) - ref[:1]).max() < 1e-4
    lat = mobile.latency(run, x[:1], runs=3)
    assert lat["runs"] == 3 and 0 < lat["median_ms"] <= lat["p90_ms"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [fp32.name, int8.name]  # no temporary left behind


@pytest.mark.parametrize("fmt, what", [("executorch", "ExecuTorch program"), ("litert", "LiteRT model")])
def test_broken_phone_files_give_one_clear_line(tmp_path, fmt, what):
    with pytest.raises(mobile.MobileExportError, match=f"no {what}; run 'dvc repro export_mobile'"):
        mobile.outputs(fmt, tmp_path / f"missing{mobile.SUFFIX[fmt]}", _x(1))
    bad = tmp_path / f"bad{mobile.SUFFIX[fmt]}"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(mobile.MobileExportError, match=f"not a loadable {what}") as e:
        mobile.outputs(fmt, bad, _x(1))
    assert "\n" not in str(e.value)
    with pytest.raises(mobile.MobileExportError, match="runtime 'coreml' does not run on this machine"):
        mobile.runner("coreml", bad)


def test_coreml_package_passes_its_structural_check(tmp_path):
    model = _tiny()
    path = mobile.to_coreml(model, tmp_path / "m.mlpackage", 32)
    check = mobile.check_coreml(path, 32)
    assert check["input"] == [{"name": "image", "shape": [1, 3, 32, 32]}]
    assert check["output"] == [{"name": "edited", "shape": [1, 3, 32, 32]}]
    assert check["operations"]["conv"] == 14 and "softmax" in check["operations"]
    int8 = mobile.to_coreml(model, tmp_path / "q.mlpackage", 32, int8_weights=True)
    assert mobile.check_coreml(int8, 32)["operations"].get("constexpr_affine_dequantize", 0) > 0
    assert mobile.file_bytes(int8) < mobile.file_bytes(path)
    with pytest.raises(mobile.MobileExportError, match="expected one 'image' of shape"):
        mobile.check_coreml(path, 64)  # a package for another size
    with pytest.raises(mobile.MobileExportError, match="no Core ML package"):
        mobile.check_coreml(tmp_path / "missing.mlpackage", 32)
    spec = next(path.rglob("*.mlmodel"))
    spec.write_bytes(b"garbage")
    with pytest.raises(mobile.MobileExportError, match="not a readable Core ML package"):
        mobile.check_coreml(path, 32)


def test_a_missing_toolchain_names_the_install_command(monkeypatch):
    monkeypatch.setitem(mobile.NEEDS, "executorch", ("no_such_package_e2gan", "pip install no_such_package_e2gan"))
    with pytest.raises(mobile.MobileExportError, match=r"needs the 'no_such_package_e2gan' package: pip install"):
        mobile.require("executorch")


def test_opencv_runs_every_onnx_file_and_matches_onnxruntime(tmp_path):
    model = _tiny()
    x = _x(2, 32)
    fixed = export_onnx(model, tmp_path / "m.onnx", 32)
    dynamic = export_onnx(model, tmp_path / "d.onnx", 32, dynamic_batch=True)
    fp16 = to_fp16(fixed, tmp_path / "h.onnx")
    calib = [((_x(1, 32, seed=s)[0].transpose(1, 2, 0) + 1) * 127.5).astype(np.uint8) for s in range(4)]
    int8 = to_int8(fixed, tmp_path / "q.onnx", calib)
    base = ImageOnly(model.G, *pad_tokens(model.tokens, model.mask, 16))
    unfolded = export_onnx(base, tmp_path / "base.onnx", 32, fold=False)  # what adapter artifacts patch
    for path, tol in ((fixed, 1e-4), (dynamic, 1e-4), (unfolded, 1e-4), (fp16, 1e-2)):
        got, want = opencv_outputs(path, x), np.concatenate([onnx_outputs(path, x[i : i + 1]) for i in range(2)])
        assert np.abs(got - want).max() < tol, path.name
    # int8: the two runtimes round differently; each must stay as close to the fp32 model as the other
    fp32 = np.concatenate([onnx_outputs(fixed, x[i : i + 1]) for i in range(2)])
    ort_err = np.abs(np.concatenate([onnx_outputs(int8, x[i : i + 1]) for i in range(2)]) - fp32).mean()
    cv_err = np.abs(opencv_outputs(int8, x) - fp32).mean()
    spread = np.abs(onnx_outputs(fixed, _x(1, 32, seed=9)) - fp32[:1]).mean()
    assert cv_err < 2 * ort_err + 0.01 and cv_err < 0.5 * spread, (cv_err, ort_err, spread)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ExportError, match="OpenCV's DNN module cannot run it"):
        opencv_outputs(bad, x)
    # the stage's check: every file passes at the shipped tolerances, and refuses when they are tightened
    cfg = ExportOnnxConfig()
    files = {"fp32": fixed, "fp16": fp16, "int8": int8, "base_patched_with_adapter": unfolded}
    rec = check_opencv(files, x, fp32, cfg, "test")
    assert set(rec) == set(files) and rec["int8"]["mean_abs_diff_vs_fp32"]["opencv"] > 0
    with pytest.raises(ExportError, match="model_int8|q.onnx in OpenCV differs from onnxruntime"):
        check_opencv({"int8": int8}, x, fp32, cfg.model_copy(update={"opencv_ratio": 0.01, "opencv_floor": 0}), "test")
    with pytest.raises(ExportError, match="m.onnx in OpenCV differs"):
        check_opencv({"fp32": fixed}, x, fp32, cfg.model_copy(update={"opencv_tol": 1e-12}), "test")


def test_the_side_process_runs_work_elsewhere_and_inline_when_not_wanted():
    with _side_process(True) as pool:
        assert pool.submit(os.getpid).result() != os.getpid()  # ExecuTorch's lowering beside the other formats
    with _side_process(False) as pool:
        assert pool.submit(os.getpid).result() == os.getpid()
