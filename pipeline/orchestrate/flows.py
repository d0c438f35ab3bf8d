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
from typing import Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import Failed
from prefect.task_runners import ThreadPoolTaskRunner

from pipeline.config import load_params
from pipeline.core.errors import E2GANError
from pipeline.core.slug import check_slug
from pipeline.data.teachers.filters import FILTERS
from pipeline.orchestrate import dvc

SHARED_LIMIT = "e2gan-shared-stages"
TeacherKind = Literal["filters", "diffusers", "pairs"]
FilterOp = Literal[tuple(sorted(FILTERS))]  # type: ignore[valid-type]  # the UI's drop-down
DiffusersPipeline = Literal["instruct_pix2pix", "img2img"]


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
        "export_mobile": dvc.stage_paths("export_mobile", concept, root)["metrics"],
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


def _grid_data_uri(path: Path, width: int = 1100) -> str | None:
    """The evaluation grid as an inline JPEG (the run page shows it without a file server)."""
    import base64
    import io

    from PIL import Image

    if not path.is_file():
        return None
    with Image.open(path) as im:
        im = im.convert("RGB")
        if im.width > width:
            im = im.resize((width, round(im.height * width / im.width)), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _size(path: Path) -> str:
    n = path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.0f} kB"


def result_markdown(concept: str, root: Path) -> str:
    """The run page's result: test-split figures beside the identity and the base, the evaluation grid, and
    where the exported model and adapter are (paths, sizes, parity)."""
    from pipeline.orchestrate.concepts import headline

    root = Path(root)
    lines = [f"# {concept}", ""]
    m = headline(concept, root)
    if m:
        ci = m["lpips_vs_identity_ci95"]

        def f(k: str, nd: int, bold: bool = False) -> str:
            v = "–" if m.get(k) is None else f"{m[k]:.{nd}f}"
            return f"**{v}**" if bold else v

        lines += [
            f"Test split: {m['test_pairs']} crops from {m['test_photos']} photos (lower is better).",
            "",
            "| | student | identity (input unchanged) | base, no adapter |",
            "|---|---|---|---|",
            f"| LPIPS to the teacher | {f('lpips_student', 3, True)} | {f('lpips_identity', 3)} | {f('lpips_base', 3)} |",
            f"| KID | {f('kid_student', 4, True)} | {f('kid_identity', 4)} | {f('kid_base', 4)} |",
            "",
        ]
        if ci:
            tie = ci[0] <= 0 <= ci[1]
            lines += [
                f"Student − identity, LPIPS: {m['lpips_vs_identity']:+.3f} (95 % interval {ci[0]:+.3f} … {ci[1]:+.3f}, "
                f"paired over test photos){': a tie' if tie else ''}.",
                "",
            ]
    grid = _grid_data_uri(dvc.stage_paths("evaluate", concept, root)["grid"])
    if grid:
        lines += [
            "Rows: input | teacher | base without adapter | student.",
            "",
            f"![evaluation grid of {concept}]({grid})",
            "",
        ]
    export = dvc.stage_paths("export_onnx", concept, root)
    adapter = dvc.stage_paths("finetune_lora", concept, root)["out"]
    rows = []
    if export["out"].is_dir():
        for f in sorted(export["out"].glob("*.onnx")):
            rows.append(f"| `{f.relative_to(root)}` | {_size(f)} |")
    mobile = dvc.stage_paths("export_mobile", concept, root)["out"]
    if mobile.is_dir():
        for f in sorted([*mobile.glob("*.pte"), *mobile.glob("*.tflite"), *mobile.glob("*.mlpackage")]):
            rows.append(f"| `{f.relative_to(root)}` | {_size(f)} |")
    if adapter.is_dir():
        rows.append(f"| `{adapter.relative_to(root)}/` (peft adapter) | {_size(adapter)} |")
    if rows:
        lines += ["| exported file | size |", "|---|---|", *rows, ""]
    if export["metrics"].is_file():
        e = json.loads(export["metrics"].read_text())
        par = e.get("parity", {})
        if par:
            lines += [
                f"ONNX vs torch on {par.get('images')} test images: max |Δ| {par.get('max_abs_diff', float('nan')):.2g} "
                f"(tolerance {par.get('tolerance')}).",
                "",
            ]
    if len(lines) <= 2:
        lines.append("No outputs yet.")
    return "\n".join(lines)


def _publish_metrics(concept: str, root: str) -> None:
    key = concept.replace("_", "-")
    create_markdown_artifact(
        key=f"result-{key}",
        markdown=result_markdown(concept, Path(root)),
        description=f"e2gan result for concept '{concept}'",
    )
    rows = _metrics_rows(concept, Path(root))
    if rows:
        create_table_artifact(key=f"metrics-{key}", table=rows, description=f"e2gan metrics for concept '{concept}'")


