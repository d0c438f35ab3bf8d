"""DVC stage train_base: one text-conditioned generator on the base concepts -> models/base + reports/train_base/.

Data-parallel on N processes (GPUs, or CPU with gloo): torchrun --nproc_per_node N -m stages.train_base"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from pipeline.base import train_base
from pipeline.checkpoint import save_generator
from pipeline.config import load_params
from pipeline.errors import exit_on_user_error
from pipeline.io import atomic_write_json
from pipeline.pairs import fingerprint
from pipeline.plots import write_history
from pipeline.train import init_distributed
from pipeline.infer import conditioning_matrix, evaluate_concepts, write_samples
from stages import setup

log = logging.getLogger("e2gan.train_base")


@exit_on_user_error
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--selection", type=Path, default=Path("reports/select_base.json"))
    ap.add_argument("--pairs", type=Path, default=Path("data/base_pairs"))
    ap.add_argument("--out", type=Path, default=Path("models/base"))
    ap.add_argument("--reports", type=Path, default=Path("reports/train_base"))
    ap.add_argument("--work", type=Path, default=Path("data/.work/train_base"))
    args = ap.parse_args()
    setup()
    rank, world = init_distributed()  # under torchrun: data-parallel (DDP), rank 0 writes the outputs
    params = load_params()
    cfg, encoder = params.train_base, params.expand_prompts.text_encoder
    sel = json.loads(args.selection.read_text())
    folders = {op: args.pairs / op for op in sel["base"]}
    key = fingerprint(cfg.model_dump(), encoder, sel["base"],
                      [(f / "metadata.jsonl").read_text() for f in folders.values() if (f / "metadata.jsonl").is_file()])
    t0 = time.perf_counter()
    G, history = train_base(folders, cfg, encoder, args.work / key)
    seconds = time.perf_counter() - t0
    if rank > 0:
        return
    if world > 1:
        log.info("train_base: trained data-parallel on %d processes", world)
    write_history(history, args.reports / "losses.csv", args.reports / "curves.png", "train_base")
    quality = evaluate_concepts(G, {**folders, **{op: args.pairs / op for op in sel["calibration"]}}, encoder)
    write_samples(G, folders, encoder, args.reports / "samples.png")
    save_generator(G, args.out, {"text_encoder": encoder, "base_concepts": sel["base"],
                                 "image_size": params.data.image_size, "steps": cfg.steps,
                                 "train_seconds": round(seconds, 1)})
    atomic_write_json(args.reports / "quality.json", {"train_seconds": round(seconds, 1), "steps": cfg.steps,
                                                      "concepts": quality,
                                                      "text_conditioning": conditioning_matrix(G, folders, encoder)})


if __name__ == "__main__":
    main()
