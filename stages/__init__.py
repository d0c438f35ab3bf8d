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
