"""LoRA via peft on the generator: only adapters train, merged equals unmerged, save/load round-trips."""

from __future__ import annotations

import copy
import os

import pytest
import torch

from pipeline.adapt.lora import (
    adaptable_layers,
    add_lora_spec,
    load_adapter,
    lora_parameters,
    lora_spec,
    merged_adapter,
    round_to,
    save_adapter,
    spec_ranks,
    trainable_parameters,
)
from pipeline.core.errors import E2GANError
from pipeline.model.nets.generator import E2GANGenerator, GeneratorConfig

TARGETS = ["down.0.conv", "ds.conv", "tb.attn_cross.to_q", "tb.attn_cross.to_v", "us.conv", "up.1.conv"]
RANKS = {"ds.conv": 8, "tb.attn_cross.to_q": 2}


def _base(norm: str = "instance") -> E2GANGenerator:
    torch.manual_seed(0)
    G = E2GANGenerator(GeneratorConfig(ngf=8, heads=2, residual=False, norm=norm, skip=norm == "film"))
    if (
        norm == "film"
    ):  # with the stem skip: the default base's layout  # trained-looking text norms (they start at zero)
        with torch.no_grad():
            for n, p in G.named_parameters():
                if ".to_scale." in n or ".to_shift." in n:
                    p.normal_(0, 0.05)
    return G.eval()


def add_lora(model, targets: list[str], ranks: dict[str, int] | None = None, r: int = 4, init: bool = True):
    """LoRA through the pipeline's one API (a lora_spec); without `init`, random B factors so the adapter acts."""
    model = add_lora_spec(model, lora_spec({t: (ranks or {}).get(t, r) for t in targets}))
    if not init:
        g = torch.Generator().manual_seed(2)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def _inputs():
    g = torch.Generator().manual_seed(1)
    return torch.rand(2, 3, 32, 32, generator=g) * 2 - 1, torch.randn(2, 5, 384, generator=g)


CASES = [  # (name, targets, rank_pattern)
    ("convs", ["down.0.conv", "us.conv"], {}),
    ("attention", ["tb.attn_cross.to_q", "tb.attn_self.to_v"], {"tb.attn_self.to_v": 3}),
    ("paper_choice", TARGETS, RANKS),
    ("text_norms", ["res.2.norm1.to_scale", "up.0.norm.to_shift", "us.conv"], {"res.2.norm1.to_scale": 2}),
]


@pytest.mark.parametrize("name,targets,ranks", CASES, ids=[c[0] for c in CASES])
def test_merged_equals_unmerged(name, targets, ranks):
    x, t = _inputs()
    base = _base("film" if name == "text_norms" else "instance")
    model = add_lora(base, targets, ranks, r=4, init=False)  # random B: the adapter changes the output
    with torch.no_grad():
        adapted = model(x, t)
        merged = copy.deepcopy(model).merge_and_unload()(x, t)
    assert torch.allclose(adapted, merged, atol=1e-5)
    with torch.no_grad(), model.disable_adapter():
        plain = model(x, t)
    assert not torch.allclose(adapted, plain, atol=1e-4)  # the adapter does something


def test_only_lora_weights_train_and_ranks_apply():
    base = _base()
    model = add_lora(base, TARGETS, RANKS, r=4)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    a = dict(model.named_modules())
    assert a["base_model.model.ds.conv"].r["default"] == 8
    assert a["base_model.model.tb.attn_cross.to_q"].r["default"] == 2
    assert a["base_model.model.us.conv"].r["default"] == 4
    assert trainable_parameters(model) < 0.2 * sum(p.numel() for p in base.parameters())


def test_save_load_roundtrip(tmp_path):
    x, t = _inputs()
    model = add_lora(_base(), TARGETS, RANKS, init=False)
    nbytes = save_adapter(model, tmp_path / "a")
    assert (tmp_path / "a" / "adapter_model.safetensors").is_file() and nbytes > 0
    with torch.no_grad():
        want = model(x, t)
        got = load_adapter(_base(), tmp_path / "a")(x, t)
        merged = load_adapter(_base(), tmp_path / "a", merge=True)(x, t)
    assert torch.equal(want, got) and torch.allclose(want, merged, atol=1e-5)