@task(cache_policy=NO_CACHE, task_run_name="define concept {concept}")
def define_concept(concept: str, prompt: str, teacher: dict, root: str = ".") -> str:
    """Add the concept to params.yaml, or bring an existing one to this definition (validated, atomic, locked)."""
    from pipeline.orchestrate.concepts import put

    change = put(concept, prompt, teacher, Path(root) / "params.yaml")
    get_run_logger().info(change.line())
    return change.action


def _teacher(
    teacher: str,
    filter_op: str | None,
    strength: float,
    model: str,
    diffusers_pipeline: str,
    steps: int,
    guidance_scale: float,
    image_guidance_scale: float,
    pairs_source: str = "",
) -> dict:
    if teacher not in ("filters", "diffusers", "pairs"):
        raise E2GANError(f"teacher: unknown kind {teacher!r}; choose 'filters', 'diffusers' or 'pairs'")
    if teacher == "pairs":
        if not pairs_source:
            raise E2GANError("pairs_source: give the folder (or dataset id) of the pairs for a 'pairs' teacher")
        return {"kind": "pairs", "source": pairs_source}
    if teacher == "filters":
        if not filter_op:
            raise E2GANError("filter_op: choose the filter for a 'filters' teacher (e.g. watercolor)")
        return {"kind": "filters", "op": filter_op, "strength": strength}
    return {
        "kind": "diffusers",
        "model": model,
        "pipeline": diffusers_pipeline,
        "steps": steps,
        "guidance_scale": guidance_scale,
        "image_guidance_scale": image_guidance_scale,
    }


def _one_line(e: Exception) -> str:
    text = str(e).strip()
    first = text.splitlines()[0] if text else type(e).__name__
    errors = [line.strip() for line in text.splitlines() if line.strip().startswith(("error:", "ERROR:"))]
    return first + (f" ({errors[-1]})" if errors and errors[-1] not in first else "")


@flow(name="e2gan-concept", flow_run_name="concept {concept}", log_prints=True, validate_parameters=False)
def concept_flow(
    concept: str,
    prompt: str = "",
    teacher: TeacherKind = "filters",
    filter_op: FilterOp = "watercolor",
    strength: float = 1.0,
    model: str = "timbrooks/instruct-pix2pix",
    diffusers_pipeline: DiffusersPipeline = "instruct_pix2pix",
    steps: int = 20,
    guidance_scale: float = 7.5,
    image_guidance_scale: float = 1.5,
    pairs_source: str = "",
    root: str = ".",
):
    """Define a concept (or bring an existing one up to date) and build it: shared stages if stale, then the
    concept's own stages. Returns the stages that ran.

    Args:
        concept: The concept's name, a lowercase slug (a-z, 0-9, '_'), e.g. 'golden_hour'. A new name is added to
            params.yaml; an existing one is brought to the definition below (only its stages rerun if it changed).
        prompt: The edit instruction, e.g. 'make it a watercolor painting'. Leave empty to rebuild an existing
            concept as params.yaml defines it.
        teacher: What makes the training pairs: 'filters' (OpenCV/PIL, runs anywhere), 'diffusers' (a diffusion
            editor; needs its weights and ideally a GPU) or 'pairs' (pairs you made elsewhere, see pairs_source).
        filter_op: filters: which edit.
        strength: filters: how strong, 0 to 2 (1 = the filter's own look).
        model: diffusers: a hub id or a local folder with a diffusers pipeline.
        diffusers_pipeline: diffusers: instruct_pix2pix (edits from an instruction) or img2img.
        steps: diffusers: denoising steps.
        guidance_scale: diffusers: how strongly to follow the prompt.
        image_guidance_scale: diffusers, instruct_pix2pix: how strongly to keep the photo.
        pairs_source: pairs: a folder of input/ + edited/ images matched by name, a metadata.jsonl
            (input_image, edited_image, edit_prompt), or a Hugging Face dataset id; relative to the project folder.
        root: The project folder (with dvc.yaml and params.yaml) the stages run in.
    """
    logger = get_run_logger()
    try:
        check_slug(concept)
        if prompt.strip():
            block = _teacher(
                teacher,
                filter_op,
                strength,
                model,
                diffusers_pipeline,
                steps,
                guidance_scale,
                image_guidance_scale,
                pairs_source,
            )
            from pipeline.orchestrate.concepts import validate

            validate(concept, prompt, block, Path(root) / "params.yaml")  # a bad definition: one line, before any task
            define_concept(concept, prompt, block, root)
        else:
            _check(concept, root)
        ran = shared_stages(root)
        names = dvc.stage_names(Path(root))
        for stage in dvc.PER_CONCEPT:
            if names.get(stage):
                ran += repro(f"{stage}@{concept}", root)
        _publish_metrics(concept, root)
        return ran
    except E2GANError as e:
        reason = _one_line(e)
        logger.error(reason)
        return Failed(message=reason)


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
