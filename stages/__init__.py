"""One thin module per DVC stage, each a `run(params, paths[, concept])`, and the one entry point that dvc.yaml
calls: `python -m stages <stage> [--concept C] --<name> <path> ...`.

Paths come only from dvc.yaml's `cmd`: each stage declares the names it takes (`PATHS`), and the entry point
refuses a missing or unknown one. Stage modules hold no algorithm; they call functions in `pipeline/`."""

from __future__ import annotations

import importlib
import logging
import os
import sys
from pathlib import Path
from types import SimpleNamespace

from pipeline.core.env import set_quiet_env
from pipeline.core.errors import E2GANError, exit_on_user_error
from pipeline.core.slug import check_slug
from pipeline.orchestrate.dvc import AFTER_ALL, PER_CONCEPT, SHARED, stage_params

STAGES = (*SHARED, *PER_CONCEPT, *AFTER_ALL)


def parse(stage: str, argv: list[str], names: tuple[str, ...]) -> tuple[str | None, SimpleNamespace]:
    """(--concept, the paths) from `--name value` pairs; every name in `names` exactly once, nothing else."""
    if len(argv) % 2:
        raise E2GANError(f"{stage}: arguments come in '--name value' pairs, got {' '.join(argv)}")
    given: dict[str, str] = {}
    for flag, value in zip(argv[::2], argv[1::2]):
        if not flag.startswith("--") or flag[2:].replace("-", "_") in given:
            raise E2GANError(f"{stage}: {flag!r} is not a '--name' or is given twice")
        given[flag[2:].replace("-", "_")] = value
    concept = given.pop("concept", None)
    if (concept is None) == (stage in PER_CONCEPT):
        raise E2GANError(f"{stage}: {'--concept is required' if concept is None else '--concept is not taken'}")
    missing, unknown = sorted(set(names) - set(given)), sorted(set(given) - set(names))
    if missing or unknown:
        raise E2GANError(
            f"{stage}: paths {'missing: ' + ', '.join(missing) if missing else ''}"
            f"{'; ' if missing and unknown else ''}{'unknown: ' + ', '.join(unknown) if unknown else ''}"
            f"; it takes --{' --'.join(n.replace('_', '-') for n in names)} (see dvc.yaml)"
        )
    return (check_slug(concept) if concept is not None else None), SimpleNamespace(
        **{k: Path(v) for k, v in given.items()}
    )


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    """`python -m stages <stage> ...`: quiet analytics, plain logging, validated params, then the stage's run."""
    from pipeline.config import load_stage_params

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in STAGES:
        raise E2GANError(f"usage: python -m stages <stage> ...; stages: {', '.join(STAGES)}")
    set_quiet_env()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    module = importlib.import_module(f"stages.{argv[0]}")
    concept, paths = parse(argv[0], argv[1:], module.PATHS)
    params = load_stage_params(argv[0], stage_params(argv[0], concept))  # only the sections dvc.yaml declares
    if concept is not None:
        params.concept(concept)
    args = (params, paths) if concept is None else (params, paths, concept)
    profile = os.environ.get("E2GAN_PROFILE")  # a folder: the stage's cProfile statistics go there
    if not profile:
        module.run(*args)
        return
    import cProfile

    with cProfile.Profile() as prof:
        module.run(*args)
    Path(profile).mkdir(parents=True, exist_ok=True)
    prof.dump_stats(Path(profile) / f"{argv[0]}{'@' + concept if concept else ''}.prof")
