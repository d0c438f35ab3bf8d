"""DVC stage expand_prompts@C: concept prompt -> data/prompts/<C>/{prompts.json, embeddings.safetensors}."""
from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.config import load_params
from pipeline.errors import exit_on_user_error
from pipeline.prompts import write_prompts
from stages import concept_arg, setup


@exit_on_user_error
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--concept", type=concept_arg, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    setup()
    params = load_params()
    write_prompts(args.concept, params.concept(args.concept), params.expand_prompts, args.out)


if __name__ == "__main__":
    main()
