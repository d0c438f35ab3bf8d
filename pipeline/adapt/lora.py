"""LoRA adapters (peft) on chosen layers of a frozen generator: build, count, save, load, merge."""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from pipeline.core.errors import E2GANError
from pipeline.core.frozen import FrozenConfig
from pipeline.data.dataset import patch_pairs
from pipeline.model.nets.tone import load_tone, save_tone, tone_parameters, with_tone
from pipeline.model.train import Models, TrainConfig, build_models, fit


class FinetuneConfig(FrozenConfig):
    """finetune_lora@C: LoRA (peft) on the crucial layers of the frozen base, on a clustered subset."""

    subset: Literal["kmeans", "random", "all"] = "kmeans"  # which training pairs to keep
    subset_fraction: float = Field(0.5, gt=0.0, le=1.0)  # kept share of the concept's training pairs
    subset_features: str = "lpips"  # "lpips" (offline AlexNet features) or a CLIP id/path
    eval_limit: int = Field(0, ge=0)  # val crops scored before and after (0 = all; else spread over all val photos)
    store: Literal["float16", "float32"] = "float16"  # the adapter file's dtype (the model is evaluated as stored)
    # LoRA+ (Hayou et al. 2024, peft's create_loraplus_optimizer): the B factors and the biases learn at this
    # multiple of train.lr_g (1 = one learning rate for every trainable weight)
    loraplus_ratio: float = Field(1.0, ge=1.0)
    # every this many steps (and at the end) the adapter is scored on `select_limit` val crops spread over all
    # val photos, and the best step is the one shipped (a GAN's last step is not its best); 0 = the last step
    select_every: int = Field(0, ge=0)
    select_from: int = Field(0, ge=0)  # the first step scored (the last step always is)
    select_limit: int = Field(48, ge=1)
    # how the adapter learns. "full_rank": every weight of a copy of the base trains (at `full_rank_lr_g`) and what ships
    # is truncated_adapter of it: each adapted layer's change as its rank-r truncated SVD (the ranks of search_ranks'
    # spec), the text norms' changes folded into their biases; every score (the shipped step included) is of the
    # truncated adapter. "lora": the LoRA factors and biases train directly (peft's init, LoRA+, train.lr_g).
    train_as: Literal["full_rank", "lora"] = "full_rank"
    full_rank_lr_g: float = Field(2e-4, gt=0.0)
    # where the full-rank training starts: the base with its output layer scaled by this. 1: the base as it is (for
    # an unseen prompt it applies a mix of its own concepts); 0: the identity (the input passed through), but then
    # no gradient reaches the body until the head has grown; in between, a faint copy of the base's edit with the
    # body's features and gradients intact. The layer's change has rank <= 3 (3 output channels): an adapter of
    # rank >= 3 on `out` carries it exactly.
    start_head_scale: float = Field(1.0, ge=0.0, le=1.0)
    # train on random `patch` x `patch` windows of the pairs (the same window of input and target; 0 = the whole
    # crop): the generator is convolutional with attention that knows no positions, so it trains on windows and
    # runs on whole images; a step costs about (patch / image_size)^2 of a whole-crop step. Scored on whole crops.
    patch: int = Field(0, ge=0, multiple_of=16)
    # a per-channel output curve trained with the adapter (nets/tone.py): this many linear segments on [-1, 1],
    # learned at `tone_lr` (its values move by about that much per step); 0 = none. Stored beside the adapter.
    tone_knots: int = Field(0, ge=0, le=256)
    tone_lr: float = Field(0.01, gt=0.0)
    # with the curve, an outline gate: one more curve, of the input's local contrast over a `tone_window` box (odd;
    # 0 = none), that scales the output's brightness (dark outlines where the photo is darker than around it)
    tone_window: int = Field(0, ge=0, le=31)
    train: TrainConfig = Field(default_factory=TrainConfig)  # the shared loop's settings

    @model_validator(mode="after")
    def _scaled_head_needs_full_rank(self):
        if self.start_head_scale != 1.0 and self.train_as != "full_rank":
            raise ValueError(
                "start_head_scale below 1 rescales the base's output layer, which LoRA factors cannot undo: "
                "use it with train_as 'full_rank', or set start_head_scale 1"
            )
        return self

    @model_validator(mode="after")
    def _tone_needs_full_rank(self):
        if self.tone_knots and self.train_as != "full_rank":
            raise ValueError("tone_knots trains a curve beside a full-rank fine-tune: set train_as 'full_rank'")
        if self.tone_window and not self.tone_knots:
            raise ValueError("tone_window is the output curve's outline gate: set tone_knots too (or tone_window 0)")
        if self.tone_window and (self.tone_window < 3 or self.tone_window % 2 == 0):
            raise ValueError(
                f"tone_window must be odd and at least 3 (a box centred on each pixel), or 0: got {self.tone_window}"
            )
        return self