def test_fp16_adapter_with_biases_loads_as_the_rounded_model(tmp_path):
    """The shipped storage: every bias trained (bias="all"), rank-stabilised scaling, the file in fp16 at half the
    bytes; loaded (and merged) it computes what the in-memory model rounded to fp16 computes."""
    from safetensors.torch import load_file

    x, t = _inputs()
    spec = lora_spec({"ds.conv": 2, "us.conv": 4, "tb.mlp.fc1": 2}, alpha_scale=1.0, rslora=True, bias="all")
    model = add_lora_spec(_base(), spec)
    biases = [n for n, p in model.named_parameters() if n.endswith(".bias") and "lora_" not in n and p.requires_grad]
    assert biases and all("lora_" not in n for n in biases)  # every base bias trains beside the LoRA factors
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    round_to(model, "float16")
    save_adapter(model, tmp_path / "a16", "float16")
    save_adapter(model, tmp_path / "a32")
    n16, n32 = ((tmp_path / a / "adapter_model.safetensors").stat().st_size for a in ("a16", "a32"))
    stored = load_file(str(tmp_path / "a16" / "adapter_model.safetensors"))
    assert {v.dtype for v in stored.values()} == {torch.float16}
    assert any(k.endswith(".bias") and "lora_" not in k for k in stored)
    assert n16 < 0.7 * n32  # half the bytes, plus the header (names of every tensor)
    with torch.no_grad():
        want = model(x, t)
        got = load_adapter(_base(), tmp_path / "a16")(x, t)
        merged = load_adapter(_base(), tmp_path / "a16", merge=True)(x, t)
        untouched = _base()(x, t)
    assert torch.equal(want, got) and torch.allclose(want, merged, atol=1e-5)
    assert (want - untouched).abs().max() > 1e-3  # the biases and factors changed the output


def test_text_norm_linears_are_not_lora_targets():
    """A text norm's to_scale / to_shift only add a per-channel vector for one concept's prompts: its biases
    (bias="all") learn that directly, so the LoRA pool leaves them out."""
    from pipeline.model.nets.generator import E2GANGenerator, GeneratorConfig

    G = E2GANGenerator(GeneratorConfig(ngf=8, heads=2, norm="film"))
    pool = adaptable_layers(G)
    assert "ds.conv" in pool and "tb.attn_cross.to_k" in pool
    assert not [n for n in pool if n.endswith(("to_scale", "to_shift"))]


SPECS = [  # (name, per-layer ranks): a uniform spec, mixed ranks, one layer of each kind
    ("uniform", {"ds.conv": 2, "us.conv": 2, "tb.mlp.fc1": 2}),
    ("mixed", {"down.0.conv": 1, "ds.conv": 8, "tb.attn_cross.to_k": 4, "tb.attn_cross.to_v": 4, "up.1.conv": 2}),
    ("single", {"out": 3}),
]


@pytest.mark.parametrize("name,ranks", SPECS, ids=[s[0] for s in SPECS])
def test_spec_round_trips_through_peft(tmp_path, name, ranks):
    import json

    from peft import LoraConfig

    spec = lora_spec(ranks, alpha_scale=2.0)
    assert spec_ranks(spec) == ranks
    LoraConfig(**spec)  # exactly what peft takes
    base = _base()
    model = add_lora_spec(base, spec)
    mods = dict(model.named_modules())
    for layer, r in ranks.items():
        m = mods[f"base_model.model.{layer}"]
        assert m.r["default"] == r and m.scaling["default"] == pytest.approx(2.0)  # alpha = 2 r
    assert trainable_parameters(model) == sum(
        lora_parameters(dict(_base().named_modules())[n], r) for n, r in ranks.items()
    )
    save_adapter(model, tmp_path / "a")
    saved = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert saved["rank_pattern"] == spec["rank_pattern"] and saved["r"] == spec["r"]
    assert sorted(saved["target_modules"]) == sorted(ranks)


