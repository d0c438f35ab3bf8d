"""The browser demo end to end in real headless Chromium: a concept's adapter applied to the base model
in the page (onnxruntime-web, WebAssembly), its output compared with Python onnxruntime on the directly
exported model, frames/s at 256² next to Python onnxruntime's latency, and the messages for bad input.

    python -m bench.demo_e2e                    # the exported default models (models/onnx, after make run)
    python -m bench.demo_e2e --synthetic        # a default-size generator with random weights and adapter

Writes bench/results/demo_e2e.json and bench/results/demo.png (a screenshot of the page). Needs
`make demo-deps` (npm ci in demo/) and Debian's chromium. tests/deploy/test_demo.py runs the same on the
synthetic models.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.core.tensors import image_to_array
from pipeline.deploy.demo import make_server
from pipeline.orchestrate.dvc import stage_paths

ROOT = Path(__file__).resolve().parents[1]

RESULTS = ROOT / "bench" / "results"
SIZE = 256


def synthetic_models(out: Path, concept: str = "winter") -> Path:
    """models/onnx-shaped folder: base/ (fold=False, 32 text tokens) and <concept>/ (adapter artifact,
    direct export, card) from a default-size generator with random weights and a random LoRA adapter, with the
    default's output curve and outline gate (params.yaml's finetune_lora.tone_knots / tone_window: the base's
    the identity, the concept's random)."""
    import torch
    from safetensors.torch import save_file

    from pipeline.adapt.lora import add_lora_spec, lora_spec, save_adapter
    from pipeline.config import load_params
    from pipeline.deploy.artifact import adapter_artifact, mark_tone_window, pad_tokens
    from pipeline.deploy.export import ImageOnly, export_onnx
    from pipeline.model.nets.tone import save_tone, with_tone
    from pipeline.model.train_base import build_generator

    params = load_params()
    knots, window = params.finetune_lora.tone_knots, params.finetune_lora.tone_window
    G = build_generator(params.train_base, 384).eval()  # the default base's architecture (MiniLM text)
    with torch.no_grad():
        for p in G.parameters():
            p.add_(0.02 * torch.randn_like(p))
    if knots:
        with_tone(G, knots, window)  # the identity, as export_base_onnx exports it
    ranks = {
        "ds.conv": 8,
        "tb.attn_cross.to_k": 4,
        "tb.attn_cross.to_v": 4,
        "us.conv": 4,
        "up.1.conv": 6,
        "out": 2,
        "res.2.norm1.to_scale": 2,
        "up.0.norm.to_shift": 2,
    }
    adapted = add_lora_spec(copy.deepcopy(G), lora_spec(ranks, alpha_scale=2.0))  # peft wraps in place
    with torch.no_grad():
        for n, p in adapted.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)
        if knots:  # a curve and gate far enough from the identity that a page ignoring them fails the parity
            tone = adapted.base_model.model.tone
            tone.values[:3].add_(0.15 * torch.randn_like(tone.values[:3]))
            if window:
                tone.values[3].copy_(torch.linspace(0.2, 1.0, knots + 1))  # darker where the input is darker
    adapter = out / "_adapter"
    save_adapter(adapted, adapter)
    save_tone(adapted.base_model.model, adapter)
    base_tokens, tokens = torch.randn(1, 6, 384), torch.randn(1, 11, 384)
    (out / "base").mkdir(parents=True, exist_ok=True)
    export_onnx(
        ImageOnly(G, *pad_tokens(base_tokens, torch.ones(1, 6), 32)), out / "base" / "model.onnx", SIZE, fold=False
    )
    if knots and window:
        mark_tone_window(out / "base" / "model.onnx", window)
    (out / "base" / "card.json").write_text(json.dumps({"input": {"shape": [1, 3, SIZE, SIZE]}, "max_tokens": 32}))
    (out / concept).mkdir(exist_ok=True)
    save_file(adapter_artifact(adapter, tokens, torch.ones(1, 11)), str(out / concept / "adapter.safetensors"))
    merged = adapted.merge_and_unload().eval()
    export_onnx(ImageOnly(merged, tokens, torch.ones(1, 11)), out / concept / "model.onnx", SIZE)
    (out / concept / "card.json").write_text(json.dumps({"concept": concept, "prompt": "synthetic test concept"}))
    shutil.rmtree(adapter)
    return out


