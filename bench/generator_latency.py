"""Generator size, MACs and latency: E²GAN generator vs pix2pix ResNet-9, side by side in one run, in each runtime
that runs here: onnxruntime, ExecuTorch and LiteRT (both on XNNPACK, the CPU path phones use) and OpenCV's DNN
module.

Run: python -m bench.generator_latency [--sizes 128 256] [--runs 20] [--runtimes onnx executorch litert opencv]
     ->  bench/results/generator_latency.json
Uses the trained base model (train_base's output) when present (else a freshly initialised one: latency
does not depend on the weights).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from functools import partial
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.common import code_version, machine
from pipeline.core.io import atomic_write_json
from pipeline.deploy.export import ImageOnly, export_onnx, ort_latency
from pipeline.model.nets.pix2pix import ResnetGenerator
from pipeline.orchestrate.dvc import stage_paths


def _macs(model: torch.nn.Module, size: int) -> float:
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    return fc.get_total_flops() / 2


def _onnx_weights(path: Path) -> int:
    """Numbers stored in the exported graph's initializers."""
    import numpy as np
    import onnx

    return int(sum(np.prod(t.dims, dtype=np.int64) for t in onnx.load(str(path)).graph.initializer))


def _opencv_latency(path: Path, size: int, threads: int, *, runs: int) -> dict:
    import cv2
    import numpy as np

    from pipeline.deploy import mobile

    cv2.setNumThreads(threads)
    net = cv2.dnn.readNetFromONNX(str(path))

    def run(x):
        net.setInput(x)
        return net.forward()

    x = np.random.default_rng(0).uniform(-1, 1, (1, 3, size, size)).astype(np.float32)
    return {**mobile.latency(run, x, runs), "threads": threads}


def _phone_latency(fmt: str, model, folder: Path, name: str, size: int, threads: int, *, runs: int) -> dict:
    """Latency of the model converted to a phone format (executorch, litert), converted once per size."""
    import numpy as np

    from pipeline.deploy import mobile

    path = folder / f"{name}-{size}{mobile.SUFFIX[fmt]}"
    if not path.is_file():
        mobile.CONVERT[fmt](model, path, size)
    x = np.random.default_rng(0).uniform(-1, 1, (1, 3, size, size)).astype(np.float32)
    return {**mobile.latency(mobile.runner(fmt, path, threads), x, runs), "threads": threads}


RUNTIMES = ("onnx", "executorch", "litert", "opencv")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--runtimes", nargs="+", default=list(RUNTIMES), choices=list(RUNTIMES))
    ap.add_argument("--out", type=Path, default=Path("bench/results/generator_latency.json"))
    args = ap.parse_args()
    base = stage_paths("train_base")["out"]  # where the pipeline keeps the base model
    if (base / "generator.json").is_file():
        from pipeline.model.checkpoint import load_generator

        G, _ = load_generator(base)
    else:  # the default architecture from params.yaml
        from pipeline.config import load_params
        from pipeline.model.train_base import build_generator

        G = build_generator(load_params().train_base, 384)
    models = {
        "e2gan": ImageOnly(G, torch.randn(1, 8, G.cfg.text_dim), torch.ones(1, 8)),
        "resnet9": ImageOnly(ResnetGenerator(ngf=64)),
    }
    threads = sorted({1, os.cpu_count() or 1})
    result: dict = {"threads": threads, "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, model in models.items():
            entry = {"params": sum(p.numel() for p in model.G.parameters()), "sizes": {}}
            for size in args.sizes:
                path = export_onnx(model, Path(tmp) / f"{name}-{size}.onnx", size)
                entry["onnx_weights"] = _onnx_weights(path)  # what ships: folded text norms are per-channel constants
                entry["sizes"][size] = {
                    "gmacs": round(_macs(model.eval(), size) / 1e9, 3),
                    **{f"threads_{t}": ort_latency(path, size, t, args.runs) for t in threads},
                }
                for rt in args.runtimes:
                    if rt in ("executorch", "litert"):
                        fn = partial(_phone_latency, rt, model, Path(tmp), name, size, runs=args.runs)
                    elif rt == "opencv":
                        fn = partial(_opencv_latency, path, size, runs=args.runs)
                    else:
                        continue
                    entry["sizes"][size][rt] = {f"threads_{t}": fn(t) for t in threads}
            result["models"][name] = entry
    e, r = result["models"]["e2gan"], result["models"]["resnet9"]
    result["ratios"] = {
        "params": round(e["params"] / r["params"], 4),
        "onnx_weights": round(e["onnx_weights"] / r["onnx_weights"], 4),
        **{
            f"{s}": {
                "macs": round(e["sizes"][s]["gmacs"] / r["sizes"][s]["gmacs"], 3),
                **{
                    f"latency_threads_{t}": round(
                        e["sizes"][s][f"threads_{t}"]["median_ms"] / r["sizes"][s][f"threads_{t}"]["median_ms"], 3
                    )
                    for t in threads
                },
            }
            for s in args.sizes
        },
    }
    result["runtime_ratios"] = {  # each runtime against onnxruntime, and E²GAN against ResNet-9 in that runtime
        f"{s}": {
            rt: {
                f"threads_{t}": {
                    "e2gan_vs_onnxruntime": round(
                        e["sizes"][s][rt][f"threads_{t}"]["median_ms"] / e["sizes"][s][f"threads_{t}"]["median_ms"], 3
                    ),
                    "e2gan_vs_resnet9": round(
                        e["sizes"][s][rt][f"threads_{t}"]["median_ms"] / r["sizes"][s][rt][f"threads_{t}"]["median_ms"],
                        3,
                    ),
                }
                for t in threads
            }
            for rt in args.runtimes
            if rt != "onnx"
        }
        for s in args.sizes
    }
    result["commit"] = code_version()
    result["machine"] = machine()
    atomic_write_json(args.out, result)
    print(json.dumps(result["ratios"], indent=1))


if __name__ == "__main__":
    main()