def adaptable_layers(model: nn.Module) -> list[str]:
    """Names of the layers LoRA adapts here: every Conv2d and Linear except a text norm's `to_scale` /
    `to_shift`. For one concept's prompts those can only add a per-channel vector to the norm's scale and shift,
    which the adapter learns directly as the norm's biases (lora_spec's `bias`), a few thousand numbers."""
    from pipeline.model.nets.generator import TextNorm

    norm_linears = {
        f"{n}.{k}" for n, m in model.named_modules() if isinstance(m, TextNorm) for k in ("to_scale", "to_shift")
    }
    prefix = "base_model.model."  # the same names inside a PeftModel
    return [
        n
        for n, m in model.named_modules()
        if isinstance(m, (nn.Linear, nn.Conv2d)) and n.removeprefix(prefix) not in norm_linears
    ]


def lora_parameters(layer: nn.Module, r: int) -> int:
    """Trainable parameters of a rank-r LoRA on `layer`: A (r x fan_in) + B (fan_out x r)."""
    if isinstance(layer, nn.Conv2d):
        return r * (
            layer.in_channels // layer.groups * layer.kernel_size[0] * layer.kernel_size[1] + layer.out_channels
        )
    if isinstance(layer, nn.Linear):
        return r * (layer.in_features + layer.out_features)
    raise E2GANError(f"{type(layer).__name__} is not a layer LoRA can adapt here (Linear or Conv2d)")


def lora_spec(ranks: dict[str, int], alpha_scale: float = 1.0, rslora: bool = False, bias: str = "none") -> dict:
    """The LoraConfig keyword arguments for per-layer ranks (what search_ranks writes and peft takes):
    target_modules, r, lora_alpha and anchored rank_pattern / alpha_pattern for the layers that differ,
    use_rslora (scale alpha / sqrt(r) instead of alpha / r) and bias ("all": every bias of the generator is
    trained and stored with the adapter, e.g. the text norms' per-channel scale and shift)."""
    if not ranks:
        raise E2GANError("no LoRA target layers; analyze_layers chose none (lower analyze_layers.min_gain)")
    r = max(set(ranks.values()), key=list(ranks.values()).count)  # the most common rank is the default
    return {
        "target_modules": sorted(ranks),
        "r": r,
        "lora_alpha": alpha_scale * r,
        "rank_pattern": {f"^{k}$": v for k, v in sorted(ranks.items()) if v != r},
        "alpha_pattern": {f"^{k}$": alpha_scale * v for k, v in sorted(ranks.items()) if v != r},
        "use_rslora": rslora,
        "bias": bias,
    }


def spec_ranks(spec: dict) -> dict[str, int]:
    """Per-layer ranks of a lora_spec (the inverse of lora_spec)."""
    pattern = {k.strip("^$"): v for k, v in spec.get("rank_pattern", {}).items()}
    return {t: pattern.get(t, spec["r"]) for t in spec["target_modules"]}


def add_lora_spec(model: nn.Module, spec: dict):
    """add_lora from a lora_spec dict."""
    from peft import LoraConfig, get_peft_model

    _check_targets(model, spec["target_modules"])
    return get_peft_model(model, LoraConfig(**{"bias": "none", **spec}, lora_dropout=0.0))


def _check_targets(model: nn.Module, targets: list[str]) -> None:
    known = {n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}  # what peft can wrap
    unknown = [t for t in targets if t not in known]
    if unknown:
        raise E2GANError(
            f"LoRA targets {unknown} are not Linear/Conv2d layers of the generator; "
            f"choose from: {', '.join(sorted(known))}"
        )


