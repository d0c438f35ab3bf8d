"""DVC stage finetune_lora@C: LoRA adapters (peft) for one concept on the frozen base -> the adapter folder
(adapter_config.json, adapter_model.safetensors, e2gan.json) + metrics, curves and samples."""

from __future__ import annotations

import json

from pipeline.adapt.lora import finetune_concept, save_adapter_folder
from pipeline.core.errors import E2GANError
from pipeline.core.io import atomic_write_json, sha256_file, work_folder
from pipeline.core.plots import write_history
from pipeline.data.dataset import concept_prompt, load_concepts
from pipeline.model.checkpoint import load_generator
from pipeline.model.infer import evaluate_concept, write_samples
from pipeline.orchestrate.dvc import code_hash

PATHS = ("base", "ranks", "pairs", "prompts", "out", "reports", "work")


def run(params, paths, concept: str) -> None:
    cfg, c = params.finetune_lora, concept
    if not paths.ranks.is_file():
        raise E2GANError(f"{paths.ranks} not found; run 'dvc repro search_ranks' first")
    spec = json.loads(paths.ranks.read_text())
    base, meta = load_generator(paths.base)
    data = load_concepts({c: paths.pairs}, meta["text_encoder"], {c: paths.prompts})[c]
    base_sha = sha256_file(paths.base / "generator.safetensors")
    key = (
        code_hash("finetune_lora"),
        cfg.model_dump(),
        spec,
        base_sha,
        (paths.pairs / "metadata.jsonl").read_text(),
        paths.prompts.read_text(),
    )
    with work_folder(paths.work, c, *key) as work:
        features = (paths.work / "features", code_hash("finetune_lora"))  # shared by every concept
        model, history, facts = finetune_concept(base, spec, data, cfg, work, features)
    # the stored adapter on val (a choice: never test); the base without it is evaluate@C's, on test
    score = dict(split="val", limit=cfg.eval_limit, prompts=paths.prompts, seed=cfg.train.seed)
    after = evaluate_concept(model, paths.pairs, meta["text_encoder"], **score)
    write_history(history, paths.reports / "losses.csv", paths.reports / "curves.png", f"finetune_lora {c}")
    write_samples(
        model,
        {c: paths.pairs},
        meta["text_encoder"],
        paths.reports / "samples.png",
        split="val",
        prompts={c: paths.prompts},
    )
    card = {
        "concept": c,
        "prompt": concept_prompt(paths.prompts),
        "base_sha256": base_sha,
        "text_encoder": meta["text_encoder"],
        "image_size": meta.get("image_size"),
    }
    sizes = save_adapter_folder(model, spec, card, paths.out, cfg.store)
    n_base = sum(p.numel() for p in base.parameters())
    atomic_write_json(
        paths.reports / "metrics.json",
        {
            **facts,
            **sizes,
            "trainable_share": facts["trainable_params"] / n_base,
            "base_params": n_base,
            "steps": cfg.train.steps,
            "split": "val",
            "val": {"lora": after["student"], "identity": after["identity"]},
            "lpips_gain_vs_identity": after["lpips_gain_vs_identity"],
        },
    )
