"""One thin module per DVC stage: parse paths, load config, call pipeline/, write outputs."""
from __future__ import annotations

import argparse
import logging

from pipeline.config import SLUG
from pipeline.env import set_quiet_env


def setup() -> None:
    """Common stage start-up: quiet analytics, plain logging to stderr."""
    set_quiet_env()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")


def concept_arg(value: str) -> str:
    """argparse type for --concept: a lowercase slug, so it can never be a path trick."""
    if not SLUG.match(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a concept slug (a-z, 0-9, '_')")
    return value


def concept_parser(doc: str | None, **paths: str) -> argparse.ArgumentParser:
    """The arguments of a per-concept stage: --concept, --base, and path options (--pairs, --prompts and
    `paths`, name -> default with '{c}' for the concept) that default to the DVC layout."""
    from pathlib import Path

    ap = argparse.ArgumentParser(description=doc)
    ap.add_argument("--concept", type=concept_arg, required=True)
    ap.add_argument("--base", type=Path, default=Path("models/base"))
    paths = {"pairs": "data/pairs/{c}", "prompts": "data/prompts/{c}/prompts.json", **paths}
    for name, fmt in paths.items():
        ap.add_argument(f"--{name}", type=Path, help=f"default: {fmt.format(c='<concept>')}")
    ap.set_defaults(concept_paths=paths)
    return ap


def parse_concept_args(ap: argparse.ArgumentParser) -> argparse.Namespace:
    """parse_args, then every unset path option from its default for this concept."""
    from pathlib import Path

    args = ap.parse_args()
    for name, fmt in args.concept_paths.items():
        if getattr(args, name) is None:
            setattr(args, name, Path(fmt.format(c=args.concept)))
    return args
