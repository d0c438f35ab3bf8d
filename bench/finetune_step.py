"""Where one training step of a new concept's fine-tune goes, on this machine: the pipeline's `gan_step` with
finetune_lora's settings (batch, training windows, losses, the full-rank copy of the shipped base) timed whole and
by part, and the same step in channels-last memory layout, under `precision: bf16` (autocast) and at each thread
count, all in one run as shares of the whole step; and pix2pix's ResNet-9 step (the concept benchmark's baseline)
in fp32 and bf16, so that what bf16 does to the adapter's time against pix2pix's is read from one run. Synthetic
pairs (a step's cost does not depend on the pixels).

    python -m bench.finetune_step [--repeats 8]   ->  bench/results/finetune_step.json

Parts (each timed on its own, so they need not add up to the step): the generator's forward, its forward and
backward, one discriminator update (on generated images made once), and the LPIPS loss's forward and backward.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from bench.common import RESULTS, code_version, machine
from pipeline.config import load_params
from pipeline.core.io import atomic_write_json
from pipeline.model.checkpoint import load_generator
from pipeline.model.nets.pix2pix import ResnetGenerator
from pipeline.model.train import GAN_LOSSES, build_models, gan_step, lpips_loss, native_bf16
from pipeline.orchestrate.dvc import stage_paths


def median_seconds(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def parts(
    repeats: int, channels_last: bool = False, whole_only: bool = False, precision: str = "fp32", pix2pix: bool = False
) -> dict:
    params = load_params()
    cfg = params.finetune_lora.train.model_copy(update={"precision": precision})
    base_dir = stage_paths("finetune_lora", next(iter(params.concepts)))["base"]
    G, meta = load_generator(base_dir)
    text_dim = G.cfg.text_dim
    if pix2pix:
        torch.manual_seed(0)
        G = ResnetGenerator(ngf=64)
    G.train().requires_grad_(True)
    m = build_models(G, cfg)
    perceptual = lpips_loss()
    b, s = cfg.batch_size, params.finetune_lora.patch or params.data.image_size
    g = torch.Generator().manual_seed(0)
    x, y = (torch.rand(b, 3, s, s, generator=g) * 2 - 1 for _ in range(2))
    text, mask = torch.randn(b, 8, text_dim, generator=g), torch.ones(b, 8, dtype=torch.bool)
    if channels_last:
        m.G.to(memory_format=torch.channels_last)
        m.D.to(memory_format=torch.channels_last)
        x, y = (t.contiguous(memory_format=torch.channels_last) for t in (x, y))
    d_loss = GAN_LOSSES[cfg.gan_loss][0]

    def g_forward():
        with torch.no_grad():
            m.G(x, text, mask)

    def g_forward_backward():
        m.G.zero_grad(set_to_none=True)
        m.G(x, text, mask).mean().backward()

    with torch.no_grad():
        fake = m.G(x, text, mask)

    def d_update():
        m.opt_d.zero_grad(set_to_none=True)
        d_loss(m.D(x, y), m.D(x, fake)).backward()
        m.opt_d.step()

    def lpips_fb():
        a = x.detach().clone().requires_grad_(True)
        perceptual(a, y).mean().backward()

    step = median_seconds(lambda: gan_step(m, x, y, text, mask, cfg, perceptual), repeats)
    out = {"step_s": round(step, 4)}
    if not (channels_last or whole_only):
        for name, fn in (
            ("generator_forward", g_forward),
            ("generator_forward_backward", g_forward_backward),
            ("discriminator_update", d_update),
            ("lpips_loss_forward_backward", lpips_fb),
        ):
            sec = median_seconds(fn, repeats)
            out[name] = {"seconds": round(sec, 4), "share_of_step": round(sec / step, 3)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--out", type=Path, default=RESULTS / "finetune_step.json")
    args = ap.parse_args()
    params = load_params()
    threads = torch.get_num_threads()
    result = {
        "commit": code_version(),
        "machine": machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": native_bf16(),
        "batch": params.finetune_lora.train.batch_size,
        "image_size": params.finetune_lora.patch or params.data.image_size,
        "steps": params.finetune_lora.train.steps,
        "repeats": args.repeats,
        "parts": parts(args.repeats),
    }
    whole = result["parts"]["step_s"]
    result["channels_last"] = parts(args.repeats, channels_last=True)
    result["channels_last"]["vs_default"] = round(result["channels_last"]["step_s"] / whole, 3)
    result["bf16"] = parts(args.repeats, whole_only=True, precision="bf16")
    result["bf16"]["vs_default"] = round(result["bf16"]["step_s"] / whole, 3)
    p32, p16 = (parts(args.repeats, whole_only=True, precision=p, pix2pix=True)["step_s"] for p in ("fp32", "bf16"))
    result["pix2pix"] = {"fp32_step_s": p32, "bf16_step_s": p16, "bf16_vs_fp32": round(p16 / p32, 3)}
    result["adapter_vs_pix2pix_step"] = {
        "fp32": round(whole / p32, 3),
        "bf16": round(result["bf16"]["step_s"] / p16, 3),
    }
    result["threads"] = {}
    for t in sorted({1, threads}):
        torch.set_num_threads(t)
        sec = parts(args.repeats, whole_only=True)["step_s"] if t != threads else whole
        result["threads"][str(t)] = {"step_s": sec, "vs_default": round(sec / whole, 3)}
    torch.set_num_threads(threads)
    result["projected_training_s"] = round(whole * result["steps"], 1)
    atomic_write_json(args.out, result)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
