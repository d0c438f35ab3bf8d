"""DVC stage export_mobile@C: the concept's merged generator as phone formats (ExecuTorch .pte with XNNPACK, Core ML
.mlpackage), each checked against torch, with latency beside onnxruntime -> the concept's mobile folder + metrics."""

from __future__ import annotations

from pipeline.core.io import atomic_write_json
from pipeline.deploy.package import export_mobile

PATHS = ("base", "adapter", "pairs", "prompts", "onnx", "out", "metrics")


def run(params, paths, concept: str) -> None:
    m = export_mobile(
        concept,
        paths.base,
        paths.adapter,
        paths.pairs,
        paths.prompts,
        paths.onnx,
        params.export_mobile,
        paths.out,
    )
    atomic_write_json(paths.metrics, m)
