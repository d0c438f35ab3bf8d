"""Layer importance: which layer groups of the base generator are worth adapting for a new concept.

Two scorers, both on the calibration concepts (held back from the base, so they act like new targets):

- probe: LoRA (rank `probe_rank`) on one group alone, fine-tuned for `probe_steps` on each calibration
  concept; the score is the held-out LPIPS gain vs the teacher over the untouched base (and the gain
  per thousand LoRA parameters, since groups differ in size).
- delta: every weight fine-tuned for `full_steps`; the score is the relative weight change
  |dW|_F / |W|_F of the group. The dW matrices are kept: search_ranks reads their spectra.

The crucial groups are the `top_k` by the chosen scorer whose probe gain exceeds `min_gain`.
Each probe's result is recorded as it finishes, so a killed run resumes at the next probe.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline.config import AnalyzeLayersConfig, FinetuneConfig
from pipeline.errors import E2GANError
from pipeline.io import atomic_write_json
from pipeline.lora import adaptable_layers, finetune, lora_parameters, lora_spec

log = logging.getLogger(__name__)

# group -> layer-name prefixes, in the generator's order (DESIGN.md: Generator)
GROUPS: dict[str, tuple[str, ...]] = {
    "down": ("down.",), "res_enc": ("res.0.", "res.1."), "ds": ("ds.",), "tb_self": ("tb.attn_self.",),
    "tb_cross": ("tb.attn_cross.",), "tb_mlp": ("tb.mlp.",), "us": ("us.",), "res_dec": ("res.2.",),
    "up": ("up.",), "out": ("out",),
}
PAPER_CHOICE = ["down", "ds", "tb_self", "tb_cross", "tb_mlp", "us", "up"]  # sampling layers + transformer block


@dataclass
class ConceptData:
    """A concept's training pairs in memory plus where its held-out pairs and prompts are."""

    name: str
    folder: Path  # pairs folder (train + heldout)
    encoder: str
    pairs: object  # PairData
    prompts: Path | None = None  # prompts.json when not inside `folder`

    def heldout_lpips(self, model: nn.Module, limit: int) -> float:
        from pipeline.infer import heldout_lpips

        return heldout_lpips(model, self.folder, self.encoder, limit, self.prompts)


def load_concepts(folders: dict[str, Path], encoder: str, prompts: dict[str, Path] | None = None) -> dict[str, ConceptData]:
    from pipeline.base import load_pair_data

    return {c: ConceptData(c, Path(f), encoder, load_pair_data({c: Path(f)}, encoder, prompts_files=prompts),
                           (prompts or {}).get(c)) for c, f in folders.items()}


def layer_groups(model: nn.Module) -> dict[str, list[str]]:
    """Every adaptable layer of the generator in exactly one named group."""
    groups: dict[str, list[str]] = {g: [] for g in GROUPS}
    for name in adaptable_layers(model):
        g = next((g for g, pre in GROUPS.items() if any(name == p or name.startswith(p) for p in pre)), None)
        if g is None:
            raise E2GANError(f"layer {name!r} belongs to no layer group; add it to pipeline.importance.GROUPS")
        groups[g].append(name)
    return {g: v for g, v in groups.items() if v}


def probe_config(fcfg: FinetuneConfig, steps: int, batch: int, seed: int) -> FinetuneConfig:
    """The fine-tune settings for a short analysis run: no EMA, one checkpoint at the end."""
    return fcfg.model_copy(update={"steps": steps, "batch_size": batch, "ema": 0.0, "seed": seed,
                                   "ckpt_every": steps, "log_every": max(1, min(fcfg.log_every, steps))})


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


def run_recorded(jobs: list[tuple[str, str]], done_file: Path, desc: str, unit: str, run) -> dict:
    """`run(a, c) -> dict` for every job (a, c) not yet in `done_file`, each result recorded there as soon as
    it finishes, so a killed run resumes at the next job. Returns {"a/c": result} for all jobs."""
    from pipeline.progress import bar

    done: dict = json.loads(done_file.read_text()) if done_file.is_file() else {}
    keys = [f"{a}/{c}" for a, c in jobs]
    with bar(desc, len(jobs), unit=unit, completed=sum(k in done for k in keys)) as b:
        for (a, c), key in zip(jobs, keys):
            if key in done:
                continue
            done[key] = run(a, c)
            done_file.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(done_file, done)
            b.advance(1)
    return done


