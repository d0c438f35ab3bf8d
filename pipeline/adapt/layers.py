"""Layer importance: which layer groups of the base generator are worth adapting for a new concept.

Two scorers, both on the calibration concepts (held back from the base, so they act like new targets), both
training as finetune_lora does (on its `patch` windows of the crops; scored on whole crops):

- probe: LoRA (rank `probe_rank`) on one group alone, fine-tuned for `probe_steps` on each calibration
  concept; the score is the LPIPS gain vs the teacher over the untouched base on the concept's `val`
  photos (and the gain per thousand LoRA parameters, since groups differ in size).
- delta: every weight fine-tuned for `full_steps`; the score is the relative weight change
  |dW|_F / |W|_F of the group. The dW matrices are kept: search_ranks reads their spectra.

The crucial groups are the `top_k` by the chosen scorer whose probe gain exceeds `min_gain`. Every score
here is a choice, so it reads `val` only (at most `eval_limit` crops spread over all val photos, the same
crops for every probe); `test` is left for the reported figures.
Each probe's result is recorded as it finishes, so a killed run resumes at the next probe.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from pipeline.adapt.lora import FinetuneConfig, adaptable_layers, finetune, lora_parameters, lora_spec
from pipeline.core.errors import E2GANError
from pipeline.core.frozen import FrozenConfig
from pipeline.core.io import run_recorded
from pipeline.core.plots import save_fig
from pipeline.data.dataset import ConceptData, patch_pairs
from pipeline.model.infer import concept_lpips
from pipeline.model.train import TrainConfig

log = logging.getLogger(__name__)


class AnalyzeLayersConfig(FrozenConfig):
    """analyze_layers: which layer groups of the base are worth adapting (scored on calibration concepts)."""

    probe_steps: int = Field(20, ge=1)  # scorer 'probe': LoRA on one group alone for this many steps
    probe_batch: int = Field(4, ge=1)
    probe_rank: int = Field(4, ge=1)
    full_steps: int = Field(40, ge=1)  # scorer 'delta': a short full fine-tune, then |dW|/|W| per layer
    eval_limit: int = Field(32, ge=1)  # val crops per calibration concept for the scores, spread over all val photos
    select_by: Literal["probe", "delta", "mean_rank"] = "probe"
    top_k: int = Field(5, ge=1)  # this many groups become the crucial layers ...
    min_gain: float = 0.0  # ... of those with a probe LPIPS gain above this
    seed: int = 0


# group -> layer-name prefixes, in the generator's order (see pipeline/model/nets/generator.py)
GROUPS: dict[str, tuple[str, ...]] = {
    "down": ("down.",),
    "res_enc": ("res.0.", "res.1."),
    "ds": ("ds.",),
    "tb_self": ("tb.attn_self.",),
    "tb_cross": ("tb.attn_cross.",),
    "tb_mlp": ("tb.mlp.",),
    "us": ("us.",),
    "res_dec": ("res.2.",),
    "up": ("up.",),
    "out": ("out",),
}
PAPER_CHOICE = ["down", "ds", "tb_self", "tb_cross", "tb_mlp", "us", "up"]  # sampling layers + transformer block


def layer_groups(model: nn.Module) -> dict[str, list[str]]:
    """Every adaptable layer of the generator in exactly one named group."""
    groups: dict[str, list[str]] = {g: [] for g in GROUPS}
    for name in adaptable_layers(model):
        g = next((g for g, pre in GROUPS.items() if any(name == p or name.startswith(p) for p in pre)), None)
        if g is None:
            raise E2GANError(f"layer {name!r} belongs to no layer group; add it to pipeline.adapt.layers.GROUPS")
        groups[g].append(name)
    return {g: v for g, v in groups.items() if v}


def probe_config(fcfg: FinetuneConfig, steps: int, batch: int, seed: int) -> TrainConfig:
    """The fine-tune loop's settings for a short analysis run: no EMA, one checkpoint at the end."""
    t = fcfg.train
    return t.model_copy(
        update={
            "steps": steps,
            "batch_size": batch,
            "ema": 0.0,
            "seed": seed,
            "ckpt_every": steps,
            "log_every": max(1, min(t.log_every, steps)),
        }
    )


