"""DVC stage train_base: one text-conditioned generator on the base concepts -> the base model + its reports.

Data-parallel on N processes (GPUs, or CPU with gloo): torchrun --nproc_per_node N -m stages train_base ..."""

from __future__ import annotations

import json
import logging
import time

from pipeline.core.io import atomic_write_json, work_folder
from pipeline.core.plots import write_history
from pipeline.model.checkpoint import save_generator
from pipeline.model.infer import conditioning_matrix, evaluate_concepts, write_samples
from pipeline.model.train import init_distributed
from pipeline.model.train_base import train_base
from pipeline.orchestrate.dvc import code_hash

PATHS = ("selection", "pairs", "out", "reports", "work")
log = logging.getLogger("e2gan.train_base")


def run(params, paths) -> None:
    rank, world = init_distributed()  # under torchrun: data-parallel (DDP), rank 0 writes the outputs
    cfg, encoder = params.train_base, params.expand_prompts.text_encoder
    sel = json.loads(paths.selection.read_text())
    folders = {op: paths.pairs / op for op in sel["base"]}
    key = (
        code_hash("train_base"),
        cfg.model_dump(),
        encoder,
        sel["base"],
        [(f / "metadata.jsonl").read_text() for f in folders.values() if (f / "metadata.jsonl").is_file()],
    )
    with work_folder(paths.work, "base", *key, owner=rank == 0) as work:
        t0 = time.perf_counter()
        G, history = train_base(folders, cfg, encoder, work)
        seconds = round(time.perf_counter() - t0, 1)
        if rank == 0:
            _write(G, history, seconds, params, paths, sel, folders, world)


def _write(G, history, seconds, params, paths, sel, folders, world) -> None:
    cfg, encoder = params.train_base, params.expand_prompts.text_encoder
    if world > 1:
        log.info("train_base: trained data-parallel on %d processes", world)
    write_history(history, paths.reports / "losses.csv", paths.reports / "curves.png", "train_base")
    everyone = {**folders, **{op: paths.pairs / op for op in sel["calibration"]}}
    quality = evaluate_concepts(G, everyone, encoder, split="test", limit=cfg.report_limit)  # reported, chooses nothing
    write_samples(G, folders, encoder, paths.reports / "samples.png", split="test")
    save_generator(
        G,
        paths.out,
        {
            "text_encoder": encoder,
            "base_concepts": sel["base"],
            "image_size": params.data.image_size,
            "steps": cfg.train.steps,
        },  # no timings here: the model folder is a DVC output, equal for equal weights (seconds: quality.json)
    )
    atomic_write_json(
        paths.reports / "quality.json",
        {
            "train_seconds": seconds,
            "steps": cfg.train.steps,
            "split": "test",
            "concepts": quality,
            "text_conditioning": conditioning_matrix(G, folders, encoder, split="test"),
        },
    )
