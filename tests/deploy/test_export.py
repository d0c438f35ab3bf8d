"""ONNX export: parity with torch, adapter artifacts that patch the base ONNX model exactly, fp16/int8
variants, bad files, and `e2gan apply`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from pipeline.adapt.lora import add_lora_spec, lora_spec, round_to, save_adapter
from pipeline.core.tensors import image_to_array
from pipeline.deploy.artifact import adapter_artifact, apply_artifact, pad_tokens
from pipeline.deploy.export import ExportError, ImageOnly, check_onnx, export_onnx, onnx_outputs, to_fp16, to_int8
from pipeline.model.nets.generator import E2GANGenerator, GeneratorConfig
from tests.conftest import ROOT

RANKS = {"ds.conv": 4, "tb.attn_cross.to_k": 2, "tb.attn_cross.to_v": 2, "us.conv": 1, "up.1.conv": 3, "out": 2}


FILM_RANKS = {**RANKS, "res.2.norm1.to_scale": 2, "up.0.norm.to_shift": 1}  # LoRA on text norms too


def _base(norm: str = "instance") -> E2GANGenerator:
    torch.manual_seed(0)
    G = E2GANGenerator(GeneratorConfig(ngf=8, heads=2, norm=norm, skip=norm == "film"))  # film: the default base
    with torch.no_grad():
        for p in G.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return G.eval()


@pytest.fixture(scope="module", params=["instance", "film"])
def adapted(tmp_path_factory, request):
    """A LoRA adapter with non-zero factors on the tiny base, in peft's layout: instance norm, fp32; or text
    norms with the shipped options (rank-stabilised scaling, every bias trained, stored as fp16)."""
    folder = tmp_path_factory.mktemp("adapter")
    film = request.param == "film"
    ranks = FILM_RANKS if film else RANKS
    spec = lora_spec(ranks, alpha_scale=2.0, rslora=film, bias="all" if film else "none")
    model = add_lora_spec(_base(request.param), spec)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n or (film and n.endswith("bias") and p.requires_grad):
                p.add_(torch.randn_like(p) * 0.05)
    if film:
        round_to(model, "float16")  # what the fp16 file holds
    save_adapter(model, folder, "float16" if film else "float32")
    return model.eval(), folder


def _x(n=3, size=32, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_fixed_and_dynamic_exports_match_torch(tmp_path, adapted):
    model, _ = adapted
    merged = ImageOnly(_merged(model), torch.randn(1, 7, 384), torch.ones(1, 7))
    fixed = export_onnx(merged, tmp_path / "m.onnx", 32)
    dynamic = export_onnx(merged, tmp_path / "d.onnx", 32, dynamic_batch=True)
    import onnx

    dims = [d.dim_value for d in onnx.load(str(fixed)).graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 32, 32]  # no unknown dimension for mobile tools
    x = _x()
    with torch.no_grad():
        ref = merged(x).numpy()
    assert np.abs(onnx_outputs(fixed, x[:1].numpy()) - ref[:1]).max() < 1e-4
    assert np.abs(onnx_outputs(dynamic, x.numpy()) - ref).max() < 1e-4
    assert len(x) > 1  # a batch through the fixed model: one image per run, in order
    assert np.abs(onnx_outputs(fixed, x.numpy()) - ref).max() < 1e-4


def _merged(model):
    import copy

    return copy.deepcopy(model).merge_and_unload().eval()


def test_adapter_artifact_patches_the_base_model_exactly(tmp_path, adapted):
    model, folder = adapted
    base_tokens, tokens = torch.randn(1, 5, 384), torch.randn(1, 9, 384)  # a different prompt length
    base = _base(model.get_base_model().cfg.norm)
    base_onnx = export_onnx(
        ImageOnly(base, *pad_tokens(base_tokens, torch.ones(1, 5), 16)), tmp_path / "base.onnx", 32, fold=False
    )
    direct = export_onnx(ImageOnly(_merged(model), tokens, torch.ones(1, 9)), tmp_path / "direct.onnx", 32)
    art = adapter_artifact(folder, tokens, torch.ones(1, 9))
    save_file(art, str(tmp_path / "adapter.safetensors"))
    patched = apply_artifact(base_onnx, tmp_path / "adapter.safetensors", tmp_path / "patched.onnx")
    x = _x(1).numpy()
    want = onnx_outputs(direct, x)
    assert np.abs(onnx_outputs(patched, x) - want).max() <= 1e-5  # padded, masked tokens change nothing
    with pytest.raises(ExportError, match="raise it"):
        pad_tokens(tokens, torch.ones(1, 9), 8)
    assert np.abs(onnx_outputs(base_onnx, x) - want).max() > 1e-3  # the artifact does change the model
    n_lora = sum(v.numel() for k, v in art.items() if "lora_" in k)
    assert n_lora == sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    assert (tmp_path / "adapter.safetensors").stat().st_size < 0.5 * base_onnx.stat().st_size


def test_fp16_and_int8_variants_stay_close(tmp_path, adapted):
    model, _ = adapted
    tokens = torch.randn(1, 5, 384, generator=torch.Generator().manual_seed(0))
    m = ImageOnly(_merged(model), tokens, torch.ones(1, 5))
    fp32 = export_onnx(m, tmp_path / "m.onnx", 32)
    calib = [((_x(1, seed=s)[0].permute(1, 2, 0).numpy() + 1) * 127.5).astype(np.uint8) for s in range(8)]
    fp16 = to_fp16(fp32, tmp_path / "h.onnx")
    int8 = to_int8(fp32, tmp_path / "q.onnx", calib)
    x, other = _x(1, seed=20).numpy(), _x(1, seed=21).numpy()
    ref = onnx_outputs(fp32, x)
    spread = np.abs(onnx_outputs(fp32, other) - ref).mean()  # how much the output moves with the input
    assert np.abs(onnx_outputs(fp16, x) - ref).mean() < 0.01
    # int8 error depends on the CPU's int8 kernels: bound it against the output's own variation, not a constant
    assert np.abs(onnx_outputs(int8, x) - ref).mean() < 0.25 * spread
    assert int8.stat().st_size < 0.6 * fp32.stat().st_size and fp16.stat().st_size < 0.7 * fp32.stat().st_size
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob("*.pre.onnx"))


def test_variants_take_the_known_fp32_outputs_and_report_the_same(tmp_path, adapted):
    """export_concept hands variants() check_parity's fp32 outputs instead of running fp32 again: same record."""
    from pipeline.deploy.package import ExportOnnxConfig, variants

    model, _ = adapted
    tokens = torch.randn(1, 5, 384, generator=torch.Generator().manual_seed(0))
    fp32 = export_onnx(ImageOnly(_merged(model), tokens, torch.ones(1, 5)), tmp_path / "model.onnx", 32)
    photos = [((_x(1, seed=s)[0].permute(1, 2, 0).numpy() + 1) * 127.5).astype(np.uint8) for s in range(4)]
    calib = [((_x(1, seed=s)[0].permute(1, 2, 0).numpy() + 1) * 127.5).astype(np.uint8) for s in range(4, 8)]
    x = np.concatenate([image_to_array(im) for im in photos])
    cfg = ExportOnnxConfig(size=32)
    rerun = variants(fp32, tmp_path, photos, calib, cfg, [1])
    known = variants(fp32, tmp_path, photos, calib, cfg, [1], onnx_outputs(fp32, x))
    assert known == rerun and set(known) == {"fp32", "fp16", "int8"} and known["int8"]["lpips_vs_fp32"] > 0