def relative_change(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], layers: list[str]) -> float:
    num = sum(float((after[n] - before[n]).pow(2).sum()) for n in layers)
    den = sum(float(before[n].pow(2).sum()) for n in layers)
    return (num / den) ** 0.5 if den > 0 else 0.0


def _weights(model: nn.Module, layers: list[str]) -> dict[str, torch.Tensor]:
    mods = dict(model.named_modules())
    return {n: mods[n].weight.detach().clone() for n in layers}


def spearman(a: list[float], b: list[float]) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1]) if len(a) > 1 else 1.0


def _val_lpips(model: nn.Module, concept: ConceptData, cfg: AnalyzeLayersConfig) -> float:
    """The score every choice here is made by: LPIPS on at most `eval_limit` val crops spread over all val photos."""
    return concept_lpips(model, concept, split="val", limit=cfg.eval_limit, seed=cfg.seed)


def _probes(
    base: nn.Module,
    groups: dict[str, list[str]],
    data: dict[str, ConceptData],
    cfg: AnalyzeLayersConfig,
    fcfg: FinetuneConfig,
    work: Path,
    perceptual,
) -> dict:
    """Scorer 'probe': LoRA on one group alone per calibration concept; {"<group>/<concept>": {lpips, seconds}}."""
    pcfg = probe_config(fcfg, cfg.probe_steps, cfg.probe_batch, cfg.seed)

    def probe(g: str, c: str) -> dict:
        spec = lora_spec({n: cfg.probe_rank for n in groups[g]})
        model, _, seconds = finetune(
            base,
            spec,
            patch_pairs(data[c].pairs, fcfg.patch),
            pcfg,
            work / "probe" / g / c,
            f"probe {g}/{c}",
            perceptual,
            loraplus_ratio=fcfg.loraplus_ratio,
        )
        return {"lpips": _val_lpips(model, data[c], cfg), "seconds": round(seconds, 2)}

    return run_recorded(
        [(g, c) for g in groups for c in data], work / "probes.json", "analyze_layers: probes", "probe", probe
    )


def _full_finetunes(
    base: nn.Module,
    groups: dict[str, list[str]],
    data: dict[str, ConceptData],
    cfg: AnalyzeLayersConfig,
    fcfg: FinetuneConfig,
    work: Path,
    perceptual,
) -> tuple[dict, dict, dict]:
    """Scorer 'delta': a short full fine-tune per concept; returns (dW per "<concept>/<layer>", the relative
    change per group and concept, the fine-tuned model's val LPIPS per concept)."""
    layers = [n for g in groups.values() for n in g]
    fullcfg = probe_config(fcfg, cfg.full_steps, cfg.probe_batch, cfg.seed)
    before = _weights(base, layers)
    deltas: dict[str, torch.Tensor] = {}
    rel: dict[str, dict[str, float]] = {g: {} for g in groups}
    lpips: dict[str, float] = {}
    for c in data:
        pairs = patch_pairs(data[c].pairs, fcfg.patch)
        model, _, _ = finetune(base, None, pairs, fullcfg, work / "full" / c, f"full fine-tune {c}", perceptual)
        after = _weights(model, layers)
        for n in layers:
            deltas[f"{c}/{n}"] = (after[n] - before[n]).contiguous()
        for g, names in groups.items():
            rel[g][c] = relative_change(before, after, names)
        lpips[c] = _val_lpips(model, data[c], cfg)
    return deltas, rel, lpips


