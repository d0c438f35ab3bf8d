"""DVC stage select_base: k-means over the concept pool's prompts -> base and calibration concepts + a plot."""

from __future__ import annotations

from pipeline.core.io import atomic_write_json
from pipeline.model.select_base import plot_selection, select_base

PATHS = ("out", "plot")


def run(params, paths) -> None:
    sel = select_base(list(params.select_base.pool), params.select_base, params.expand_prompts.text_encoder)
    atomic_write_json(paths.out, sel)
    plot_selection(sel, paths.plot)