@torch.no_grad()
def truncated_adapter(base: nn.Module, trained: nn.Module, spec: dict, cond: torch.Tensor):
    """The peft LoRA adapter of `spec` nearest to `trained`, a full-rank fine-tune of `base`, for the prompt
    whose pooled text embedding is `cond` (D,):

    - each target layer's factors are the rank-r truncated SVD of its weight change, the best rank-r
      approximation in Frobenius norm (Eckart-Young);
    - a text norm's `to_scale` / `to_shift` weight change only adds (W' - W) @ cond to that norm's scale and
      shift for the prompt: it is folded into their biases, exactly (spec's `bias` must be "all");
    - the other biases are the trained ones; every other change (layers outside the spec, LayerNorm weights)
      is dropped.

    Returns a PeftModel on a copy of `base`; `trained` and `base` are left as they are."""
    from pipeline.model.nets.generator import TextNorm

    if spec.get("bias", "none") != "all":
        raise E2GANError("train_as 'full_rank' keeps the trained biases: it needs search_ranks.bias 'all'")
    G = copy.deepcopy(base).eval()
    if getattr(trained, "tone", None) is not None:  # the output curve ships as trained
        G.tone = copy.deepcopy(trained.tone).eval()
    biases = dict(trained.named_parameters())
    for n, p in G.named_parameters():
        if n.endswith(".bias"):
            p.copy_(biases[n])
    cond = cond.float().reshape(-1)
    for n, m in G.named_modules():
        if isinstance(m, TextNorm):
            for k in ("to_scale", "to_shift"):
                w1, w0 = trained.get_submodule(f"{n}.{k}").weight, getattr(m, k).weight
                getattr(m, k).bias.add_((w1 - w0).float() @ cond)
    model = add_lora_spec(G, spec)
    inner = model.base_model.model
    for name, r in spec_ranks(spec).items():
        layer = inner.get_submodule(name)
        delta = trained.get_submodule(name).weight.float() - base.get_submodule(name).weight.float()
        U, S, Vh = torch.linalg.svd(delta.reshape(delta.shape[0], -1), full_matrices=False)
        k = min(r, S.numel())
        root = S[:k].sqrt()
        a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        A = torch.zeros(r, Vh.shape[1])
        B = torch.zeros(U.shape[0], r)
        A[:k] = root[:, None] * Vh[:k] / layer.scaling["default"]
        B[:, :k] = U[:, :k] * root
        a.copy_(A.reshape(a.shape))
        b.copy_(B.reshape(b.shape))
    return model


HEAD = "out"  # the generator's output layer (a Conv2d to 3 channels)


def scaled_head_start(base: nn.Module, scale: float) -> nn.Module:
    """A copy of `base` with its output layer's weight and bias multiplied by `scale` (FinetuneConfig
    .start_head_scale): with the generator's residual output, 0 computes the identity for any prompt and 1 is the
    base; the body is the base's either way."""
    G = copy.deepcopy(base)
    if scale != 1.0:
        if not getattr(G.cfg, "residual", False):
            raise E2GANError(
                "start_head_scale below 1 needs a generator with residual output (train_base.generator.residual)"
            )
        head = G.get_submodule(HEAD)
        with torch.no_grad():
            head.weight.mul_(scale)
            head.bias.mul_(scale)
    return G


def trainable_parameters(model: nn.Module) -> int:
    """The weights an adapter trains: the trainable ones, and its output curve's (frozen inside a PeftModel)."""
    return sum(p.numel() for n, p in model.named_parameters() if p.requires_grad or ".tone." in f".{n}")


def round_to(model: nn.Module, dtype: str) -> None:
    """Round the trainable weights to `dtype` in place (still float32 tensors): the model then computes exactly
    what the adapter stored in that dtype does."""
    if dtype != "float32":
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.copy_(p.to(getattr(torch, dtype)).float())


def save_adapter(peft_model, folder: Path, dtype: str = "float32") -> int:
    """A standard peft adapter folder (adapter_config.json + adapter_model.safetensors, its tensors in `dtype`;
    peft casts them back to the model's dtype when it loads them); returns its bytes."""
    import json

    from safetensors.torch import load_file, save_file

    peft_model.save_pretrained(str(folder), safe_serialization=True)
    if dtype != "float32":
        weights = Path(folder) / "adapter_model.safetensors"
        t = load_file(str(weights))
        save_file({k: v.to(getattr(torch, dtype)).contiguous() for k, v in t.items()}, str(weights), {"format": "pt"})
    cfg_file = Path(folder) / "adapter_config.json"  # peft writes target_modules from a set: order by process
    cfg = json.loads(cfg_file.read_text())
    if isinstance(cfg.get("target_modules"), list):
        cfg["target_modules"] = sorted(cfg["target_modules"])
    cfg_file.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")  # the same bytes for the same adapter
    return sum(f.stat().st_size for f in Path(folder).iterdir() if f.is_file())


