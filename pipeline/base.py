"""The base model: choose representative concepts, make their pairs, train one text-conditioned generator."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from pipeline.config import ConceptConfig, ExpandPromptsConfig, GeneratePairsConfig, SelectBaseConfig, TrainBaseConfig
from pipeline.errors import E2GANError
from pipeline.io import atomic_dir, atomic_write_bytes, atomic_write_json
from pipeline.nets.generator import E2GANGenerator, GeneratorConfig
from pipeline.nets.text import text_encoder
from pipeline.pairs import generate_pairs, load_pair, read_pairs
from pipeline.prompts import expand_concept
from pipeline.teachers import build_teacher
from pipeline.teachers.filters import FILTER_PROMPTS
from pipeline.train import Models, PairData, build_models, fit

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- select_base


def select_base(pool: list[str], cfg: SelectBaseConfig, encoder: str) -> dict:
    """k-means over the pool's prompt embeddings: the prompt nearest each centroid is a base concept.

    Calibration concepts (for layer analysis and rank search) are pool members *not* in the base,
    the nearest ones to the centroids of the largest clusters, so they resemble new target concepts.
    """
    from sklearn.cluster import KMeans

    if cfg.k + cfg.n_calibration > len(pool):
        raise E2GANError(f"select_base: k={cfg.k} + n_calibration={cfg.n_calibration} exceeds the pool of {len(pool)} "
                         "concepts; lower them or widen select_base.pool")
    prompts = [FILTER_PROMPTS[op] for op in pool]
    emb = text_encoder(encoder).encode(prompts).pooled.numpy().astype(np.float64)
    km = KMeans(n_clusters=cfg.k, n_init=10, random_state=cfg.seed).fit(emb)
    dist = np.linalg.norm(emb[:, None, :] - km.cluster_centers_[None], axis=-1)  # (P, k)
    if cfg.strategy == "kmeans":
        base = [pool[int(np.argmin(dist[:, j]))] for j in range(cfg.k)]
    else:
        rng = np.random.default_rng(cfg.seed)
        base = [pool[i] for i in rng.choice(len(pool), cfg.k, replace=False)]
    rest = [i for i, op in enumerate(pool) if op not in base]
    sizes = np.bincount(km.labels_, minlength=cfg.k)
    calibration: list[str] = []
    for j in np.argsort(-sizes):  # largest clusters first
        members = sorted((i for i in rest if km.labels_[i] == j and pool[i] not in calibration), key=lambda i: dist[i, j])
        if members and len(calibration) < cfg.n_calibration:
            calibration.append(pool[members[0]])
    for i in sorted(rest, key=lambda i: dist[i].min()):  # top up if clusters ran out
        if len(calibration) < cfg.n_calibration and pool[i] not in calibration:
            calibration.append(pool[i])
    return {"strategy": cfg.strategy, "k": cfg.k, "encoder": encoder, "base": base, "calibration": calibration,
            "pool": pool, "clusters": {op: int(c) for op, c in zip(pool, km.labels_)},
            "cluster_sizes": sizes.tolist(), "inertia": float(km.inertia_),
            "prompts": {op: FILTER_PROMPTS[op] for op in pool}, "embedding_2d": _pca2(emb, pool)}


def _pca2(emb: np.ndarray, names: list[str]) -> dict[str, list[float]]:
    from sklearn.decomposition import PCA

    xy = PCA(n_components=2, random_state=0).fit_transform(emb)
    return {n: [round(float(a), 4), round(float(b), 4)] for n, (a, b) in zip(names, xy)}


def plot_selection(sel: dict, out_png: Path) -> None:
    """Scatter of the pool in PCA space, coloured by cluster; base and calibration concepts marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5), dpi=110)
    for name, (x, y) in sel["embedding_2d"].items():
        role = "base" if name in sel["base"] else "calibration" if name in sel["calibration"] else "pool"
        ax.scatter(x, y, c=f"C{sel['clusters'][name]}", s={"base": 140, "calibration": 90, "pool": 40}[role],
                   marker={"base": "*", "calibration": "D", "pool": "o"}[role], edgecolors="k", linewidths=0.5)
        ax.annotate(name, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_title(f"select_base ({sel['strategy']}, k={sel['k']}): ★ base, ◆ calibration")
    ax.set_xlabel("PC 1 of the prompt embeddings")
    ax.set_ylabel("PC 2")
    fig.tight_layout()
    _save_fig(fig, out_png)


def _save_fig(fig, out_png: Path) -> None:
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(out_png, buf.getvalue())


# ----------------------------------------------------------------------------- generate_base_pairs


def filter_concept(op: str) -> ConceptConfig:
    return ConceptConfig(prompt=FILTER_PROMPTS[op], teacher={"kind": "filters", "op": op})


def generate_base_pairs(selection: dict, sources: Path, pcfg: GeneratePairsConfig, ecfg: ExpandPromptsConfig,
                        out: Path, work: Path) -> dict:
    """Prompts and pairs for every base and calibration concept into `out/<concept>/`."""
    summaries = {}
    with atomic_dir(out) as tmp:
        for op in selection["base"] + selection["calibration"]:
            concept = filter_concept(op)
            prompts = expand_concept(op, concept, ecfg)
            s = generate_pairs(op, concept, pcfg, build_teacher(concept.teacher), sources, prompts, tmp / op, work)
            atomic_write_json(tmp / op / "prompts.json", prompts)
            summaries[op] = s
    return summaries


# ----------------------------------------------------------------------------- train_base


def load_pair_data(folders: dict[str, Path], encoder: str, split: str = "train", limit: int = 0,
                   prompts_files: dict[str, Path] | None = None) -> PairData:
    """Pairs of several concepts, each conditioned on its own instructions (its prompts.json: in the pairs
    folder, or given in `prompts_files`)."""
    from pipeline.infer import prompts_file

    enc = text_encoder(encoder)
    inputs, targets, rows, names, prompts = [], [], [], [], []
    for name, folder in folders.items():
        pfile = prompts_file((prompts_files or {}).get(name, folder))
        if not pfile.is_file():
            raise E2GANError(f"{pfile}: no prompts for concept {name!r}; run 'dvc repro expand_prompts@{name}'")
        instr = json.loads(pfile.read_text())["instructions"]
        first = len(prompts)
        prompts += instr
        pairs = read_pairs(folder, split)
        if limit:
            pairs = pairs[:limit]
        for r in pairs:
            a, b = load_pair(r)
            inputs.append(a)
            targets.append(b)
            rows.append(list(range(first, first + len(instr))))
            names.append(name)
    if not inputs:
        raise E2GANError(f"no {split} pairs in {', '.join(map(str, folders.values()))}; check generate_pairs' "
                         "metrics (every pair dropped?) or the pairs folders")
    e = enc.encode(prompts)
    to_t = lambda arr: torch.from_numpy(np.stack(arr)).permute(0, 3, 1, 2).contiguous()  # noqa: E731
    return PairData(to_t(inputs), to_t(targets), rows, e.tokens, e.mask, names)


def build_generator(cfg: TrainBaseConfig, text_dim: int) -> E2GANGenerator:
    torch.manual_seed(cfg.seed)
    return E2GANGenerator(GeneratorConfig(ngf=cfg.ngf, heads=cfg.heads, norm=cfg.norm, skip=cfg.skip,
                                          text_dim=text_dim))


def train_base(folders: dict[str, Path], cfg: TrainBaseConfig, encoder: str, work: Path,
               on_log=None) -> tuple[E2GANGenerator, list[dict]]:
    """Train one generator on all base concepts' training pairs; resumable through `work`."""
    data = load_pair_data(folders, encoder)
    G = build_generator(cfg, data.tokens.shape[-1])
    m: Models = build_models(G, cfg)
    history = fit(m, data, cfg, work, desc="train_base", on_log=on_log)
    return (m.ema if m.ema is not None else m.G).eval(), history
