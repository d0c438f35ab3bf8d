"""Prefect flows over the DVC stages: one run per concept (a deployment with a `concept` parameter) and
one for all concepts.

Each task runs `dvc --wait-for-lock repro -s <stage>` (cache_policy NO_CACHE: dvc.lock is the only
cache). Shared stages go first, one flow at a time (a Prefect global concurrency limit of 1, checked
with `dvc status` first so an up-to-date pipeline costs one status call); then the concept's own chain.
Per-concept stages write disjoint outputs and `--wait-for-lock` queues DVC's lock windows (several
concept flows at once in one workspace are not load-tested yet).
"""
from __future__ import annotations

import json
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from pipeline import dvc
from pipeline.config import SLUG, load_params
from pipeline.errors import E2GANError

SHARED_LIMIT = "e2gan-shared-stages"


@task(cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5, task_run_name="dvc repro -s {stage}")
def repro(stage: str, root: str = ".") -> list[str]:
    """One DVC stage (and nothing else), its output streamed into the Prefect log."""
    logger = get_run_logger()
    ran = dvc.repro_stage(stage, Path(root), on_line=logger.info)
    logger.info("%s: %s", stage, f"ran {', '.join(ran)}" if ran else "up to date")
    return ran


def _ensure_limit(name: str, limit: int = 1) -> None:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(name, limit)


@task(cache_policy=NO_CACHE, task_run_name="shared stages")
def shared_stages(root: str = ".") -> list[str]:
    """The shared stages that are stale, one flow at a time (global concurrency limit 1)."""
    from prefect.concurrency.sync import concurrency

    names = dvc.stage_names(Path(root))
    targets = [s for s in dvc.SHARED if s in names]
    if not dvc.status(targets, Path(root)):
        return []
    _ensure_limit(SHARED_LIMIT)
    ran: list[str] = []
    with concurrency(SHARED_LIMIT, occupy=1, strict=True):
        for stage in targets:
            ran += dvc.repro_stage(stage, Path(root), on_line=get_run_logger().info)
    return ran


def _check(concept: str, root: str) -> None:
    if not SLUG.match(concept):
        raise E2GANError(f"{concept!r} is not a concept slug (a-z, 0-9, '_')")
    load_params(Path(root) / "params.yaml").concept(concept)


def _metrics_rows(concept: str, root: Path) -> list[dict]:
    rows = []
    sources = {"evaluate": root / "reports/evaluate" / f"{concept}.json",
               "finetune_lora": root / "reports/finetune_lora" / concept / "metrics.json",
               "export_onnx": root / "reports/export_onnx" / f"{concept}.json",
               "generate_pairs": root / "reports/generate_pairs" / f"{concept}.json"}
    for stage, path in sources.items():
        if path.is_file():
            flat = _flatten(json.loads(path.read_text()))
            rows += [{"stage": stage, "metric": k, "value": v} for k, v in flat.items()
                     if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return rows


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


@flow(name="e2gan-concept", flow_run_name="concept {concept}", log_prints=True)
def concept_flow(concept: str, root: str = ".") -> list[str]:
    """Bring one concept up to date: shared stages if stale, then its own chain. Returns the stages that ran."""
    _check(concept, root)
    ran = shared_stages(root)
    names = dvc.stage_names(Path(root))
    for stage in dvc.PER_CONCEPT:
        if names.get(stage):
            ran += repro(f"{stage}@{concept}", root)
    rows = _metrics_rows(concept, Path(root))
    if rows:
        create_table_artifact(key=f"metrics-{concept.replace('_', '-')}", table=rows,
                              description=f"e2gan metrics for concept '{concept}'")
    return ran


@flow(name="e2gan-all-concepts", log_prints=True)
def all_concepts_flow(root: str = ".") -> dict[str, list[str]]:
    """Every concept in params.yaml, one after another (shared stages once)."""
    concepts = list(load_params(Path(root) / "params.yaml").concepts)
    out = {c: concept_flow(c, root) for c in concepts}
    for stage in dvc.AFTER_ALL:
        out[stage] = repro(stage, root)
    return out
