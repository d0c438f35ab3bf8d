"""Less data: keep the training pairs whose inputs best cover the concept's photos.

k-means on image features of the training inputs (offline: the LPIPS AlexNet backbone, each layer
average-pooled and unit-normalised; with a CLIP id/path: CLIP image embeddings); for each of the
k = round(fraction * N) centres the nearest not-yet-kept sample is kept. A random subset of the same
size is the ablation.
"""

from __future__ import annotations

import numpy as np
import torch

from pipeline.core.errors import E2GANError
from pipeline.core.tensors import to_signed


@torch.no_grad()
def image_features(images: torch.Tensor, features: str = "lpips", batch: int = 32) -> np.ndarray:
    """(N, 3, H, W) uint8 -> (N, F) float64 features, L2-normalised per backbone layer."""
    if features == "lpips":
        from pipeline.core.metrics import lpips_model

        model = lpips_model("alex").eval()
        out = []
        for i in range(0, len(images), batch):
            x = model.scaling_layer(to_signed(images[i : i + batch]))
            feats = [f.mean(dim=(2, 3)) for f in model.net(x)]
            out.append(torch.cat([torch.nn.functional.normalize(f, dim=1) for f in feats], dim=1))
        return torch.cat(out).double().numpy()
    from pipeline.core.metrics import ClipScorer

    arrs = list(images.permute(0, 2, 3, 1).numpy())
    return np.asarray(ClipScorer(features).image_embeddings(arrs), dtype=np.float64)


def kmeans_subset(feats: np.ndarray, n_keep: int, seed: int = 0) -> list[int]:
    """Indices of the samples nearest the centres of a k-means with n_keep clusters (sorted)."""
    from sklearn.cluster import KMeans

    n = len(feats)
    if n_keep >= n:
        return list(range(n))
    km = KMeans(n_clusters=n_keep, n_init=4, random_state=seed).fit(feats)
    dist = np.linalg.norm(feats[:, None, :] - km.cluster_centers_[None], axis=-1)  # (N, k)
    kept: list[int] = []
    for j in np.argsort(np.bincount(km.labels_, minlength=n_keep))[::-1]:  # big clusters choose first
        for i in np.argsort(dist[:, j]):
            if int(i) not in kept:
                kept.append(int(i))
                break
    return sorted(kept)


def random_subset(n: int, n_keep: int, seed: int = 0) -> list[int]:
    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.choice(n, min(n, n_keep), replace=False))


def choose_subset(
    images: torch.Tensor,
    strategy: str,
    fraction: float,
    features: str = "lpips",
    seed: int = 0,
    feats: np.ndarray | None = None,
) -> list[int]:
    """The kept training indices for `strategy` (kmeans | random | all) and the kept `fraction`; kmeans clusters
    `feats` when given (image_features of `images`), else computes them."""
    n = len(images)
    if n == 0:
        raise E2GANError("no training pairs to choose a subset from; check the concept's generate_pairs metrics")
    n_keep = max(1, round(fraction * n))
    if strategy == "all" or n_keep >= n:
        return list(range(n))
    if strategy == "random":
        return random_subset(n, n_keep, seed)
    if strategy == "kmeans":
        return kmeans_subset(image_features(images, features) if feats is None else feats, n_keep, seed)
    raise E2GANError(f"unknown subset strategy {strategy!r}; use kmeans, random or all")


def coverage(feats: np.ndarray, kept: list[int]) -> float:
    """Mean distance from every sample to its nearest kept sample (lower = the subset covers the set better)."""
    d = np.linalg.norm(feats[:, None, :] - feats[kept][None], axis=-1)
    return float(d.min(axis=1).mean())