def test_training_steps_change_only_lora_weights():
    from pipeline.model.train import TrainConfig, build_models, gan_step

    model = add_lora_spec(_base().train(), lora_spec({"ds.conv": 2, "tb.attn_cross.to_q": 2, "up.1.conv": 4}))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = TrainConfig(lr_g=1e-2, ndf=8, lambda_lpips=0.0)
    x, t = _inputs()
    m = build_models(model, cfg)
    for _ in range(2):  # B starts at zero, so A first moves in the second step
        gan_step(m, x, x.flip(-1), t, torch.ones(2, 5), cfg)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed)
    assert any("lora_A" in n for n in changed) and any("lora_B" in n for n in changed)


def test_bad_targets_and_missing_adapter(tmp_path):
    with pytest.raises(E2GANError, match=r"\['res.9.conv1'\] are not Linear/Conv2d layers"):
        add_lora(_base(), ["res.9.conv1"])
    with pytest.raises(E2GANError, match="no adapter_config.json"):
        load_adapter(_base(), tmp_path)
    assert "tb.mlp.fc1" in adaptable_layers(_base())


SAVE_ADAPTER = """
import sys, torch
from pathlib import Path
from pipeline.adapt.lora import add_lora_spec, lora_spec, save_adapter
from pipeline.model.nets.generator import E2GANGenerator, GeneratorConfig
torch.manual_seed(0)
model = add_lora_spec(E2GANGenerator(GeneratorConfig(ngf=8, heads=2)), lora_spec(
    {"ds.conv": 2, "tb.attn_cross.to_q": 2, "up.1.conv": 4, "down.0.conv": 2, "tb.attn_self.to_k": 1}))
save_adapter(model, Path(sys.argv[1]))
"""


