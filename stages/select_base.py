"""DVC stage select_base: k-means over the concept pool -> reports/select_base.{json,png}."""
from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.base import plot_selection, select_base
from pipeline.config import load_params
from pipeline.errors import exit_on_user_error
from pipeline.io import atomic_write_json
from stages import setup


@exit_on_user_error
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=Path("reports/select_base.json"))
    ap.add_argument("--plot", type=Path, default=Path("reports/select_base.png"))
    args = ap.parse_args()
    setup()
    params = load_params()
    sel = select_base(list(params.select_base.pool), params.select_base, params.expand_prompts.text_encoder)
    atomic_write_json(args.out, sel)
    plot_selection(sel, args.plot)


if __name__ == "__main__":
    main()
