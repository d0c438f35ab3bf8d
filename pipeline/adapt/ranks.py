"""Rank search: per-layer LoRA ranks for the crucial layers, and the paper's comparison rows.

The search is greedy on the spectra of the weight changes dW that analyze_layers' short full
fine-tunes produced on the calibration concepts. A rank-r LoRA on a layer can express at best the
top r singular directions of dW, so the share of dW's spectral energy that rank r keeps,

    E_l(r) = mean over concepts c of  sum_{i<r} s_i(dW_l,c)^2 / sum_l' |dW_l',c|_F^2,

is the gain and lora_parameters(l, r) the cost. Every crucial layer starts at the smallest allowed
rank; each step raises, by one allowed rank, the layer whose next rank adds the most energy per added
parameter and still fits the parameter budget; it stops when the kept energy reaches `energy` or
nothing fits. The result is exactly what peft takes (target_modules, r, lora_alpha, rank_pattern,
alpha_pattern).

The paper's check of the search (`compare_rows`: short fine-tunes on the calibration concepts with the searched
ranks against uniform-low, uniform-high and random ranks, the searched ranks on a random subset and on all the
data, and one rank on every adaptable layer, scored on `val`) is benchmark work, not part of the stage:
`python -m bench.rank_rows` runs it on the pipeline's outputs.

What ships is `allocation`: "uniform_all" (`uniform_rank` on every adaptable layer, no layer choice; the concept
benchmark, bench/concept_bench.py, compares it with the searched allocation at the same parameter count) or
"searched".
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field, field_validator
from torch import nn

from pipeline.adapt.layers import probe_config
from pipeline.adapt.lora import FinetuneConfig, adaptable_layers, finetune, lora_parameters, lora_spec
from pipeline.adapt.subset import choose_subset
from pipeline.core.errors import E2GANError
from pipeline.core.frozen import FrozenConfig
from pipeline.core.io import run_recorded
from pipeline.core.plots import save_fig
from pipeline.data.dataset import ConceptData
from pipeline.model.infer import concept_lpips

log = logging.getLogger(__name__)


class SearchRanksConfig(FrozenConfig):
    """search_ranks: per-layer LoRA ranks on the crucial layers (greedy, spectrum of the full fine-tune's dW)."""

    ranks: list[int] = Field(default_factory=lambda: [1, 2, 4, 8, 16], min_length=1)  # allowed ranks
    budget: float = Field(0.016, gt=0.0, le=1.0)  # trainable params, as a share of the base generator's
    energy: float = Field(0.9, gt=0.0, le=1.0)  # stop once this share of dW's spectral energy is kept
    alpha_scale: float = Field(1.0, gt=0.0)  # lora_alpha = alpha_scale * rank per layer
    rslora: bool = False  # peft's use_rslora: scale alpha / sqrt(r) instead of alpha / r
    bias: Literal["none", "all"] = "all"  # "all": every bias trains with the adapter (the text norms' scale/shift)
    # what ships: "uniform_all" = `uniform_rank` on every adaptable layer (no layer choice); "searched" = the
    # greedy allocation on the crucial layers. Both are written (lora.json ships, searched.json for comparison).
    allocation: Literal["uniform_all", "searched"] = "uniform_all"
    uniform_rank: int = Field(4, ge=1)

    @field_validator("ranks")
    @classmethod
    def _positive_sorted(cls, v: list[int]) -> list[int]:
        if any(r < 1 for r in v):
            raise ValueError("ranks must be positive integers, e.g. [1, 2, 4, 8]")
        return sorted(set(v))


def spectra(deltas: dict[str, torch.Tensor], layers: list[str], concepts: list[str]) -> dict[str, np.ndarray]:
    """Per layer, the concept-averaged normalised cumulative energy E_l(r) for r = 0..rank_max."""
    out: dict[str, np.ndarray] = {}
    for c in concepts:
        missing = [n for n in layers if f"{c}/{n}" not in deltas]
        if missing:
            raise E2GANError(f"no weight change for {missing[:3]} of {c!r} in the analysis; rerun analyze_layers")
        sv = {n: torch.linalg.svdvals(deltas[f"{c}/{n}"].flatten(1).double()).numpy() ** 2 for n in layers}
        total = sum(float(s.sum()) for s in sv.values()) or 1.0
        for n, s in sv.items():
            cum = np.concatenate([[0.0], np.cumsum(s) / total])
            out[n] = out.get(n, 0) + cum / len(concepts)
    return out


def greedy_ranks(
    modules: dict[str, nn.Module], energy: dict[str, np.ndarray], cfg: SearchRanksConfig, budget: int
) -> tuple[dict[str, int], list[dict]]:
    """The greedy search described above; returns (ranks, the trace of accepted steps)."""
    allowed = {n: [r for r in cfg.ranks if r <= len(energy[n]) - 1] or [1] for n in modules}
    ranks = {n: allowed[n][0] for n in modules}
    params = sum(lora_parameters(modules[n], r) for n, r in ranks.items())
    if params > budget:
        raise E2GANError(
            f"search_ranks: the smallest ranks already need {params} parameters, over the budget of "
            f"{budget}; raise search_ranks.budget or lower analyze_layers.top_k"
        )
    kept = lambda: sum(float(energy[n][r]) for n, r in ranks.items())  # noqa: E731
    trace = [{"step": 0, "layer": None, "rank": None, "params": params, "energy": kept()}]
    while kept() < cfg.energy:
        best, best_ratio = None, -1.0
        for n, r in ranks.items():
            nxt = [a for a in allowed[n] if a > r]
            if not nxt:
                continue
            cost = lora_parameters(modules[n], nxt[0]) - lora_parameters(modules[n], r)
            if params + cost > budget:
                continue
            ratio = (float(energy[n][nxt[0]]) - float(energy[n][r])) / cost
            if ratio > best_ratio:
                best, best_ratio = (n, nxt[0], cost), ratio
        if best is None:
            break
        n, r, cost = best
        ranks[n], params = r, params + cost
        trace.append({"step": len(trace), "layer": n, "rank": r, "params": params, "energy": kept()})
    return ranks, trace


def random_ranks(modules: dict[str, nn.Module], target_params: int, choices: list[int], seed: int) -> dict[str, int]:
    """Random ranks at about the target's parameter count (the paper's random-rank ablation).

    Every layer starts at the smallest allowed rank; then a randomly drawn layer is raised to its next
    allowed rank while the total stays within the target (one last raise may overshoot it when that
    lands nearer), until no layer can be raised. Unlike
    independent draws per layer, this stays near the target however many layers there are."""
    rng = np.random.default_rng(seed)
    choices = sorted(choices)
    ranks = {n: choices[0] for n in modules}
    total = count(modules, ranks)
    open_layers = sorted(modules)
    while open_layers:
        n = open_layers[int(rng.integers(len(open_layers)))]
        i = choices.index(ranks[n])
        extra = (
            lora_parameters(modules[n], choices[i + 1]) - lora_parameters(modules[n], ranks[n])
            if i + 1 < len(choices)
            else None
        )
        if extra is None:
            open_layers.remove(n)
            continue
        if total + extra > target_params:
            if total + extra - target_params < target_params - total:  # overshooting lands nearer: last raise
                ranks[n] = choices[i + 1]
                break
            open_layers.remove(n)
            continue
        ranks[n], total = choices[i + 1], total + extra
    return ranks


def count(modules: dict[str, nn.Module], ranks: dict[str, int]) -> int:
    return sum(lora_parameters(modules[n], r) for n, r in ranks.items())


class RowsConfig(FrozenConfig):
    """The paper's comparison rows (`compare_rows`, run by bench.rank_rows): short LoRA fine-tunes per row and
    calibration concept, scored on val."""

    uniform_low: int = Field(1, ge=1)  # uniform ranks on the crucial layers ("1x", "4x" in the paper)
    uniform_high: int = Field(4, ge=1)
    steps: int = Field(30, ge=1)
    batch: int = Field(4, ge=1)
    eval_limit: int = Field(32, ge=1)  # val crops per calibration concept, spread over all val photos
    seed: int = 0


@dataclass(frozen=True)
class ComparisonRow:
    """One of the paper's comparison rows: a rank allocation on the crucial layers and a data subset."""

    key: str  # stable id (benchmarks select rows by it)
    name: str  # the label in reports
    ranks: dict[str, int]
    subset: str  # kmeans | random | all


def comparison_rows(
    modules: dict[str, nn.Module],
    searched: dict[str, int],
    cfg: RowsConfig,
    ranks: list[int],
    subset: str,
    every: dict[str, int] | None = None,
) -> list[ComparisonRow]:
    """The searched ranks against uniform-low, uniform-high and random ranks (of the allowed `ranks`) of the same
    size, and the searched ranks on a random subset and on all the data (and on the k-means subset when that is
    not the default); `every`: one rank on every adaptable layer (no layer analysis) as a row too."""
    crucial = list(modules)
    rows = [
        ComparisonRow("e2gan", "searched", searched, subset),
        *([ComparisonRow("uniform_all", f"every layer {max(every.values())}x", every, subset)] if every else []),
        ComparisonRow("uniform_low", f"uniform {cfg.uniform_low}x", {n: cfg.uniform_low for n in crucial}, subset),
        ComparisonRow("uniform_high", f"uniform {cfg.uniform_high}x", {n: cfg.uniform_high for n in crucial}, subset),
        ComparisonRow(
            "random_ranks", "random ranks", random_ranks(modules, count(modules, searched), ranks, cfg.seed), subset
        ),
        ComparisonRow("e2gan_random", "searched, random subset", searched, "random"),
        ComparisonRow("e2gan_all", "searched, all data", searched, "all"),
    ]
    if subset != "kmeans":
        rows.append(ComparisonRow("e2gan_kmeans", "searched, kmeans subset", searched, "kmeans"))
    return rows


def spec_for(ranks: dict[str, int], cfg: SearchRanksConfig) -> dict:
    """The peft spec of per-layer ranks with search_ranks' scaling and bias settings (every row and the result)."""
    return lora_spec(ranks, cfg.alpha_scale, rslora=cfg.rslora, bias=cfg.bias)


def _val_lpips(model: nn.Module, concept: ConceptData, rows: RowsConfig) -> float:
    """LPIPS on at most `eval_limit` val crops spread over all val photos."""
    return concept_lpips(model, concept, split="val", limit=rows.eval_limit, seed=rows.seed)


def search_ranks(
    base: nn.Module, crucial: list[str], deltas: dict[str, torch.Tensor], calibration: list[str], cfg: SearchRanksConfig
) -> tuple[dict, dict]:
    """Returns ({"shipped": the LoRA spec for peft (search_ranks.allocation), "searched": the greedy allocation's
    spec}, the report with the search trace). Spectra only: no training, seconds."""
    mods = dict(base.named_modules())
    modules = {n: mods[n] for n in crucial}
    n_base = sum(p.numel() for p in base.parameters())
    budget = int(cfg.budget * n_base)
    energy = spectra(deltas, crucial, calibration)
    ranks, trace = greedy_ranks(modules, energy, cfg, budget)
    every = {n: cfg.uniform_rank for n in adaptable_layers(base)}
    if cfg.allocation == "uniform_all" and count(mods, every) > budget:
        raise E2GANError(
            f"search_ranks: rank {cfg.uniform_rank} on every layer needs {count(mods, every)} parameters, over the "
            f"budget of {budget}; lower search_ranks.uniform_rank or raise search_ranks.budget"
        )
    shipped = every if cfg.allocation == "uniform_all" else ranks
    report = {
        "budget_params": budget,
        "base_params": n_base,
        "allocation": cfg.allocation,
        "shipped_ranks": shipped,
        "shipped_params": count(mods, shipped),
        "ranks": ranks,
        "params": count(modules, ranks),
        "energy_kept": trace[-1]["energy"],
        "trace": trace,
        "energy_at_rank": {n: {int(a): float(energy[n][a]) for a in cfg.ranks if a < len(energy[n])} for n in crucial},
        "settings": cfg.model_dump(),
        "calibration": calibration,
    }
    return {"shipped": spec_for(shipped, cfg), "searched": spec_for(ranks, cfg)}, report


def compare_rows(
    base: nn.Module,
    crucial: list[str],
    searched: dict[str, int],
    calib: dict[str, ConceptData],
    cfg: SearchRanksConfig,
    rows_cfg: RowsConfig,
    fcfg: FinetuneConfig,
    work: Path,
) -> dict:
    """The paper's comparison rows (`comparison_rows`), each a short LoRA fine-tune per calibration concept on
    `searched` (search_ranks' greedy ranks) and its alternatives, scored on val; resumable from `work`. Returns
    {"split": "val", "base_lpips": {concept: LPIPS}, "rows": [...]}."""
    from pipeline.model.train import lpips_loss

    mods = dict(base.named_modules())
    modules = {n: mods[n] for n in crucial}
    n_base = sum(p.numel() for p in base.parameters())
    every = {n: cfg.uniform_rank for n in adaptable_layers(base)}
    rows_def = comparison_rows(modules, searched, rows_cfg, cfg.ranks, fcfg.subset, every)
    base_lpips = {c: _val_lpips(base, d, rows_cfg) for c, d in calib.items()}
    pcfg = probe_config(fcfg, rows_cfg.steps, rows_cfg.batch, rows_cfg.seed)
    perceptual = lpips_loss()
    subsets = {
        (c, strategy): choose_subset(
            d.pairs.inputs, strategy, fcfg.subset_fraction, fcfg.subset_features, fcfg.train.seed
        )
        for c, d in calib.items()
        for strategy in dict.fromkeys(r.subset for r in rows_def)
    }
    by_name = {r.name: r for r in rows_def}

    def compare(name: str, c: str) -> dict:
        row = by_name[name]
        data = calib[c].pairs.subset(subsets[(c, row.subset)])
        model, _, seconds = finetune(
            base,
            spec_for(row.ranks, cfg),
            data,
            pcfg,
            work / "runs" / name.replace(" ", "_").replace(",", "") / c,
            f"{name}/{c}",
            perceptual,
            loraplus_ratio=fcfg.loraplus_ratio,
        )
        return {"lpips": _val_lpips(model, calib[c], rows_cfg), "seconds": round(seconds, 2)}

    done = run_recorded([(r.name, c) for r in rows_def for c in calib], work / "rows.json", "rank rows", "run", compare)
    rows = []
    for row in rows_def:
        lp = {c: done[f"{row.name}/{c}"]["lpips"] for c in calib}
        rows.append(
            {
                "row": row.name,
                "key": row.key,
                "params": count(mods, row.ranks),
                "params_share": count(mods, row.ranks) / n_base,
                "subset": row.subset,
                "pairs": {c: len(subsets[(c, row.subset)]) for c in calib},
                "lpips": float(np.mean(list(lp.values()))),
                "lpips_per_concept": lp,
                "gain_vs_base": float(np.mean([base_lpips[c] - lp[c] for c in calib])),
                "seconds": float(np.mean([done[f"{row.name}/{c}"]["seconds"] for c in calib])),
                "ranks": row.ranks,
            }
        )
    return {"split": "val", "base_lpips": base_lpips, "rows": rows, "settings": rows_cfg.model_dump()}


def plot_ranks(report: dict, out_png: Path, rows: list[dict] | None = None) -> None:
    """Left: the searched rank per layer. Right (with `rows`, compare_rows' result): val LPIPS vs trainable
    params of each comparison row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["ranks"])
    n = 2 if rows else 1
    fig, axes = plt.subplots(1, n, figsize=(5.5 * n, max(4.0, 1.2 + 0.22 * len(names))), dpi=110, squeeze=False)
    axes = axes[0]  # a bar per layer
    axes[0].barh(names, [report["ranks"][n] for n in names], color="C0")
    axes[0].invert_yaxis()
    axes[0].tick_params(axis="y", labelsize=8)
    axes[0].set_xlabel("searched LoRA rank")
    for i, row in enumerate(rows or []):
        axes[1].scatter(row["params"] / 1000, row["lpips"], s=60, color=f"C{i}", label=row["row"])
    if rows:
        axes[1].set_xlabel("trainable params (thousands)")
        axes[1].set_ylabel("val LPIPS vs teacher (lower is better)")
        axes[1].legend(fontsize=7)
    shipped = f"ships {report['allocation']} ({report['shipped_params']} params)" if "allocation" in report else ""
    fig.suptitle(
        f"search_ranks: searched {report['params']} params (budget {report['budget_params']}), "
        f"{report['energy_kept']:.0%} of dW energy kept; {shipped}"
    )
    fig.tight_layout()
    save_fig(fig, out_png)