def save_adapter_folder(peft_model, spec: dict, card: dict, out: Path, dtype: str = "float32") -> dict[str, int]:
    """The adapter folder, swapped in atomically: peft's files plus e2gan.json (`card` and the per-layer ranks).
    Returns its sizes in bytes."""
    from pipeline.core.io import atomic_dir, atomic_write_json

    with atomic_dir(out) as tmp:
        weights = save_adapter(peft_model, tmp, dtype) and (tmp / "adapter_model.safetensors").stat().st_size
        tone = save_tone(peft_model.base_model.model, tmp)
        atomic_write_json(tmp / "e2gan.json", {**card, "ranks": spec_ranks(spec), "dtype": dtype})
        folder_bytes = sum(f.stat().st_size for f in tmp.iterdir() if f.is_file())
    # what a concept costs: the weights an app loads (the LoRA file and the output curve's)
    return {"adapter_bytes": weights + tone, "tone_bytes": tone, "folder_bytes": folder_bytes}


def load_adapter(base: nn.Module, folder: Path, merge: bool = False) -> nn.Module:
    """PeftModel.from_pretrained on a base generator; with `merge`, the merged plain nn.Module (merged_adapter:
    read from the files without importing peft where the adapter is plain LoRA, as this project saves it)."""
    folder = Path(folder)
    if not (folder / "adapter_config.json").is_file():
        raise E2GANError(f"{folder}: no adapter_config.json; run 'dvc repro finetune_lora' for this concept")
    if merge:
        saved = read_adapter(folder)
        if plain_lora(saved[0]):
            return load_tone(_merge(base, folder, *saved), folder, E2GANError)
    from peft import PeftModel

    try:
        model = PeftModel.from_pretrained(base, str(folder))
    except (ValueError, RuntimeError, OSError) as e:
        raise E2GANError(f"{folder}: adapter does not load on this base ({str(e).splitlines()[0]})") from None
    load_tone(model.base_model.model, folder, E2GANError)
    return model.merge_and_unload() if merge else model


PEFT_PREFIX, LORA_A, LORA_B = "base_model.model.", ".lora_A.weight", ".lora_B.weight"  # peft's saved names
# adapter_config options that change what a merge computes beyond W + scale * B @ A (and the biases): an adapter
# with any of them set merges through peft itself
NOT_PLAIN = (
    "use_dora", "lora_bias", "fan_in_fan_out", "modules_to_save", "layer_replication", "trainable_token_indices",
    "target_parameters", "alora_invocation_tokens", "arrow_config", "use_bdlora", "use_qalora",
)  # fmt: skip


def plain_lora(cfg: dict) -> bool:
    """Whether a saved adapter's config is plain LoRA (merged_adapter computes its merge exactly)."""
    return cfg.get("peft_type") == "LORA" and not any(cfg.get(k) for k in NOT_PLAIN)