def make_photo(path: Path, src: Path | None = None) -> Path:
    """A 256x256 RGB PNG (centre crop of a real photo when given), so the page does no resampling."""
    if src is not None:
        img = Image.open(src).convert("RGB")
        s = min(img.size)
        img = img.crop(((img.width - s) // 2, (img.height - s) // 2, (img.width + s) // 2, (img.height + s) // 2))
        img = img.resize((SIZE, SIZE), Image.BICUBIC)
    else:
        rng = np.random.default_rng(0)
        img = Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))
    img.save(path)
    return path


def drive_page(models: Path, photo: Path, concept: str, missing: str, out: Path, cache: Path) -> dict:
    """Serve the demo and drive it with demo/e2e.mjs; returns what the page reported (out/e2e.json)."""
    from pipeline.config import load_params

    out.mkdir(parents=True, exist_ok=True)
    prompts = {name: c.prompt for name, c in load_params(ROOT / "params.yaml").concepts.items()}  # as `e2gan demo`
    server = make_server(models, prompts, port=0, cache=cache)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        not_image = out / "notes.txt"
        not_image.write_text("this is not an image\n")
        cfg = {
            "url": f"http://127.0.0.1:{server.server_address[1]}/",
            "photo": str(photo),
            "concept": concept,
            "missing": missing,
            "notImage": str(not_image),
            "out": str(out),
        }
        res = subprocess.run(
            ["node", str(ROOT / "demo" / "e2e.mjs"), json.dumps(cfg)],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        if res.returncode:
            raise RuntimeError(f"demo/e2e.mjs failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    finally:
        server.shutdown()
        server.server_close()
    return json.loads((out / "e2e.json").read_text())


def run(models: Path, photo: Path, concept: str, missing: str, out: Path, cache: Path) -> dict:
    """Serve the demo, drive it with demo/e2e.mjs, and compare with Python onnxruntime."""
    from pipeline.deploy.export import ort_latency, ort_session

    page = drive_page(models, photo, concept, missing, out, cache)
    rgba = np.asarray(page.pop("input"), dtype=np.uint8).reshape(SIZE, SIZE, 4)
    x = image_to_array(rgba[..., :3])
    direct = models / concept / "model.onnx"
    ref = ort_session(direct).run(None, {"image": x})[0]
    browser = np.asarray(page.pop("output"), dtype=np.float32).reshape(ref.shape)
    photo_px = np.asarray(Image.open(photo).convert("RGB"))
    result = {
        "concept": concept,
        "size": SIZE,
        "models": str(models),
        "browser_vs_python_max_abs_diff": float(np.abs(browser - ref).max()),
        "browser_vs_python_mean_abs_diff": float(np.abs(browser - ref).mean()),
        "input_pixels_max_diff": int(np.abs(rgba[..., :3].astype(int) - photo_px.astype(int)).max()),
        "output_range": [float(browser.min()), float(browser.max())],
        "browser": page["measure"],
        "cross_origin_isolated": page["crossOriginIsolated"],
        "backend_text": page["backend"],
        "download_text": page["download"],
        "camera_fps_text": page["cameraFps"],
        "python_onnxruntime": {"threads_1": ort_latency(direct, SIZE, 1), "threads_all": ort_latency(direct, SIZE, 0)},
        "messages": {
            "not_an_image": page["notImageMessage"],
            "missing_model": page["missingMessage"],
            "camera_refused": page["cameraDeniedMessage"],
        },
        "failed_requests": page["failedRequests"],
        "page_errors": page["pageErrors"],
        "console_errors": page["consoleErrors"],
    }
    result["browser_fps_vs_python_fps_all_threads"] = round(
        result["browser"]["fps"] / (1000 / result["python_onnxruntime"]["threads_all"]["median_ms"]), 3
    )
    (out / "demo_e2e.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--synthetic", action="store_true", help="Random-weight models instead of models/onnx.")
    ap.add_argument("--concept", default="winter")
    ap.add_argument("--missing", default="cartoon", help="A concept to show as missing (its files are hidden).")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    import tempfile

    from pipeline.core.assets import cache_dir

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.synthetic:
            models = synthetic_models(tmp / "models", args.concept)
        else:  # the real exports, with the 'missing' concept left out
            models = tmp / "models"
            models.mkdir()
            for d in stage_paths("export_onnx", args.concept, ROOT)["out"].parent.iterdir():
                if d.is_dir() and d.name != args.missing:
                    (models / d.name).symlink_to(d)
        photos = sorted(p for p in (cache_dir() / "photos").rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        photo = make_photo(tmp / "photo.png", photos[0] if photos else None)
        result = run(models, photo, args.concept, args.missing, tmp / "out", tmp / "cache")
        args.out.mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp / "out" / "demo.png", args.out / "demo.png")
        (args.out / "demo_e2e.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
