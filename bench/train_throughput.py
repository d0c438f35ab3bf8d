"""Training throughput of the base model: `pipeline.model.train.fit` with the default `train_base` settings
(architecture, batch, LSGAN + L1 + LPIPS losses, EMA) on the CPU and, when torch sees one, on the GPU,
side by side in one run. Synthetic pairs (random 8-bit images, random text tokens): speed does not
depend on the pixels.

    python -m bench.train_throughput [--steps 20] [--warmup 5] [--size 256 --batch 16]
        ->  bench/results/train_throughput.json

Reports steps/s per device, the GPU/CPU ratio and the projected time of `train_base`'s steps.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from pipeline.config import load_params
from pipeline.core.io import atomic_write_json
from pipeline.data.dataset import PairData
from pipeline.model.train import build_models, fit
from pipeline.model.train_base import build_generator

RESULTS = Path("bench/results")


def synthetic_pairs(n: int, size: int, text_dim: int, tokens: int = 16) -> PairData:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    return PairData(
        x, y, [[i % 4] for i in range(n)], torch.randn(4, tokens, text_dim, generator=g), torch.ones(4, tokens)
    )


def steps_per_second(device: str, data: PairData, steps: int, warmup: int, batch: int) -> dict:
    """Warm-up steps, then `steps` more resumed from the warm-up's checkpoint, timed."""
    tb = load_params().train_base
    cfg0 = tb.train.model_copy(update={"batch_size": batch})
    os.environ["E2GAN_DEVICE"] = device
    with tempfile.TemporaryDirectory() as tmp:
        G = build_generator(tb, data.tokens.shape[-1])
        m = build_models(G, cfg0)
        fit(
            m,
            data,
            cfg0.model_copy(update={"steps": warmup, "ckpt_every": warmup}),
            Path(tmp),
            desc=f"warm-up {device}",
        )
        cfg = cfg0.model_copy(update={"steps": warmup + steps, "ckpt_every": 10**9})
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fit(m, data, cfg, Path(tmp), desc=f"timed {device}")  # ends with the models back on the CPU: synchronised
        seconds = time.perf_counter() - t0
    return {
        "steps": steps,
        "seconds": round(seconds, 3),
        "steps_per_s": round(steps / seconds, 3),
        "train_base_projected_s": round(tb.train.steps * seconds / steps, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--size", type=int, default=0, help="image size (default: data.image_size)")
    ap.add_argument("--batch", type=int, default=0, help="batch size (default: train_base.batch_size)")
    ap.add_argument("--out", type=Path, default=RESULTS / "train_throughput.json")
    args = ap.parse_args()
    params = load_params()
    cfg, arch = params.train_base.train, params.train_base.generator
    size, batch = args.size or params.data.image_size, args.batch or cfg.batch_size
    data = synthetic_pairs(64, size, 384)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    result = {
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "image_size": size,
        "batch": batch,
        "norm": arch.norm,
        "skip": arch.skip,
        "lambda_lpips": cfg.lambda_lpips,
        "train_base_steps": cfg.steps,
        "devices": {},
    }
    for dev in devices:
        result["devices"][dev] = steps_per_second(dev, data, args.steps, args.warmup, batch)
        print(dev, json.dumps(result["devices"][dev]), flush=True)
    if "cuda" in result["devices"]:
        result["ratio_gpu_vs_cpu"] = round(
            result["devices"]["cuda"]["steps_per_s"] / result["devices"]["cpu"]["steps_per_s"], 2
        )
    atomic_write_json(args.out, result)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