def test_bad_files_give_clear_errors(tmp_path, adapted):
    _, folder = adapted
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ExportError, match="not a valid ONNX model"):
        check_onnx(bad)
    with pytest.raises(ExportError, match="run 'dvc repro export_onnx'"):
        check_onnx(tmp_path / "missing.onnx")
    with pytest.raises(ExportError, match="run 'dvc repro finetune_lora'"):
        adapter_artifact(tmp_path, torch.zeros(1, 1, 384), torch.ones(1, 1))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text((folder / "adapter_config.json").read_text())
    (broken / "adapter_model.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(ExportError, match="cannot be read"):
        adapter_artifact(broken, torch.zeros(1, 1, 384), torch.ones(1, 1))


def _cli(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "E2GAN_PROGRESS": "0"}
    return subprocess.run(
        [sys.executable, "-m", "pipeline.orchestrate.cli", "apply", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
    )


@pytest.mark.slow
def test_apply_cli(tmp_path, adapted, crops128):
    model, _ = adapted
    m = ImageOnly(_merged(model), torch.randn(1, 5, 384), torch.ones(1, 5))
    (tmp_path / "models/onnx/demo").mkdir(parents=True)
    export_onnx(m, tmp_path / "models/onnx/demo/model.onnx", 32)
    imgs = tmp_path / "imgs"
    (imgs / "sub").mkdir(parents=True)
    Image.fromarray(crops128[0][:32, :32]).save(imgs / "a.png")
    Image.fromarray(crops128[1]).save(imgs / "sub" / "b.jpg")  # 128 px: resized to 32 and back
    p = _cli(str(imgs / "a.png"), "-c", "demo", "-o", "one.png", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    got = np.asarray(Image.open(tmp_path / "one.png"))
    x = torch.from_numpy(crops128[0][:32, :32].astype(np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    with torch.no_grad():
        want = ((m(x)[0].clamp(-1, 1) + 1) * 127.5).round().permute(1, 2, 0).numpy()
    assert np.abs(got.astype(float) - want).max() <= 1
    p = _cli(str(imgs), "-c", "demo", "-o", "outdir", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert Image.open(tmp_path / "outdir/sub/b.png").size == (128, 128) and (tmp_path / "outdir/a.png").is_file()
    p = _cli(str(imgs / "sub" / "b.jpg"), "-c", "demo", "-o", "r.png", "--fit", "refuse", cwd=tmp_path)
    assert p.returncode == 2 and "the model takes 32x32" in p.stderr
    p = _cli(str(imgs), "-c", "nosuch", "-o", "x", cwd=tmp_path)
    assert p.returncode == 2 and "run 'dvc repro export_onnx@nosuch'" in p.stderr and "Traceback" not in p.stderr


def test_adapter_artifact_with_many_layers_peft_saves_as_suffixes(tmp_path):
    """peft writes 20+ target modules as shortest unique suffixes; the artifact still gets every layer."""
    base = _base("film")
    layers = sorted(n for n, _ in base.named_modules() if n.endswith((".to_scale", ".to_shift", ".conv")))
    assert len(layers) >= 20
    model = add_lora_spec(_base("film"), lora_spec({n: 1 + i % 2 for i, n in enumerate(layers)}))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    save_adapter(model, tmp_path / "adapter")
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["target_modules"]
    assert set(saved) != set(layers)  # shortened by peft: the config alone does not name the layers
    tokens = torch.randn(1, 5, 384)
    art = adapter_artifact(tmp_path / "adapter", tokens, torch.ones(1, 5))
    assert {k[: -len(".lora_A")] for k in art if k.endswith(".lora_A")} == set(layers)
    save_file(art, str(tmp_path / "adapter.safetensors"))
    base_onnx = export_onnx(
        ImageOnly(base, *pad_tokens(torch.randn(1, 3, 384), torch.ones(1, 3), 8)),
        tmp_path / "base.onnx",
        32,
        fold=False,
    )
    patched = apply_artifact(base_onnx, tmp_path / "adapter.safetensors", tmp_path / "patched.onnx")
    direct = export_onnx(ImageOnly(_merged(model), tokens, torch.ones(1, 5)), tmp_path / "direct.onnx", 32)
    x = _x(1).numpy()
    assert np.abs(onnx_outputs(patched, x) - onnx_outputs(direct, x)).max() <= 1e-5


@pytest.mark.parametrize("window", [0, 3])
def test_an_output_curve_exports_and_its_artifact_patches_a_base_exported_with_one(tmp_path, adapted, window):
    """finetune_lora.tone_knots (and tone_window: the outline gate): the merged model with its curve exports as
    ONNX within the parity tolerance; the artifact carries the curve and patches a base exported with an identity
    curve (export_base's tone_knots) to the direct export; a base without a curve, or with another gate, refuses it
    with the fix."""
    from pipeline.deploy.artifact import mark_tone_window
    from pipeline.model.nets.tone import save_tone, with_tone

    model, folder = adapted
    curved = tmp_path / "curved"
    curved.mkdir()
    for f in folder.iterdir():
        (curved / f.name).write_bytes(f.read_bytes())
    merged = with_tone(_merged(model), 8, window)
    with torch.no_grad():
        merged.tone.values.copy_(torch.round(merged.tone.values * 2) / 2)  # a staircase
        if window:  # a gate that blackens where the input is darker than around it, and brightens the rest
            merged.tone.values[3] = (merged.tone.grid > -0.3) * 1.2
    save_tone(merged, curved)
    tokens = torch.randn(1, 9, 384)
    direct = export_onnx(ImageOnly(merged, tokens, torch.ones(1, 9)), tmp_path / "direct.onnx", 32)
    x = _x(1)
    with torch.no_grad():
        ref = ImageOnly(merged, tokens, torch.ones(1, 9))(x).numpy()
        if window:  # the gate does its work on this input
            assert ((ref + 1) < 1e-6).mean() > 0.05
    assert np.abs(onnx_outputs(direct, x.numpy()) - ref).max() < 1e-4

    base = _base(model.get_base_model().cfg.norm)
    art = adapter_artifact(curved, tokens, torch.ones(1, 9))
    assert torch.equal(art["tone.values"], merged.tone.values.detach())
    assert ("tone.window" in art) == bool(window)
    save_file(art, str(tmp_path / "adapter.safetensors"))
    padded = pad_tokens(torch.randn(1, 5, 384), torch.ones(1, 5), 16)
    base_onnx = export_onnx(ImageOnly(with_tone(base, 8, window), *padded), tmp_path / "base.onnx", 32, fold=False)
    if window:
        mark_tone_window(base_onnx, window)
    patched = apply_artifact(base_onnx, tmp_path / "adapter.safetensors", tmp_path / "patched.onnx")
    want = onnx_outputs(direct, x.numpy())
    assert np.abs(onnx_outputs(patched, x.numpy()) - want).max() <= 5e-5  # steps up to 2x steep: 2x the float noise
    plain = export_onnx(ImageOnly(_base(model.get_base_model().cfg.norm), *padded), tmp_path / "p.onnx", 32, fold=False)
    with pytest.raises(ExportError, match="has none; set finetune_lora.tone_knots"):
        apply_artifact(plain, tmp_path / "adapter.safetensors", tmp_path / "x.onnx")
    with_tone(base, 4, window)
    other = export_onnx(ImageOnly(base, *padded), tmp_path / "o.onnx", 32, fold=False)
    with pytest.raises(ExportError, match="shape"):
        apply_artifact(other, tmp_path / "adapter.safetensors", tmp_path / "y.onnx")
    if window:  # the same shape, another box: the model's metadata tells
        with_tone(base, 8, 5)
        wider = mark_tone_window(export_onnx(ImageOnly(base, *padded), tmp_path / "w.onnx", 32, fold=False), 5)
        with pytest.raises(ExportError, match="window is 3, .* 5; set finetune_lora.tone_window to 3"):
            apply_artifact(wider, tmp_path / "adapter.safetensors", tmp_path / "z.onnx")
