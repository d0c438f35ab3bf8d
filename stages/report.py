"""DVC stage report: reports/index.html (self-contained) and reports/summary.md over every concept."""
from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.config import load_params
from pipeline.errors import exit_on_user_error
from pipeline.report import write_report
from stages import setup


@exit_on_user_error
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--html", type=Path, default=Path("reports/index.html"))
    ap.add_argument("--md", type=Path, default=Path("reports/summary.md"))
    args = ap.parse_args()
    setup()
    write_report(Path("."), list(load_params().concepts), args.html, args.md)


if __name__ == "__main__":
    main()
