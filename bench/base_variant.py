"""A variant of the base with one architecture setting changed, trained exactly as `train_base` trains the shipped
one (same base pairs, settings and seed), into a folder the probes can adapt from (`adapter_probe --base`).

    python -m bench.base_variant --no-skip       # the base without the stem skip -> data/.work/base_variants/no-skip

It asks what the architecture does to adaptation without touching the pipeline's own base (params.yaml and
models/base stay as they are). Resumable: the training keeps its checkpoints in the variant's folder.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipeline.config import load_params
from pipeline.model.checkpoint import save_generator
from pipeline.model.train_base import train_base

ROOT = Path("data/.work/base_variants")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--no-skip", action="store_true", help="train_base.generator.skip false (no stem skip)")
    args = ap.parse_args()
    if not args.no_skip:
        raise SystemExit("name the setting to change (e.g. --no-skip)")
    params = load_params()
    selection = Path("reports/select_base.json")
    if not selection.is_file():
        raise SystemExit(f"{selection}: missing; run `make run` (or `dvc repro select_base`) first")
    base_names = json.loads(selection.read_text())["base"]
    cfg = params.train_base
    cfg = cfg.model_copy(update={"generator": cfg.generator.model_copy(update={"skip": False})})
    out = ROOT / "no-skip"
    folders = {op: Path("data/base_pairs") / op for op in base_names}
    G, _ = train_base(folders, cfg, params.expand_prompts.text_encoder, out / "work")
    save_generator(
        G,
        out,
        {
            "text_encoder": params.expand_prompts.text_encoder,
            "base_concepts": base_names,
            "image_size": params.data.image_size,
            "steps": cfg.train.steps,
        },
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
