"""DVC stage generate_pairs@C: source crops + the concept's teacher -> data/pairs/<C>, metrics and a grid."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipeline.config import load_params
from pipeline.errors import exit_on_user_error
from pipeline.io import atomic_write_json
from pipeline.pairs import generate_pairs, write_grid
from pipeline.teachers import build_teacher
from stages import concept_arg, setup


@exit_on_user_error
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--concept", type=concept_arg, required=True)
    ap.add_argument("--sources", type=Path, default=Path("data/sources"))
    ap.add_argument("--prompts", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--metrics", type=Path, required=True)
    ap.add_argument("--grid", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=Path("data/.work/generate_pairs"))
    args = ap.parse_args()
    setup()
    params = load_params()
    concept = params.concept(args.concept)
    prompts = json.loads((args.prompts / "prompts.json").read_text())
    summary = generate_pairs(args.concept, concept, params.generate_pairs, build_teacher(concept.teacher),
                             args.sources, prompts, args.out, args.work)
    write_grid(args.out, args.grid)
    atomic_write_json(args.metrics, summary)


if __name__ == "__main__":
    main()
