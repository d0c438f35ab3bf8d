"""DVC stage evaluate@C: held-out quality of the concept's student against the teacher
-> reports/evaluate/<concept>.json (metrics) + reports/evaluate/<concept>.png (input | teacher | base | student)."""
from __future__ import annotations

import json

from pipeline.checkpoint import load_generator
from pipeline.config import load_params
from pipeline.errors import E2GANError, exit_on_user_error
from pipeline.evaluate import compare_sets
from pipeline.images import save_png
from pipeline.infer import concept_condition, heldout_pairs, run_generator
from pipeline.io import atomic_write_json
from pipeline.lora import load_adapter
from pipeline.metrics import inception_features
from pipeline.plots import grid
from stages import concept_parser, parse_concept_args, setup


@exit_on_user_error
def main() -> None:
    args = parse_concept_args(concept_parser(__doc__, adapter="models/lora/{c}", out="reports/evaluate/{c}.json"))
    setup()
    c, adapter, pairs, prompts, out = args.concept, args.adapter, args.pairs, args.prompts, args.out
    params = load_params()
    params.concept(c)
    cfg = params.evaluate
    if not (adapter / "adapter_config.json").is_file():
        raise E2GANError(f"{adapter}: no adapter; run 'dvc repro finetune_lora@{c}' first")
    inputs, teacher = heldout_pairs(pairs)
    if len(inputs) < 2:
        raise E2GANError(f"{pairs}: {len(inputs)} held-out pairs; FID/KID need at least 2 (raise "
                         "data.heldout_crops_per_photo)")
    base, meta = load_generator(args.base)
    tokens, mask = concept_condition(prompts, meta["text_encoder"])
    base_out = run_generator(base, inputs, tokens, mask)
    student = load_adapter(load_generator(args.base)[0], adapter, merge=True)
    student_out = run_generator(student, inputs, tokens, mask)
    clip = None
    if cfg.clip_model:
        from pipeline.metrics import ClipScorer

        clip = ClipScorer(cfg.clip_model)
    prompt = json.loads(prompts.read_text())["instructions"][0]
    tf = inception_features(teacher)
    result = {"concept": c, "prompt": prompt, "heldout_pairs": len(inputs), "bootstrap": cfg.bootstrap,
              "student": compare_sets(student_out, teacher, tf, inputs, prompt, cfg.bootstrap, cfg.seed, clip,
                                     cfg.fid_bootstrap, fid=cfg.fid),
              "base_without_adapter": compare_sets(base_out, teacher, tf, inputs, prompt, cfg.bootstrap, cfg.seed, clip,
                                                   fid=cfg.fid),
              "identity": compare_sets(inputs, teacher, tf, inputs, prompt, cfg.bootstrap, cfg.seed, clip, fid=cfg.fid)}
    atomic_write_json(out, result)
    n = min(cfg.grid, len(inputs))
    step = max(1, len(inputs) // n)
    pick = list(range(0, len(inputs), step))[:n]
    rows = [[x[i] for i in pick] for x in (inputs, teacher, base_out, student_out)]
    save_png(grid(rows, [f"{c}: input", "teacher", "base (no adapter)", "E2GAN student"]), out.with_suffix(".png"))


if __name__ == "__main__":
    main()
