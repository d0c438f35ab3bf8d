"""DVC stage prepare_sources: photos -> data/sources/{train,heldout} crops + reports/prepare_sources.json."""
from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.config import load_params
from pipeline.errors import exit_on_user_error
from pipeline.io import atomic_write_json
from pipeline.sources import prepare_sources
from stages import setup


@exit_on_user_error
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=Path("data/sources"))
    ap.add_argument("--metrics", type=Path, default=Path("reports/prepare_sources.json"))
    args = ap.parse_args()
    setup()
    summary = prepare_sources(load_params().data, args.out)
    atomic_write_json(args.metrics, summary)


if __name__ == "__main__":
    main()
