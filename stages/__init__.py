"""One thin module per DVC stage: parse paths, load config, call pipeline/, write outputs."""
from __future__ import annotations

import logging

from pipeline.env import set_quiet_env


def setup() -> None:
    """Common stage start-up: quiet analytics, plain logging to stderr."""
    set_quiet_env()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
