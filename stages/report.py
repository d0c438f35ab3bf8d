"""DVC stage report: a self-contained HTML report and a Markdown summary over every concept."""

from __future__ import annotations

from pipeline.evaluate.report import ReportInputs, write_report

PATHS = ("selection", "base_samples", "layers", "ranks", "evaluate", "finetune", "export", "html", "md")


def run(params, paths) -> None:
    inputs = ReportInputs(
        paths.selection, paths.base_samples, paths.layers, paths.ranks, paths.evaluate, paths.finetune, paths.export
    )
    write_report(inputs, list(params.concepts), paths.html, paths.md)
