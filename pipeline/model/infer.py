"""Running a generator on images, and its quality against the teacher (LPIPS, PSNR, SSIM)."""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from pipeline.core.metrics import lpips_distance, psnr, ssim
from pipeline.core.tensors import images_to_tensor, tensor_to_images
from pipeline.data.dataset import ConceptData, concept_condition, split_pairs


@torch.no_grad()
def run_generator(
    G: nn.Module, images: list[np.ndarray], tokens: torch.Tensor, mask: torch.Tensor, batch: int = 4
) -> list[np.ndarray]:
    """Apply G to RGB uint8 images with one text condition (tokens (1, T, D), mask (1, T)); uint8 outputs.
    A peft model runs merged (inference_model): as it ships, and faster. Batches of 4: on 2-core CPUs a
    128-px crop ran about 30 % faster than in batches of 16 (the activations stay in cache)."""
    G.eval()
    G = inference_model(G)
    out = []
    for i in range(0, len(images), batch):
        x = images_to_tensor(images[i : i + batch])
        out += tensor_to_images(G(x, tokens.expand(len(x), -1, -1), mask.expand(len(x), -1)))
    return out


def inference_model(G: nn.Module) -> nn.Module:
    """`G` for inference only: a peft model (anything with `merge_and_unload`) as a merged deep copy, which
    gives its outputs to float rounding (at most one level of 255 seen) in about 2/3 of the time of the
    unmerged LoRA layers, and is what ships; `G` itself stays unmerged (training goes on). Other modules as
    they are."""
    if callable(getattr(G, "merge_and_unload", None)):
        return copy.deepcopy(G).merge_and_unload().eval()
    return G


def paired_quality(outputs: list[np.ndarray], teacher: list[np.ndarray]) -> dict[str, float]:
    """Mean LPIPS (alex), PSNR and SSIM of outputs against the teacher's edits of the same inputs."""
    return {
        "lpips": float(np.mean(lpips_distance(outputs, teacher))),
        "psnr": float(np.mean([psnr(a, b) for a, b in zip(outputs, teacher)])),
        "ssim": float(np.mean([ssim(a, b) for a, b in zip(outputs, teacher)])),
        "n": len(outputs),
    }


def evaluate_concept(
    G: nn.Module, folder, encoder: str, *, split: str, limit: int = 0, prompts=None, seed=0, identity=None
) -> dict:
    """One concept on one split (`val` when the figure chooses something, `test` when it is reported): the
    student's and the identity mapping's LPIPS/PSNR/SSIM vs the teacher, on all the split's pairs or at most
    `limit` spread over all its photos (dataset.spread_sample). `identity`: the identity's figures from an
    earlier call on the same crops, reused (they do not depend on G)."""
    inputs, teacher, _ = split_pairs(folder, split, limit, seed)
    tokens, mask = concept_condition(prompts if prompts is not None else folder, encoder)
    student = paired_quality(run_generator(G, inputs, tokens, mask), teacher)
    identity = identity if identity is not None else paired_quality(inputs, teacher)
    return {
        "split": split,
        "student": student,
        "identity": identity,
        "lpips_gain_vs_identity": identity["lpips"] - student["lpips"],
    }


def split_lpips(G: nn.Module, folder, encoder: str, *, split: str, limit: int = 0, prompts=None, seed=0) -> float:
    """Mean LPIPS (alex) of G's outputs against the teacher on one split (all pairs, or at most `limit` spread
    over all its photos): the score layer analysis and rank search choose by, on `val`."""
    inputs, teacher, _ = split_pairs(folder, split, limit, seed)
    tokens, mask = concept_condition(prompts if prompts is not None else folder, encoder)
    return float(np.mean(lpips_distance(run_generator(G, inputs, tokens, mask), teacher)))


def concept_lpips(G: nn.Module, concept: ConceptData, *, split: str, limit: int = 0, seed: int = 0) -> float:
    """split_lpips on a loaded concept (its pairs folder and prompts)."""
    return split_lpips(G, concept.folder, concept.encoder, split=split, limit=limit, prompts=concept.prompts, seed=seed)


def evaluate_concepts(G: nn.Module, folders: dict, encoder: str, *, split: str, limit: int = 0) -> dict[str, dict]:
    """evaluate_concept on one split for each of several concepts (folders with their own prompts.json)."""
    return {name: evaluate_concept(G, folder, encoder, split=split, limit=limit) for name, folder in folders.items()}


def write_samples(
    G: nn.Module, folders: dict, encoder: str, png, *, split: str, n: int = 6, prompts: dict | None = None
) -> None:
    """Per concept, three rows: input | teacher | student on `n` crops of one split, each from a different
    photo where the split has enough (spread_sample, seed 0)."""
    from pipeline.core.images import save_png
    from pipeline.core.plots import grid

    rows, labels = [], []
    for name, folder in folders.items():
        inputs, teacher, _ = split_pairs(folder, split, n)
        tokens, mask = concept_condition((prompts or {}).get(name, folder), encoder)
        rows += [inputs, teacher, run_generator(G, inputs, tokens, mask)]
        labels += [f"{name}: input ({split})", "teacher", "student"]
    save_png(grid(rows, labels), png)


def conditioning_matrix(G: nn.Module, folders: dict, encoder: str, *, split: str, limit: int = 24) -> dict:
    """LPIPS of G(x | prompt of concept j) against teacher i's edit of x, for all base concepts i, j, on at
    most `limit` crops of one split per concept, spread over all its photos.

    Text conditioning works when each row's minimum is on the diagonal: an output matches the teacher
    of the prompt it was given better than the teachers of the other prompts.
    """
    names = list(folders)
    conds = {n: concept_condition(folders[n], encoder) for n in names}
    matrix = {}
    for i in names:
        inputs, teacher, _ = split_pairs(folders[i], split, limit)
        matrix[i] = {j: float(np.mean(lpips_distance(run_generator(G, inputs, *conds[j]), teacher))) for j in names}
    diagonal_wins = sum(min(matrix[i], key=matrix[i].get) == i for i in names)
    return {"split": split, "lpips": matrix, "diagonal_wins": diagonal_wins, "concepts": len(names)}