def _group_rows(
    base: nn.Module,
    groups: dict[str, list[str]],
    concepts: list[str],
    base_lpips: dict,
    done: dict,
    rel: dict,
    cfg: AnalyzeLayersConfig,
) -> list[dict]:
    """One row per group with both scorers' values and ranks."""
    mods = dict(base.named_modules())
    rows = []
    for g, names in groups.items():
        gains = [base_lpips[c] - done[f"{g}/{c}"]["lpips"] for c in concepts]
        n_params = sum(lora_parameters(mods[n], cfg.probe_rank) for n in names)
        rows.append(
            {
                "group": g,
                "layers": names,
                "weights": sum(mods[n].weight.numel() for n in names),
                "probe_lora_params": n_params,
                "probe_gain": float(np.mean(gains)),
                "probe_gain_per_concept": dict(zip(concepts, map(float, gains))),
                "probe_gain_per_1k_params": float(np.mean(gains)) / (n_params / 1000),
                "delta_rel_change": float(np.mean(list(rel[g].values()))),
                "delta_rel_change_per_concept": rel[g],
                "in_paper_choice": g in PAPER_CHOICE,
            }
        )
    probe_rank = np.argsort(np.argsort([-r["probe_gain"] for r in rows]))
    delta_rank = np.argsort(np.argsort([-r["delta_rel_change"] for r in rows]))
    for r, pr, dr in zip(rows, probe_rank, delta_rank):
        r["probe_rank"], r["delta_rank"], r["mean_rank"] = int(pr) + 1, int(dr) + 1, (int(pr) + int(dr)) / 2 + 1
    return rows


def analyze_layers(
    base: nn.Module, calib: dict[str, ConceptData], cfg: AnalyzeLayersConfig, fcfg: FinetuneConfig, work: Path
) -> tuple[dict, dict[str, torch.Tensor]]:
    """Score every layer group; returns (the table as JSON-able dict, {"<concept>/<layer>": dW})."""
    from pipeline.model.train import lpips_loss

    if not calib:
        raise E2GANError("analyze_layers needs calibration concepts; set select_base.n_calibration >= 1")
    # 1. both scorers on every group and calibration concept
    groups = layer_groups(base)
    perceptual = lpips_loss()
    base_lpips = {c: _val_lpips(base, calib[c], cfg) for c in calib}
    done = _probes(base, groups, calib, cfg, fcfg, work, perceptual)
    deltas, rel, full_lpips = _full_finetunes(base, groups, calib, cfg, fcfg, work, perceptual)
    full_gain = {c: base_lpips[c] - full_lpips[c] for c in calib}
    # 2. rank the groups; the crucial ones are the best top_k with enough probe gain
    rows = _group_rows(base, groups, list(calib), base_lpips, done, rel, cfg)
    order = sorted(rows, key=lambda r: (r[f"{cfg.select_by}_rank"], r["probe_rank"]))
    crucial = [r["group"] for r in order if r["probe_gain"] > cfg.min_gain][: cfg.top_k]
    if not crucial:
        raise E2GANError(
            f"analyze_layers: no layer group gained more than min_gain={cfg.min_gain} LPIPS in the "
            "probes; lower analyze_layers.min_gain or raise probe_steps"
        )
    table = {
        "calibration": list(calib),
        "split": "val",
        "base_lpips": base_lpips,
        "full_finetune_gain": full_gain,
        "select_by": cfg.select_by,
        "top_k": cfg.top_k,
        "crucial_groups": crucial,
        "crucial_layers": [n for g in crucial for n in groups[g]],
        "paper_choice": PAPER_CHOICE,
        "overlap_with_paper": sorted(set(crucial) & set(PAPER_CHOICE)),
        "spearman_probe_vs_delta": spearman([r["probe_gain"] for r in rows], [r["delta_rel_change"] for r in rows]),
        "settings": cfg.model_dump(),
        "groups": order,
    }
    return table, deltas


def plot_importance(table: dict, out_png: Path) -> None:
    """Two bar charts side by side: probe LPIPS gain and relative weight change per group; crucial in colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(table["groups"], key=lambda r: r["probe_rank"])
    names = [r["group"] for r in rows]
    colours = ["C3" if n in table["crucial_groups"] else "0.6" for n in names]
    fig, axes = plt.subplots(1, 2, figsize=(10, max(4.0, 1.2 + 0.22 * len(names))), dpi=110, sharey=True)
    axes[0].barh(names, [r["probe_gain"] for r in rows], color=colours)
    axes[0].set_xlabel("val LPIPS gain, LoRA on this group alone")
    axes[1].barh(names, [r["delta_rel_change"] for r in rows], color=colours)
    axes[1].set_xlabel("|dW| / |W| after a short full fine-tune")
    axes[0].invert_yaxis()
    fig.suptitle(f"analyze_layers on {', '.join(table['calibration'])}: red = crucial ({table['select_by']})")
    fig.tight_layout()
    save_fig(fig, out_png)
