"""DVC stage export_base_onnx: the base generator as ONNX with every weight a named initializer, the model that
per-concept adapter artifacts patch."""

from __future__ import annotations

import json

from pipeline.deploy.package import export_base

PATHS = ("base", "selection", "pairs", "out")


def run(params, paths) -> None:
    first = json.loads(paths.selection.read_text())["base"][0]  # any text constant: artifacts replace it
    prompts = paths.pairs / first / "prompts.json"
    export_base(
        paths.base,
        prompts,
        first,
        params.export_onnx,
        paths.out,
        params.finetune_lora.tone_knots,
        params.finetune_lora.tone_window,
    )