def test_the_same_adapter_saves_to_the_same_bytes_in_any_process(tmp_path):
    """peft keeps target_modules in a set (its order follows the process's hash seed); the saved folder does
    not, so DVC does not see a changed output when a rerun trains the same weights."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    for seed in ("1", "2", "3"):
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": seed}
        res = subprocess.run([sys.executable, "-c", SAVE_ADAPTER, str(tmp_path / seed)], env=env, capture_output=True)
        assert res.returncode == 0, res.stderr.decode()[-2000:]
    files = sorted(p.name for p in (tmp_path / "1").iterdir())
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(files)
    for f in files:
        assert (
            (tmp_path / "1" / f).read_bytes() == (tmp_path / "2" / f).read_bytes() == (tmp_path / "3" / f).read_bytes()
        )


def _perturbed(base, rank_of, seed: int = 3):
    """A 'fine-tuned' copy of `base`: each listed layer's weight moves by a random change of the given rank, every
    bias and every text norm weight moves too."""
    g = torch.Generator().manual_seed(seed)
    trained = copy.deepcopy(base)
    with torch.no_grad():
        for name, r in rank_of.items():
            w = trained.get_submodule(name).weight
            m = w.reshape(w.shape[0], -1)
            m += 0.05 * torch.randn(m.shape[0], r, generator=g) @ torch.randn(r, m.shape[1], generator=g)
        for n, p in trained.named_parameters():
            if n.endswith(".bias") or ".to_scale." in n or ".to_shift." in n:
                p += 0.05 * torch.randn(p.shape, generator=g)
    return trained.eval()


def test_truncated_adapter_is_exact_for_a_low_rank_change_and_folds_the_text_norms():
    from pipeline.adapt.lora import truncated_adapter
    from pipeline.model.nets.generator import pooled_text

    base = _base("film")
    targets = [n for n in adaptable_layers(base)]
    trained = _perturbed(base, {n: 2 for n in targets})
    x, text = _inputs()
    text = text[:1].expand(2, -1, -1)  # one prompt, as a concept model is used
    cond = pooled_text(text[:1], None)[0]
    spec = lora_spec({n: 4 for n in targets}, bias="all")
    adapter = truncated_adapter(base, trained, spec, cond).eval()
    with torch.no_grad():
        want = trained(x, text)
        got = adapter(x, text)
        merged = copy.deepcopy(adapter).merge_and_unload()(x, text)
    assert (got - want).abs().max() < 1e-4  # rank-2 changes at rank 4, text norms folded: exact
    assert (merged - got).abs().max() < 5e-5  # fp32 rounding through ~30 merged layers (1.03e-5 seen on Xeon)
    assert trainable_parameters(adapter) == sum(lora_parameters(base.get_submodule(n), 4) for n in targets) + sum(
        p.numel() for n, p in base.named_parameters() if n.endswith(".bias")
    )
    # a change of higher rank than the adapter's is cut to its best rank-r approximation (Eckart-Young): the
    # merged weight's error is the norm of the singular values past r
    rough = _perturbed(base, {n: 8 for n in targets})
    merged = truncated_adapter(base, rough, lora_spec({n: 3 for n in targets}, bias="all"), cond).merge_and_unload()
    for n in ("down.1.conv", "tb.mlp.fc1", "out"):
        w0 = base.get_submodule(n).weight
        delta = (rough.get_submodule(n).weight - w0).reshape(len(w0), -1)
        s = torch.linalg.svdvals(delta.detach())
        err = (merged.get_submodule(n).weight - rough.get_submodule(n).weight).reshape(delta.shape)
        assert float(torch.linalg.matrix_norm(err.detach())) == pytest.approx(
            float(s[3:].pow(2).sum().sqrt()), rel=1e-3, abs=1e-5
        )
    with pytest.raises(E2GANError, match="bias 'all'"):
        truncated_adapter(base, trained, lora_spec({n: 4 for n in targets}), cond)


def test_a_scaled_head_start_is_the_identity_at_zero_and_its_head_change_ships_exactly():
    """finetune_lora.start_head_scale: the base with its output layer scaled by 0 computes the identity for any
    prompt, by 1 is the base; a fine-tune from there changes that layer by rank <= 3 (3 output channels), so the
    shipped rank-4 adapter reproduces the trained model; an allocation without the head, or LoRA factors, are
    refused with the fix."""
    from pipeline.adapt.lora import FinetuneConfig, finetune_concept, scaled_head_start, truncated_adapter
    from pipeline.model.nets.generator import pooled_text

    torch.manual_seed(0)
    base = E2GANGenerator(GeneratorConfig(ngf=8, heads=2, norm="film", skip=True)).eval()
    with torch.no_grad():
        for n, p in base.named_parameters():  # a trained-looking base: text norms and head are not zero
            if ".to_scale." in n or ".to_shift." in n or n.startswith("out."):
                p.normal_(0, 0.05)
    x, text = _inputs()
    xc = x.clamp(-0.999, 0.999)
    with torch.no_grad():
        edit = (base(x, text) - xc).abs().max()
        assert edit > 0.05  # the base edits ...
        assert (scaled_head_start(base, 0.0).eval()(x, text) - xc).abs().max() < 1e-5  # ... at scale 0 nothing
        faint = (scaled_head_start(base, 0.1).eval()(x, text) - xc).abs().max()
        assert 0.05 * edit < faint < 0.2 * edit  # ... at 0.1 a faint copy of its edit
        assert torch.equal(scaled_head_start(base, 1.0)(x, text), base(x, text))
    assert base.out.weight.abs().sum() > 0  # the base is left as it is

    targets = adaptable_layers(base)
    trained = _perturbed(scaled_head_start(base, 0.1), {n: 2 for n in targets if n != "out"})
    with torch.no_grad():  # a head learned from there: a full-rank (3) matrix, nothing like W_out
        trained.out.weight.copy_(0.05 * torch.randn(trained.out.weight.shape))
    text = text[:1].expand(2, -1, -1)
    cond = pooled_text(text[:1], None)[0]
    adapter = truncated_adapter(base, trained, lora_spec({n: 4 for n in targets}, bias="all"), cond).eval()
    with torch.no_grad():
        assert (adapter(x, text) - trained(x, text)).abs().max() < 1e-4

    with pytest.raises(E2GANError, match="does not adapt it: add 'out'"):
        spec = lora_spec({n: 4 for n in targets if n != "out"}, bias="all")
        finetune_concept(base, spec, None, FinetuneConfig(start_head_scale=0.1), None)
    with pytest.raises(ValueError, match="set start_head_scale 1"):
        FinetuneConfig(train_as="lora", start_head_scale=0.0)
    assert FinetuneConfig(train_as="lora").start_head_scale == 1.0


def test_patch_must_be_a_multiple_of_16():
    from pipeline.adapt.lora import FinetuneConfig

    with pytest.raises(ValueError, match="multiple of 16"):
        FinetuneConfig(patch=40)


def test_run_generator_runs_a_peft_model_merged_and_leaves_it_unmerged():
    """Scoring (run_generator) runs an adapter merged, as it ships: the unmerged model's outputs to one level of
    255, and the model being trained keeps its LoRA layers and its train mode's weights untouched."""
    import numpy as np

    from pipeline.core.tensors import images_to_tensor, tensor_to_images
    from pipeline.model.infer import inference_model, run_generator

    model = add_lora(_base("film"), TARGETS, RANKS, init=False)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    g = torch.Generator().manual_seed(3)
    images = [(torch.rand(32, 32, 3, generator=g) * 255).to(torch.uint8).numpy() for _ in range(3)]
    tokens, mask = torch.randn(1, 5, 384, generator=g), torch.ones(1, 5)
    with torch.no_grad():
        want = tensor_to_images(model(images_to_tensor(images), tokens.expand(3, -1, -1), mask.expand(3, -1)))
    got = run_generator(model, images, tokens, mask)
    assert max(int(np.abs(a.astype(int) - b.astype(int)).max()) for a, b in zip(got, want)) <= 1
    assert not hasattr(inference_model(model), "merge_and_unload")  # what ran was a plain merged module
    assert any("lora_B" in n for n, _ in model.named_parameters())  # the trained model is still unmerged
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    with model.disable_adapter(), torch.no_grad():  # and the adapter does act: without it the outputs differ
        plain = tensor_to_images(model(images_to_tensor(images), tokens.expand(3, -1, -1), mask.expand(3, -1)))
    assert max(int(np.abs(a.astype(int) - b.astype(int)).max()) for a, b in zip(plain, want)) > 1