def read_adapter(folder: Path, error: type[E2GANError] = E2GANError):
    """A saved peft LoRA adapter as tensors: (its config, {layer: (A, B, scale)} with scale = alpha / r, or
    alpha / sqrt(r) with rslora, {base layer's bias name: the trained bias}). `error` (an E2GANError class) names
    the fix when the files are missing, unreadable or incomplete."""
    import json

    from safetensors.torch import load_file

    folder = Path(folder)
    try:
        cfg = json.loads((folder / "adapter_config.json").read_text())
        weights = load_file(str(folder / "adapter_model.safetensors"))
    except FileNotFoundError as e:
        raise error(
            f"{folder}: no adapter ({Path(e.filename).name} missing); run 'dvc repro finetune_lora' for this concept"
        ) from None
    except Exception as e:  # safetensors and json raise their own errors for corrupt files
        raise error(
            f"{folder}: the adapter cannot be read ({str(e).splitlines()[0][:200]}); "
            "delete the folder and rerun 'dvc repro finetune_lora'"
        ) from None
    ranks = {k.strip("^$"): v for k, v in cfg.get("rank_pattern", {}).items()}
    alphas = {k.strip("^$"): v for k, v in cfg.get("alpha_pattern", {}).items()}
    # the layers from the weights: peft saves 20+ target modules as shortest unique suffixes ('norm2.to_shift'),
    # so adapter_config.json does not name every layer in full
    pre = PEFT_PREFIX
    names = {k[len(pre) : -len(s)] for k in weights for s in (LORA_A, LORA_B) if k.startswith(pre) and k.endswith(s)}
    if not names:
        raise error(f"{folder}: the adapter holds no LoRA weights; rerun 'dvc repro finetune_lora'")
    layers = {}
    for layer in sorted(names):
        a, b = weights.get(pre + layer + LORA_A), weights.get(pre + layer + LORA_B)
        if a is None or b is None:
            raise error(
                f"{folder}: no LoRA {'A' if a is None else 'B'} weights for {layer!r}; the adapter is incomplete"
            )
        r = ranks.get(layer, cfg["r"])
        layers[layer] = (
            a.float(),
            b.float(),
            alphas.get(layer, cfg["lora_alpha"]) / (r**0.5 if cfg.get("use_rslora") else r),
        )
    biases = {  # bias="all": the trained biases, by the base layer's name
        k[len(pre) :].replace(".base_layer.", "."): v.float()
        for k, v in weights.items()
        if k.startswith(pre) and k.endswith(".bias") and ".lora_" not in k
    }
    return cfg, layers, biases


def lora_delta(a: torch.Tensor, b: torch.Tensor, scale: float, shape: tuple[int, ...]) -> torch.Tensor:
    """The merged weight change of one LoRA layer: scale * B @ A, in the layer's weight shape (float64)."""
    return (scale * (b.flatten(1).double() @ a.flatten(1).double())).reshape(shape)


@torch.no_grad()
def merged_adapter(base: nn.Module, folder: Path) -> nn.Module:
    """`base` (changed in place and returned) with the plain LoRA adapter in `folder` merged in: each layer's
    weight + scale * B @ A and the trained biases, what peft's merge_and_unload computes, read from the files
    without importing peft (which imports a transformers model: seconds in every stage that only runs a student).
    An E2GANError when a layer or bias does not fit the base."""
    return _merge(base, folder, *read_adapter(folder))


@torch.no_grad()
def _merge(base: nn.Module, folder: Path, cfg: dict, layers: dict, biases: dict) -> nn.Module:
    """merged_adapter on read_adapter's (config, layers, biases) of `folder` (named in errors)."""
    if not plain_lora(cfg):
        raise E2GANError(f"{folder}: not a plain LoRA adapter; load it with load_adapter(merge=True)")
    params = dict(base.named_parameters())
    for layer, (a, b, scale) in layers.items():
        w = params.get(f"{layer}.weight")
        if w is None or a.shape[0] != b.shape[1] or b.shape[0] * a[0].numel() != w.numel():
            raise E2GANError(f"{folder}: LoRA layer {layer!r} does not fit this base; the adapter is for another base")
        w.copy_((w.double() + lora_delta(a, b, scale, w.shape)).to(w.dtype))
    for name, v in biases.items():
        p = params.get(name)
        if p is None or p.shape != v.shape:
            raise E2GANError(f"{folder}: bias {name!r} does not fit this base; the adapter is for another base")
        p.copy_(v.to(p.dtype))
    return base.eval()


def finetune(
    base: nn.Module,
    spec: dict | None,
    data,
    cfg: TrainConfig,
    work: Path,
    desc: str = "finetune",
    perceptual=None,
    evaluate=None,
    eval_every: int = 0,
    loraplus_ratio: float = 1.0,
    eval_from: int = 0,
    tone_lr: float | None = None,
):
    """Train a copy of `base` on `data` with the shared loop: LoRA per `spec`, or every weight when spec is None.

    Returns (model, history, seconds); the model is a PeftModel when a spec is given. `evaluate` and
    `eval_every` / `eval_from` go to `fit` (an untimed evaluation hook); `tone_lr`: the output curve's rate."""
    t0 = time.perf_counter()
    m = finetune_models(base, spec, cfg, loraplus_ratio, tone_lr)
    history = fit(m, data, cfg, work, desc, perceptual, evaluate=evaluate, eval_every=eval_every, eval_from=eval_from)
    return (m.ema if m.ema is not None else m.G).eval(), history, time.perf_counter() - t0


