"""DVC stage prepare_sources: photos -> train/held-out crops (data/sources) + their counts."""

from __future__ import annotations

from pipeline.core.io import atomic_write_json
from pipeline.data.sources import prepare_sources

PATHS = ("out", "metrics")


def run(params, paths) -> None:
    atomic_write_json(paths.metrics, prepare_sources(params.data, paths.out))
