"""ONNX export of generators (the text condition folded in as a constant) and onnxruntime latency."""
from __future__ import annotations

import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline.io import atomic_path


class ImageOnly(nn.Module):
    """G(x | fixed text): the concept's text tokens are a buffer, so the exported graph takes an image only."""

    def __init__(self, G: nn.Module, tokens: torch.Tensor | None = None, mask: torch.Tensor | None = None):
        super().__init__()
        self.G = G
        self.register_buffer("tokens", tokens if tokens is not None else torch.zeros(1, 1, 1))
        self.register_buffer("mask", mask if mask is not None else torch.ones(1, 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.G(image, self.tokens.expand(image.shape[0], -1, -1), self.mask.expand(image.shape[0], -1))


def export_onnx(model: nn.Module, path: Path, size: int, opset: int = 17, dynamic_batch: bool = False) -> Path:
    """Export an image-only model with input `image` (N, 3, size, size) in [-1, 1] and output `edited`."""
    model = model.eval()
    dummy = torch.zeros(1, 3, size, size)
    with atomic_path(path) as tmp, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (dummy,), str(tmp), input_names=["image"], output_names=["edited"],
                          opset_version=opset, dynamo=False, do_constant_folding=True,
                          dynamic_axes={"image": {0: "batch"}, "edited": {0: "batch"}} if dynamic_batch else None)
    import onnx

    onnx.checker.check_model(str(path))
    return path


def ort_session(path: Path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def ort_latency(path: Path, size: int, threads: int, runs: int = 20, warmup: int = 3) -> dict[str, float]:
    """Median and p90 milliseconds per 1x3xHxW image in onnxruntime on the CPU."""
    sess = ort_session(path, threads)
    x = np.random.default_rng(0).uniform(-1, 1, (1, 3, size, size)).astype(np.float32)
    for _ in range(warmup):
        sess.run(None, {"image": x})
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, {"image": x})
        times.append(1000 * (time.perf_counter() - t0))
    return {"median_ms": round(statistics.median(times), 2), "p90_ms": round(float(np.percentile(times, 90)), 2),
            "runs": runs, "threads": threads}