def finetune_models(
    base: nn.Module, spec: dict | None, cfg: TrainConfig, loraplus_ratio: float = 1.0, tone_lr: float | None = None
) -> Models:
    """What `finetune` trains: a copy of `base` with LoRA per `spec` (or every weight trainable), a fresh
    discriminator and optimisers, seeded by cfg.seed; with LoRA and `loraplus_ratio` > 1, peft's LoRA+ optimiser
    (Adam, the B factors and biases at that multiple of lr_g). An output curve on `base` trains at `tone_lr`."""
    torch.manual_seed(cfg.seed)  # LoRA A init
    G = copy.deepcopy(base).train()
    model = add_lora_spec(G, spec) if spec is not None else G.requires_grad_(True)
    m = build_models(model, cfg, param_groups(model, cfg.lr_g, tone_lr))
    return with_loraplus(m, cfg, loraplus_ratio if spec is not None else 1.0)


def param_groups(G: nn.Module, lr: float, tone_lr: float | None) -> list[dict] | None:
    """Adam's parameter groups when G's output curve (nets/tone.py) learns at its own rate `tone_lr`; None (one
    rate for every trainable weight) otherwise."""
    tone = {id(p) for p in tone_parameters(G)}
    if not tone or tone_lr is None:
        return None
    rest = [p for p in G.parameters() if p.requires_grad and id(p) not in tone]
    return [{"params": rest, "lr": lr}, {"params": tone_parameters(G), "lr": tone_lr}]


def with_loraplus(m: Models, cfg: TrainConfig, ratio: float) -> Models:
    """`m` with peft's LoRA+ optimiser for its generator (Adam; B factors and biases at `ratio` x lr_g) when
    `ratio` > 1 and the generator has LoRA layers; else `m` as it is."""
    if ratio > 1 and any("lora_B" in n for n, _ in m.G.named_parameters()):
        from peft.optimizers import create_loraplus_optimizer

        m.opt_g = create_loraplus_optimizer(
            m.G, torch.optim.Adam, lr=cfg.lr_g, loraplus_lr_ratio=ratio, betas=(cfg.beta1, 0.999)
        )
    return m


def finetune_concept(
    base: nn.Module, spec: dict, concept, cfg: FinetuneConfig, work: Path, features: tuple[Path, str] | None = None
) -> tuple[nn.Module, list[dict], dict]:
    """finetune_lora@C: the adapter of `spec` for one concept, on its subset of pairs, with the shared loop:
    trained at full rank and truncated (cfg.train_as "full_rank"), or as LoRA factors on the frozen base ("lora").

    `concept` is a data.dataset.ConceptData. `features`: (a folder, the code hash) where the subset's image
    features are kept by the inputs' content (io.cached_arrays): every concept's training inputs are crops of
    the same photos, so they are computed once. Returns (the PeftModel, the loss history, facts for the metrics)."""
    from pipeline.adapt.subset import choose_subset, coverage, image_features, random_subset

    full_rank = cfg.train_as == "full_rank"
    if full_rank and cfg.start_head_scale != 1.0 and HEAD not in spec_ranks(spec):
        raise E2GANError(
            f"finetune_lora.start_head_scale {cfg.start_head_scale} changes the output layer '{HEAD}', but the "
            f"allocation does not adapt it: add '{HEAD}' to the ranks (search_ranks) or set start_head_scale 1"
        )
    pairs = concept.pairs
    # LPIPS features of the inputs, once: the k-means subset and its coverage figures
    feats = None
    if cfg.subset != "all" and cfg.subset_features == "lpips":
        from pipeline.core.io import cached_arrays

        cache, code = features or (None, "")
        x = pairs.inputs
        feats = cached_arrays([x.numpy()], cache, code, lambda _: image_features(x, "lpips"), rows=len(x))
    kept = choose_subset(
        pairs.inputs, cfg.subset, cfg.subset_fraction, cfg.subset_features, cfg.train.seed, feats=feats
    )
    facts = {
        "pairs_total": len(pairs.inputs),
        "pairs_used": len(kept),
        "subset": cfg.subset,
        "subset_fraction": cfg.subset_fraction,
    }
    if feats is not None and len(kept) < len(pairs.inputs):
        # how well the kept inputs cover all inputs, vs a random subset of the same size
        facts["subset_coverage"] = coverage(feats, kept)
        facts["random_subset_coverage"] = coverage(feats, random_subset(len(feats), len(kept), cfg.train.seed))
    train_cfg = cfg.train.model_copy(update={"lr_g": cfg.full_rank_lr_g}) if full_rank else cfg.train
    ship = None
    start = scaled_head_start(base, cfg.start_head_scale) if full_rank and cfg.start_head_scale != 1.0 else base
    if cfg.tone_knots:
        start = with_tone(copy.deepcopy(start), cfg.tone_knots, cfg.tone_window)
    if full_rank:
        from pipeline.data.dataset import concept_condition
        from pipeline.model.nets.generator import pooled_text

        tokens, mask = concept_condition(concept.prompts_source, concept.encoder)
        cond = pooled_text(tokens[:1], None if mask is None else mask[:1])[0]

        def ship(trained: nn.Module):
            return truncated_adapter(base, trained, spec, cond)

    best = BestStep(work, concept, cfg, ship) if cfg.select_every else None
    model, history, seconds = finetune(
        start,
        None if full_rank else spec,
        patch_pairs(pairs.subset(kept), cfg.patch),
        train_cfg,
        work,
        desc=f"finetune_lora {concept.name}",
        evaluate=best,
        eval_every=cfg.select_every,
        eval_from=cfg.select_from,
        loraplus_ratio=cfg.loraplus_ratio,
        tone_lr=cfg.tone_lr if cfg.tone_knots else None,
    )
    if ship is not None:
        model = ship(model)
    if best is not None:
        facts.update(best.restore(model))
    facts["train_as"] = cfg.train_as
    facts["start_head_scale"] = cfg.start_head_scale if full_rank else 1.0
    round_to(model, cfg.store)  # evaluated, exported and shipped as stored
    facts["train_seconds"] = round(seconds, 2)
    facts["trainable_params"] = trainable_parameters(model)
    return model, history, facts