def test_merged_adapter_is_peft_merge_without_peft(tmp_path):
    """The direct merge (read from the files: no peft import) gives peft's merge_and_unload weights: per-layer
    ranks and alphas, rank-stabilised scaling, trained biases, fp16 storage, conv and linear layers; a layer or
    bias that does not fit the base, and adapters that are not plain LoRA, are refused by name."""
    import json

    spec = lora_spec({"ds.conv": 2, "us.conv": 4, "tb.mlp.fc1": 3, "down.0.conv": 4}, 2.0, rslora=True, bias="all")
    model = add_lora_spec(_base("film"), spec)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    save_adapter(model, tmp_path / "a", "float16")
    from peft import PeftModel

    want = PeftModel.from_pretrained(_base("film"), str(tmp_path / "a")).merge_and_unload().state_dict()
    got = merged_adapter(_base("film"), tmp_path / "a").state_dict()
    assert want.keys() == got.keys()
    worst = max((want[k] - got[k]).abs().max().item() for k in want)
    assert worst < 1e-6
    changed = [k for k in want if not torch.equal(want[k], _base("film").state_dict()[k])]
    assert any(k.endswith(".weight") for k in changed) and any(k.endswith(".bias") for k in changed)
    x, t = _inputs()
    with torch.no_grad():  # load_adapter(merge=True) takes this path and computes the unmerged model's outputs
        ref = load_adapter(_base("film"), tmp_path / "a")(x, t)
        import pipeline.adapt.lora as lora

        reads = []
        real = lora.read_adapter
        with pytest.MonkeyPatch.context() as mp:  # the files are read once
            mp.setattr(lora, "read_adapter", lambda *a, **k: reads.append(a) or real(*a, **k))
            merged = load_adapter(_base("film"), tmp_path / "a", merge=True)
        assert len(reads) == 1
        assert torch.allclose(merged(x, t), ref, atol=1e-5)
    small = E2GANGenerator(GeneratorConfig(ngf=16, heads=2, residual=False, norm="film", skip=True))
    with pytest.raises(E2GANError, match="does not fit this base; the adapter is for another base"):
        merged_adapter(small, tmp_path / "a")
    cfg = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps({**cfg, "use_dora": True}))
    with pytest.raises(E2GANError, match="not a plain LoRA adapter"):
        merged_adapter(_base("film"), tmp_path / "a")


