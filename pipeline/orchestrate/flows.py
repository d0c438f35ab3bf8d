"""Prefect flows over the DVC stages: one run per concept (a deployment with a `concept` parameter) and
one for all concepts.

Each task runs `dvc --wait-for-lock repro -s <stage>` (cache_policy NO_CACHE: dvc.lock is the only
cache). Shared stages go first, one flow at a time (a Prefect global concurrency limit of 1, checked
with `dvc status` first so an up-to-date pipeline costs one status call); then the concept's own chain.
Per-concept stages write disjoint outputs; DVC releases its repo lock while a stage's command runs and
`--wait-for-lock` queues the short lock windows, so several concept flows run at once in one workspace
(tested with four). `all_concepts_flow` fans the concept chains out through its task runner: a thread
pool by default, `prefect_dask.DaskTaskRunner` for a local process cluster or a remote Dask scheduler.
"""

from __future__ import annotations

import json
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from pipeline.config import load_params
from pipeline.core.slug import check_slug
from pipeline.orchestrate import dvc

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
    check_slug(concept)
    load_params(Path(root) / "params.yaml").concept(concept)


def _metrics_rows(concept: str, root: Path) -> list[dict]:
    rows = []
    sources = {
        "evaluate": dvc.stage_paths("evaluate", concept, root)["out"],
        "finetune_lora": dvc.stage_paths("finetune_lora", concept, root)["reports"] / "metrics.json",
        "export_onnx": dvc.stage_paths("export_onnx", concept, root)["metrics"],
        "generate_pairs": dvc.stage_paths("generate_pairs", concept, root)["metrics"],
    }
    for stage, path in sources.items():
        if path.is_file():
            flat = _flatten(json.loads(path.read_text()))
            rows += [
                {"stage": stage, "metric": k, "value": v}
                for k, v in flat.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)
            ]
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


def _publish_metrics(concept: str, root: str) -> None:
    rows = _metrics_rows(concept, Path(root))
    if rows:
        create_table_artifact(
            key=f"metrics-{concept.replace('_', '-')}", table=rows, description=f"e2gan metrics for concept '{concept}'"
        )


@flow(name="e2gan-concept", flow_run_name="concept {concept}", log_prints=True)
def concept_flow(concept: str, root: str = ".") -> list[str]:
    """Bring one concept up to date: shared stages if stale, then its own chain. Returns the stages that ran."""
    _check(concept, root)
    ran = shared_stages(root)
    names = dvc.stage_names(Path(root))
    for stage in dvc.PER_CONCEPT:
        if names.get(stage):
            ran += repro(f"{stage}@{concept}", root)
    _publish_metrics(concept, root)
    return ran


@task(cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5, task_run_name="concept chain {concept}")
def concept_chain(concept: str, root: str = ".") -> list[str]:
    """One concept's own stages in order, as one task (the unit `all_concepts_flow` fans out)."""
    logger = get_run_logger()
    names = dvc.stage_names(Path(root))
    ran: list[str] = []
    for stage in dvc.PER_CONCEPT:
        if names.get(stage):
            ran += dvc.repro_stage(f"{stage}@{concept}", Path(root), on_line=logger.info)
    _publish_metrics(concept, root)
    return ran


@flow(name="e2gan-all-concepts", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=1))
def all_concepts_flow(root: str = ".") -> dict[str, list[str]]:
    """Every concept in params.yaml: stale shared stages once, then the concept chains fanned out through the
    flow's task runner (see `with_runner`), then the cross-concept report."""
    concepts = list(load_params(Path(root) / "params.yaml").concepts)
    for c in concepts:
        _check(c, root)
    out = {"shared": shared_stages(root)}
    futures = concept_chain.map(concepts, root=root)
    out.update({c: f.result() for c, f in zip(concepts, futures)})
    for stage in dvc.AFTER_ALL:
        out[stage] = repro(stage, root)
    return out


def with_runner(workers: int = 1, dask_address: str | None = None):
    """`all_concepts_flow` with its concept chains run `workers` at a time: threads here (workers=1 is one
    after another), or on Dask: a local cluster of `workers` processes, or the scheduler at `dask_address`
    (a Dask/Kubernetes cluster whose workers see the same project folder or a DVC remote)."""
    if dask_address or workers > 1:
        from prefect_dask import DaskTaskRunner

        runner = (
            DaskTaskRunner(address=dask_address)
            if dask_address
            else DaskTaskRunner(
                cluster_kwargs={
                    "n_workers": workers,
                    "threads_per_worker": 1,
                    "processes": True,
                    "host": "127.0.0.1",
                    "dashboard_address": None,
                }
            )
        )
    else:
        runner = ThreadPoolTaskRunner(max_workers=1)
    return all_concepts_flow.with_options(task_runner=runner)
