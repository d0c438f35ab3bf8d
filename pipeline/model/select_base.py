"""select_base: k-means over the concept pool's prompt embeddings picks the base and calibration concepts."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, field_validator

from pipeline.core.errors import E2GANError
from pipeline.core.frozen import FrozenConfig
from pipeline.core.plots import save_fig
from pipeline.data.teachers.filters import FILTER_PROMPTS
from pipeline.data.text import text_encoder


class SelectBaseConfig(FrozenConfig):
    """Which representative concepts the base GAN is trained on (k-means over text embeddings)."""

    strategy: Literal["kmeans", "random"] = "kmeans"  # random: the ablation
    k: int = Field(4, ge=1)  # base concepts
    n_calibration: int = Field(2, ge=0)  # held-back concepts for layer analysis and rank search
    # filter concepts to choose from; explicit (not "all but the targets") so that adding a target
    # concept never changes the base model
    pool: list[str] = Field(min_length=2)
    seed: int = 0

    @field_validator("pool")
    @classmethod
    def _known_ops(cls, v: list[str]) -> list[str]:
        from pipeline.data.teachers.filters import FILTERS

        bad = [op for op in v if op not in FILTERS]
        if bad:
            raise ValueError(f"{bad} are not filters; choose from: {', '.join(sorted(FILTERS))}")
        return v


def select_base(pool: list[str], cfg: SelectBaseConfig, encoder: str) -> dict:
    """k-means over the pool's prompt embeddings: the prompt nearest each centroid is a base concept.

    Calibration concepts (for layer analysis and rank search) are pool members *not* in the base,
    the nearest ones to the centroids of the largest clusters, so they resemble new target concepts.
    """
    from sklearn.cluster import KMeans

    if cfg.k + cfg.n_calibration > len(pool):
        raise E2GANError(
            f"select_base: k={cfg.k} + n_calibration={cfg.n_calibration} exceeds the pool of {len(pool)} "
            "concepts; lower them or widen select_base.pool"
        )
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
        members = sorted(
            (i for i in rest if km.labels_[i] == j and pool[i] not in calibration), key=lambda i: dist[i, j]
        )
        if members and len(calibration) < cfg.n_calibration:
            calibration.append(pool[members[0]])
    for i in sorted(rest, key=lambda i: dist[i].min()):  # top up if clusters ran out
        if len(calibration) < cfg.n_calibration and pool[i] not in calibration:
            calibration.append(pool[i])
    return {
        "strategy": cfg.strategy,
        "k": cfg.k,
        "encoder": encoder,
        "base": base,
        "calibration": calibration,
        "pool": pool,
        "clusters": {op: int(c) for op, c in zip(pool, km.labels_)},
        "cluster_sizes": sizes.tolist(),
        "inertia": float(km.inertia_),
        "prompts": {op: FILTER_PROMPTS[op] for op in pool},
        "embedding_2d": _pca2(emb, pool),
    }


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
        ax.scatter(
            x,
            y,
            c=f"C{sel['clusters'][name]}",
            s={"base": 140, "calibration": 90, "pool": 40}[role],
            marker={"base": "*", "calibration": "D", "pool": "o"}[role],
            edgecolors="k",
            linewidths=0.5,
        )
        ax.annotate(name, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_title(f"select_base ({sel['strategy']}, k={sel['k']}): ★ base, ◆ calibration")
    ax.set_xlabel("PC 1 of the prompt embeddings")
    ax.set_ylabel("PC 2")
    fig.tight_layout()
    save_fig(fig, out_png)