class BestStep:
    """fit's evaluation hook for finetune_lora: val LPIPS of the adapter every `select_every` steps; the best
    step's adapter weights (LoRA factors and trained biases) are kept in the work folder, so a resumed run
    still knows the best step before the kill."""

    def __init__(self, work: Path, concept, cfg: FinetuneConfig, ship=None):
        self.file, self.concept, self.cfg = Path(work) / "best.safetensors", concept, cfg
        self.ship = ship  # trained model -> the adapter that ships from it (train_as "full_rank"), scored and kept
        self.scores: list[dict] = []

    def _adapter(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return {
            n: p.detach().clone()
            for n, p in model.named_parameters()
            if "lora_" in n or n.endswith(".bias") or ".tone." in f".{n}"
        }

    def __call__(self, model: nn.Module, step: int, seconds: float) -> None:
        import json

        from safetensors.torch import save_file

        from pipeline.core.io import atomic_path, atomic_write_json
        from pipeline.model.infer import concept_lpips

        if self.ship is not None:
            model = self.ship(model).eval()
        lp = concept_lpips(model, self.concept, split="val", limit=self.cfg.select_limit, seed=self.cfg.train.seed)
        self.scores.append({"step": step, "train_seconds": round(seconds, 2), "lpips_val": lp})
        record = self.file.with_suffix(".json")
        prev = json.loads(record.read_text()) if record.is_file() and self.file.is_file() else None
        if prev is None or lp < prev["lpips_val"]:
            with atomic_path(self.file) as tmp:
                save_file({k: v.contiguous() for k, v in self._adapter(model).items()}, str(tmp))
            atomic_write_json(record, {"step": step, "lpips_val": lp, "train_seconds": seconds})

    def restore(self, model: nn.Module) -> dict:
        """Load the best step's adapter weights into `model`; returns the facts for the metrics."""
        import json

        from safetensors.torch import load_file

        if not (self.file.is_file() and self.file.with_suffix(".json").is_file()):
            return {}
        best = json.loads(self.file.with_suffix(".json").read_text())
        state = load_file(str(self.file))
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n in state:
                    p.copy_(state[n])
        return {
            "best_step": best["step"],
            "seconds_to_best": round(best["train_seconds"], 2),
            "best_val_lpips": best["lpips_val"],
            "val_curve": self.scores,
        }
