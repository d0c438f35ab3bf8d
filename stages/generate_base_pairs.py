"""DVC stage generate_base_pairs: pairs for the base and calibration concepts -> data/base_pairs/<op>/."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipeline.base import generate_base_pairs
from pipeline.config import load_params
from pipeline.errors import exit_on_user_error
from pipeline.io import atomic_write_json
from pipeline.pairs import write_grid
from stages import setup


@exit_on_user_error
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--selection", type=Path, default=Path("reports/select_base.json"))
    ap.add_argument("--sources", type=Path, default=Path("data/sources"))
    ap.add_argument("--out", type=Path, default=Path("data/base_pairs"))
    ap.add_argument("--metrics", type=Path, default=Path("reports/generate_base_pairs.json"))
    ap.add_argument("--work", type=Path, default=Path("data/.work/generate_base_pairs"))
    args = ap.parse_args()
    setup()
    params = load_params()
    sel = json.loads(args.selection.read_text())
    summaries = generate_base_pairs(sel, args.sources, params.generate_pairs, params.expand_prompts, args.out, args.work)
    for op in summaries:
        write_grid(args.out / op, args.metrics.parent / "generate_base_pairs" / f"{op}.png")
    atomic_write_json(args.metrics, summaries)


if __name__ == "__main__":
    main()