def analyze_layers(base: nn.Module, calib: dict[str, ConceptData], cfg: AnalyzeLayersConfig, fcfg: FinetuneConfig,
                   work: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """Score every layer group; returns (the table as JSON-able dict, {"<concept>/<layer>": dW})."""
    from pipeline.train import lpips_loss

    if not calib:
        raise E2GANError("analyze_layers needs calibration concepts; set select_base.n_calibration >= 1")
    groups = layer_groups(base)
    mods = dict(base.named_modules())
    layers = [n for g in groups.values() for n in g]
    data = calib
    perceptual = lpips_loss()
    base_lpips = {c: data[c].heldout_lpips(base, cfg.eval_limit) for c in data}
    pcfg = probe_config(fcfg, cfg.probe_steps, cfg.probe_batch, cfg.seed)

    def probe(g: str, c: str) -> dict:
        spec = lora_spec({n: cfg.probe_rank for n in groups[g]})
        model, _, seconds = finetune(base, spec, data[c].pairs, pcfg, work / "probe" / g / c, f"probe {g}/{c}",
                                     perceptual)
        return {"lpips": data[c].heldout_lpips(model, cfg.eval_limit), "seconds": round(seconds, 2)}

    done = run_recorded([(g, c) for g in groups for c in data], work / "probes.json", "analyze_layers: probes",
                        "probe", probe)

    # scorer 'delta': short full fine-tunes
    fullcfg = probe_config(fcfg, cfg.full_steps, cfg.probe_batch, cfg.seed)
    before = _weights(base, layers)
    deltas: dict[str, torch.Tensor] = {}
    rel: dict[str, dict[str, float]] = {g: {} for g in groups}
    full_gain = {}
    for c in data:
        model, _, _ = finetune(base, None, data[c].pairs, fullcfg, work / "full" / c, f"full fine-tune {c}", perceptual)
        after = _weights(model, layers)
        for n in layers:
            deltas[f"{c}/{n}"] = (after[n] - before[n]).contiguous()
        for g, names in groups.items():
            rel[g][c] = relative_change(before, after, names)
        full_gain[c] = base_lpips[c] - data[c].heldout_lpips(model, cfg.eval_limit)

    rows = []
    for g, names in groups.items():
        gains = [base_lpips[c] - done[f"{g}/{c}"]["lpips"] for c in data]
        n_params = sum(lora_parameters(mods[n], cfg.probe_rank) for n in names)
        rows.append({"group": g, "layers": names, "weights": sum(mods[n].weight.numel() for n in names),
                     "probe_lora_params": n_params, "probe_gain": float(np.mean(gains)),
                     "probe_gain_per_concept": dict(zip(data, map(float, gains))),
                     "probe_gain_per_1k_params": float(np.mean(gains)) / (n_params / 1000),
                     "delta_rel_change": float(np.mean(list(rel[g].values()))),
                     "delta_rel_change_per_concept": rel[g],
                     "in_paper_choice": g in PAPER_CHOICE})
    probe_rank = np.argsort(np.argsort([-r["probe_gain"] for r in rows]))
    delta_rank = np.argsort(np.argsort([-r["delta_rel_change"] for r in rows]))
    for r, pr, dr in zip(rows, probe_rank, delta_rank):
        r["probe_rank"], r["delta_rank"], r["mean_rank"] = int(pr) + 1, int(dr) + 1, (int(pr) + int(dr)) / 2 + 1
    order = sorted(rows, key=lambda r: (r[f"{cfg.select_by}_rank"], r["probe_rank"]))
    crucial = [r["group"] for r in order if r["probe_gain"] > cfg.min_gain][: cfg.top_k]
    if not crucial:
        raise E2GANError(f"analyze_layers: no layer group gained more than min_gain={cfg.min_gain} LPIPS in the "
                         "probes; lower analyze_layers.min_gain or raise probe_steps")
    table = {"calibration": list(data), "base_lpips": base_lpips, "full_finetune_gain": full_gain,
             "select_by": cfg.select_by, "top_k": cfg.top_k, "crucial_groups": crucial,
             "crucial_layers": [n for g in crucial for n in groups[g]],
             "paper_choice": PAPER_CHOICE, "overlap_with_paper": sorted(set(crucial) & set(PAPER_CHOICE)),
             "spearman_probe_vs_delta": spearman([r["probe_gain"] for r in rows], [r["delta_rel_change"] for r in rows]),
             "settings": cfg.model_dump(), "groups": order}
    return table, deltas


def plot_importance(table: dict, out_png: Path) -> None:
    """Two bar charts side by side: probe LPIPS gain and relative weight change per group; crucial in colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipeline.base import _save_fig

    rows = sorted(table["groups"], key=lambda r: r["probe_rank"])
    names = [r["group"] for r in rows]
    colours = ["C3" if n in table["crucial_groups"] else "0.6" for n in names]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=110, sharey=True)
    axes[0].barh(names, [r["probe_gain"] for r in rows], color=colours)
    axes[0].set_xlabel("held-out LPIPS gain, LoRA on this group alone")
    axes[1].barh(names, [r["delta_rel_change"] for r in rows], color=colours)
    axes[1].set_xlabel("|dW| / |W| after a short full fine-tune")
    axes[0].invert_yaxis()
    fig.suptitle(f"analyze_layers on {', '.join(table['calibration'])}: red = crucial ({table['select_by']})")
    fig.tight_layout()
    _save_fig(fig, out_png)
