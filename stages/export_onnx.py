"""DVC stage export_onnx@C: the concept's merged generator as ONNX (fixed 1x3xSxS, dynamic batch, fp16, int8),
its adapter artifact for the base ONNX model and its model card -> the concept's model folder + metrics."""

from __future__ import annotations

import json

from pipeline.core.io import atomic_write_json
from pipeline.deploy.package import export_concept, training_summary

PATHS = ("base", "base_onnx", "adapter", "pairs", "prompts", "training_metrics", "out", "metrics")


def run(params, paths, concept: str) -> None:
    training = json.loads(paths.training_metrics.read_text()) if paths.training_metrics.is_file() else {}
    m = export_concept(
        concept,
        paths.base,
        paths.base_onnx,
        paths.adapter,
        paths.pairs,
        paths.prompts,
        training_summary(training),
        params.export_onnx,
        paths.out,
    )
    atomic_write_json(paths.metrics, m)