def test_an_output_curve_ships_with_the_truncated_adapter_and_loads_merged_or_not(tmp_path):
    """finetune_lora.tone_knots: the curve trained beside the full-rank fine-tune is part of the shipped adapter:
    truncated_adapter carries it, save_adapter_folder stores it (and counts its bytes), and load_adapter puts it
    back, merged (without peft) or as a PeftModel: each computes what the trained model does."""
    from pipeline.adapt.lora import save_adapter_folder, truncated_adapter
    from pipeline.model.nets.generator import pooled_text
    from pipeline.model.nets.tone import FILE, with_tone

    base = _base("film")
    targets = adaptable_layers(base)
    trained = with_tone(_perturbed(base, {n: 2 for n in targets}), 8)
    with torch.no_grad():
        trained.tone.values.copy_(trained.tone.values.sign() * trained.tone.values.abs().sqrt())  # a real curve
    x, text = _inputs()
    text = text[:1].expand(2, -1, -1)
    cond = pooled_text(text[:1], None)[0]
    spec = lora_spec({n: 4 for n in targets}, bias="all")
    adapter = truncated_adapter(base, trained, spec, cond).eval()
    assert base.tone is None  # the base is left as it is
    with torch.no_grad():
        want = trained(x, text)
        assert (adapter(x, text) - want).abs().max() < 1e-4
        assert (adapter(x, text) - with_tone(copy.deepcopy(base), 8)(x, text)).abs().max() > 1e-2
    assert trainable_parameters(adapter) == trainable_parameters(truncated_adapter(base, base, spec, cond)) + 27
    sizes = save_adapter_folder(adapter, spec, {"concept": "c"}, tmp_path / "a", "float32")
    assert sizes["tone_bytes"] == (tmp_path / "a" / FILE).stat().st_size > 0
    assert sizes["adapter_bytes"] == sizes["tone_bytes"] + (tmp_path / "a" / "adapter_model.safetensors").stat().st_size
    with torch.no_grad():
        merged = load_adapter(_base("film"), tmp_path / "a", merge=True)
        assert (merged(x, text) - want).abs().max() < 1e-4
        peft_model = load_adapter(_base("film"), tmp_path / "a").eval()
        assert (peft_model(x, text) - want).abs().max() < 1e-4
    from pipeline.adapt.lora import FinetuneConfig

    with pytest.raises(ValueError, match="set train_as 'full_rank'"):
        FinetuneConfig(train_as="lora", tone_knots=8)
    with pytest.raises(ValueError, match="set tone_knots too"):
        FinetuneConfig(tone_window=5)
    with pytest.raises(ValueError, match="odd and at least 3"):
        FinetuneConfig(tone_knots=8, tone_window=4)
    assert FinetuneConfig(tone_knots=8, tone_window=5).tone_window == 5
