"""DVC stage export_base_onnx: the base generator as ONNX with every weight a named initializer
(models/onnx/base/model.onnx), the model that per-concept adapter artifacts patch."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipeline.config import load_params
from pipeline.errors import exit_on_user_error
from pipeline.export import ImageOnly, concept_model, export_onnx, pad_tokens
from pipeline.io import atomic_dir, atomic_write_json, sha256_file
from stages import setup


@exit_on_user_error
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--base", type=Path, default=Path("models/base"))
    ap.add_argument("--pairs", type=Path, default=Path("data/base_pairs"))
    ap.add_argument("--selection", type=Path, default=Path("reports/select_base.json"))
    ap.add_argument("--out", type=Path, default=Path("models/onnx/base"))
    args = ap.parse_args()
    setup()
    cfg = load_params().export_onnx
    first = json.loads(args.selection.read_text())["base"][0]  # any text constant: artifacts replace it
    model, meta = concept_model(args.base, None, args.pairs / first / "prompts.json")
    with atomic_dir(args.out) as tmp:
        padded = ImageOnly(model.G, *pad_tokens(model.tokens, model.mask, cfg.max_tokens))
        export_onnx(padded, tmp / "model.onnx", cfg.size, cfg.opset, fold=False)
        atomic_write_json(tmp / "card.json", {
            "input": {"name": "image", "shape": [1, 3, cfg.size, cfg.size], "range": [-1, 1], "layout": "NCHW RGB"},
            "output": {"name": "edited", "shape": [1, 3, cfg.size, cfg.size], "range": [-1, 1]},
            "base_sha256": sha256_file(args.base / "generator.safetensors"), "text_encoder": meta["text_encoder"],
            "opset": cfg.opset, "text_constant_from": first, "max_tokens": cfg.max_tokens,
            "note": "apply a concept's adapter.safetensors with pipeline.export.apply_artifact"})


if __name__ == "__main__":
    main()
