"""DVC stage export_onnx@C: the concept's merged generator as ONNX -> models/onnx/<concept>/
(model.onnx fixed 1x3xSxS, model_dynamic.onnx, model_fp16.onnx, model_int8.onnx, adapter.safetensors,
card.json) + reports/export_onnx/<concept>.json (parity, latency, sizes, quantisation quality)."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from pipeline.config import load_params
from pipeline.errors import E2GANError, exit_on_user_error
from pipeline.export import (ExportError, ImageOnly, adapter_artifact, apply_artifact, concept_model, export_onnx,
                             onnx_outputs, ort_latency, run_onnx, to_fp16, to_int8)
from pipeline.infer import heldout_pairs
from pipeline.io import atomic_dir, atomic_write_json, sha256_file
from pipeline.metrics import lpips_distance
from pipeline.nets.pix2pix import ResnetGenerator
from stages import concept_parser, parse_concept_args, setup


def _resize(images: list[np.ndarray], size: int) -> list[np.ndarray]:
    from PIL import Image

    return [np.asarray(Image.fromarray(im).resize((size, size), Image.BICUBIC)) if im.shape[0] != size else im
            for im in images]


@exit_on_user_error
def main() -> None:
    ap = concept_parser(__doc__, adapter="models/lora/{c}", out="models/onnx/{c}", metrics="reports/export_onnx/{c}.json")
    ap.add_argument("--base-onnx", type=Path, default=Path("models/onnx/base/model.onnx"))
    args = parse_concept_args(ap)
    setup()
    from safetensors.torch import save_file

    c, adapter, pairs, prompts, out, metrics_path = (args.concept, args.adapter, args.pairs, args.prompts, args.out,
                                                     args.metrics)
    params = load_params()
    params.concept(c)
    cfg = params.export_onnx
    model, meta = concept_model(args.base, adapter, prompts)
    inputs, _ = heldout_pairs(pairs)
    if not inputs:
        raise E2GANError(f"{pairs}: no held-out pairs to check the export on; check generate_pairs@{c}")
    photos = _resize(inputs, cfg.size)
    threads = sorted({1, os.cpu_count() or 1})
    m: dict = {"concept": c, "size": cfg.size, "opset": cfg.opset, "threads": threads}
    with atomic_dir(out) as tmp:
        fixed = export_onnx(model, tmp / "model.onnx", cfg.size, cfg.opset)
        dynamic = export_onnx(model, tmp / "model_dynamic.onnx", cfg.size, cfg.opset, dynamic_batch=True)
        # 1. parity: onnxruntime vs torch on held-out photos (fixed model one by one, dynamic as one batch)
        x = np.stack([(im.astype(np.float32) / 127.5 - 1.0).transpose(2, 0, 1) for im in photos[: cfg.parity_images]])
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        fixed_out = np.concatenate([onnx_outputs(fixed, x[i : i + 1]) for i in range(len(x))])
        m["parity"] = {"images": len(x), "max_abs_diff": float(np.abs(fixed_out - ref).max()),
                       "max_abs_diff_dynamic_batch": float(np.abs(onnx_outputs(dynamic, x) - ref).max()),
                       "tolerance": cfg.parity_tol}
        if max(m["parity"]["max_abs_diff"], m["parity"]["max_abs_diff_dynamic_batch"]) > cfg.parity_tol:
            raise ExportError(f"export_onnx@{c}: onnxruntime differs from torch by {m['parity']} > "
                              f"{cfg.parity_tol}; the export is wrong, nothing was written")
        # 2. the adapter artifact, applied to the base ONNX model, gives the directly exported model
        art = adapter_artifact(adapter, model.tokens, model.mask)
        save_file(art, str(tmp / "adapter.safetensors"))
        with tempfile.TemporaryDirectory() as td:
            patched = apply_artifact(args.base_onnx, tmp / "adapter.safetensors", Path(td) / "patched.onnx")
            m["adapter_artifact"] = {
                "bytes": (tmp / "adapter.safetensors").stat().st_size, "model_bytes": fixed.stat().st_size,
                "max_abs_diff_vs_direct": float(max(np.abs(onnx_outputs(patched, x[i : i + 1]) - fixed_out[i : i + 1]).max()
                                                    for i in range(len(x))))}
        m["adapter_artifact"]["share_of_model"] = m["adapter_artifact"]["bytes"] / m["adapter_artifact"]["model_bytes"]
        # 3. fp16 and int8 variants: size and quality loss vs the fp32 model
        fp32_imgs = run_onnx(fixed, photos[: cfg.parity_images])
        variants = {"fp32": fixed}
        if cfg.quantize:
            variants["fp16"] = to_fp16(fixed, tmp / "model_fp16.onnx")
            variants["int8"] = to_int8(fixed, tmp / "model_int8.onnx", photos[-cfg.calibration_images :])
        m["variants"] = {}
        for name, path in variants.items():
            imgs = run_onnx(path, photos[: cfg.parity_images])
            m["variants"][name] = {"bytes": path.stat().st_size,
                                   "lpips_vs_fp32": float(np.mean(lpips_distance(imgs, fp32_imgs))),
                                   **{f"latency_threads_{t}": ort_latency(path, cfg.size, t, cfg.latency_runs)
                                      for t in threads}}
        # 4. the pix2pix ResNet-9 in the same run, same size and threads (latency only: weights do not matter)
        with tempfile.TemporaryDirectory() as td:
            r9 = export_onnx(ImageOnly(ResnetGenerator(ngf=64)), Path(td) / "r9.onnx", cfg.size, cfg.opset)
            m["resnet9"] = {f"latency_threads_{t}": ort_latency(r9, cfg.size, t, cfg.latency_runs) for t in threads}
        m["latency_ratio_vs_resnet9"] = {
            f"threads_{t}": m["variants"]["fp32"][f"latency_threads_{t}"]["median_ms"]
            / m["resnet9"][f"latency_threads_{t}"]["median_ms"] for t in threads}
        atomic_write_json(tmp / "card.json", {
            "concept": c, "prompt": json.loads(prompts.read_text())["instructions"][0],
            "files": {"model.onnx": "fixed input", "model_dynamic.onnx": "dynamic batch",
                      **({"model_fp16.onnx": "fp16 inside, fp32 I/O", "model_int8.onnx": "static int8 (QDQ)"}
                         if cfg.quantize else {}),
                      "adapter.safetensors": "LoRA factors + text tokens for the base ONNX model"},
            "input": {"name": "image", "shape": [1, 3, cfg.size, cfg.size], "dtype": "float32",
                      "range": [-1, 1], "normalisation": "x / 127.5 - 1 on RGB uint8", "layout": "NCHW RGB"},
            "output": {"name": "edited", "shape": [1, 3, cfg.size, cfg.size], "range": [-1, 1],
                       "denormalisation": "(y + 1) * 127.5, clipped to 0..255"},
            "base_sha256": sha256_file(args.base / "generator.safetensors"), "text_encoder": meta["text_encoder"],
            "trained_at": meta.get("image_size"), "opset": cfg.opset, "parity": m["parity"],
            "metrics": _finetune_metrics(c)})
    atomic_write_json(metrics_path, m)


def _finetune_metrics(c: str) -> dict:
    p = Path("reports/finetune_lora") / c / "metrics.json"
    if not p.is_file():
        return {}
    m = json.loads(p.read_text())
    return {"heldout_lpips": m["heldout"]["lora"]["lpips"], "heldout_psnr": m["heldout"]["lora"]["psnr"]}


if __name__ == "__main__":
    main()
