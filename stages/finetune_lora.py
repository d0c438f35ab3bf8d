"""DVC stage finetune_lora@C: LoRA adapters (peft) for one concept on the frozen base
-> models/lora/<concept>/ (adapter_config.json, adapter_model.safetensors, e2gan.json)
+ reports/finetune_lora/<concept>/ (metrics.json, losses.csv, curves.png, samples.png)."""
from __future__ import annotations

import json
from pathlib import Path

from pipeline.checkpoint import load_generator
from pipeline.config import load_params
from pipeline.errors import E2GANError, exit_on_user_error
from pipeline.importance import load_concepts
from pipeline.infer import evaluate_concept, write_samples
from pipeline.io import atomic_dir, atomic_write_json, sha256_file
from pipeline.lora import finetune_concept, save_adapter, spec_ranks
from pipeline.pairs import fingerprint
from pipeline.plots import write_history
from stages import concept_parser, parse_concept_args, setup


@exit_on_user_error
def main() -> None:
    ap = concept_parser(__doc__, out="models/lora/{c}", reports="reports/finetune_lora/{c}")
    ap.add_argument("--ranks", type=Path, default=Path("models/ranks/lora.json"))
    ap.add_argument("--work", type=Path, default=Path("data/.work/finetune_lora"))
    args = parse_concept_args(ap)
    setup()
    c, pairs, prompts, out, reports = args.concept, args.pairs, args.prompts, args.out, args.reports
    params = load_params()
    params.concept(c)
    cfg = params.finetune_lora
    if not args.ranks.is_file():
        raise E2GANError(f"{args.ranks} not found; run 'dvc repro search_ranks' first")
    spec = json.loads(args.ranks.read_text())
    base, meta = load_generator(args.base)
    concept = load_concepts({c: pairs}, meta["text_encoder"], {c: prompts})[c]
    base_sha = sha256_file(args.base / "generator.safetensors")
    key = fingerprint(c, cfg.model_dump(), spec, base_sha, (pairs / "metadata.jsonl").read_text(), prompts.read_text())
    before = evaluate_concept(base, pairs, meta["text_encoder"], cfg.eval_limit, prompts)
    model, history, facts = finetune_concept(base, spec, concept, cfg, args.work / f"{c}-{key}")
    after = evaluate_concept(model, pairs, meta["text_encoder"], cfg.eval_limit, prompts)
    write_history(history, reports / "losses.csv", reports / "curves.png", f"finetune_lora {c}")
    write_samples(model, {c: pairs}, meta["text_encoder"], reports / "samples.png", prompts={c: prompts})
    n_base = sum(p.numel() for p in base.parameters())
    with atomic_dir(out) as tmp:
        save_adapter(model, tmp)
        atomic_write_json(tmp / "e2gan.json", {
            "concept": c, "prompt": json.loads(prompts.read_text())["instructions"][0], "base_sha256": base_sha,
            "text_encoder": meta["text_encoder"], "image_size": meta.get("image_size"), "ranks": spec_ranks(spec)})
        nbytes = sum(f.stat().st_size for f in tmp.iterdir() if f.is_file())
    adapter_bytes = (out / "adapter_model.safetensors").stat().st_size
    atomic_write_json(reports / "metrics.json", {
        **facts, "trainable_share": facts["trainable_params"] / n_base, "base_params": n_base,
        "adapter_bytes": adapter_bytes, "folder_bytes": nbytes, "steps": cfg.steps,
        "heldout": {"base": before["student"], "lora": after["student"], "identity": after["identity"]},
        "lpips_gain_vs_base": before["student"]["lpips"] - after["student"]["lpips"],
        "lpips_gain_vs_identity": after["lpips_gain_vs_identity"]})


if __name__ == "__main__":
    main()
