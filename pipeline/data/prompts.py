"""Prompt expansion: one concept prompt -> N edit instructions, a negative prompt, and text embeddings."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
from pydantic import Field

from pipeline.core.frozen import FrozenConfig
from pipeline.core.images import stable_seed
from pipeline.data.teachers import ConceptConfig

log = logging.getLogger(__name__)


class ExpandPromptsConfig(FrozenConfig):
    """How one concept prompt becomes N edit instructions and their text embeddings."""

    n_prompts: int = Field(8, ge=1, le=256)
    text_encoder: str = "minilm"  # "minilm" (offline), or a CLIP model id / local path
    generator: str | None = None  # optional local transformers text-generation model (path)
    seed: int = 0


# leading phrases that mean the same edit instruction; the first match in a prompt is swapped
SYNONYMS: list[list[str]] = [
    ["make it", "turn it into", "transform it into", "render it as", "convert it to", "change it into"],
    ["turn the photo into", "make the photo", "transform the photo into", "convert the photo into"],
    ["turn the scene into", "make the scene", "change the scene to", "transform the scene into"],
    ["give it", "apply", "add"],
]
TEMPLATES = [
    "{p}",
    "please {p}",
    "{p}, keep the composition",
    "{p} while keeping the layout",
    "can you {p}?",
    "{p}, high quality",
    "I want you to {p}",
    "{p}, same scene",
    "edit the image: {p}",
    "{p}, preserve the structure",
]
NEGATIVE = "blurry, distorted, deformed, low quality, artifacts, watermark, text"


def _variants(prompt: str) -> list[str]:
    """The prompt with its leading phrase swapped for each synonym (the prompt itself first)."""
    low = prompt.strip().rstrip(".").strip()
    for group in SYNONYMS:
        for phrase in group:
            if re.match(rf"^{re.escape(phrase)}\b", low, flags=re.IGNORECASE):
                rest = low[len(phrase) :]
                return [low] + [alt + rest for alt in group if alt != phrase]
    return [low]


def expand_prompt(prompt: str, n: int, seed: int = 0) -> list[str]:
    """`n` distinct edit instructions for `prompt`, the prompt itself first; deterministic for a seed."""
    variants = _variants(prompt)
    pool = list(dict.fromkeys(t.format(p=v) for v in variants for t in TEMPLATES))
    rest = [p for p in pool if p != variants[0]]
    rng = np.random.default_rng(stable_seed("expand", prompt, seed))
    picked = [rest[i] for i in rng.permutation(len(rest))[: max(0, n - 1)]]
    out = [variants[0], *picked]
    if len(out) < n:
        log.info("prompt %r gives only %d distinct instructions (asked for %d)", prompt, len(out), n)
    return out


def generate_paraphrases(prompt: str, n: int, model_path: str, seed: int) -> list[str]:
    """Paraphrases from a local transformers text-generation model (optional; configured by path)."""
    import torch
    from transformers import pipeline

    torch.manual_seed(seed)
    gen = pipeline("text-generation", model=model_path)
    ask = f"Rewrite this image edit instruction in different words: {prompt}\nRewritten:"
    outs = gen(ask, num_return_sequences=n, do_sample=True, max_new_tokens=24, return_full_text=False)
    lines = [o["generated_text"].strip().splitlines()[0].strip() if o["generated_text"].strip() else "" for o in outs]
    return [ln for ln in dict.fromkeys(lines) if len(ln) > 3]


def expand_concept(name: str, concept: ConceptConfig, cfg: ExpandPromptsConfig) -> dict:
    """The prompts record for a concept: instructions, negative prompt and the settings used."""
    instructions = expand_prompt(concept.prompt, cfg.n_prompts, cfg.seed)
    if cfg.generator:
        extra = generate_paraphrases(concept.prompt, cfg.n_prompts, cfg.generator, cfg.seed)
        instructions = list(dict.fromkeys(instructions[:1] + extra + instructions[1:]))[: cfg.n_prompts]
    negative = getattr(concept.teacher, "negative_prompt", "") or NEGATIVE
    return {
        "concept": name,
        "prompt": concept.prompt,
        "instructions": instructions,
        "negative_prompt": negative,
        "text_encoder": cfg.text_encoder,
        "generator": cfg.generator,
        "seed": cfg.seed,
    }


def write_prompts(name: str, concept: ConceptConfig, cfg: ExpandPromptsConfig, out: Path) -> dict:
    """Write `out/prompts.json` and `out/embeddings.safetensors` (instruction tokens, mask, pooled vectors; its
    metadata names the encoder and the instructions, so later stages read the encodings instead of loading the
    text model, and only while they match: text.encode_items)."""
    from safetensors.torch import save

    from pipeline.core.io import atomic_dir, atomic_write_bytes, atomic_write_json
    from pipeline.data.text import STORED, stored_metadata, text_encoder

    record = expand_concept(name, concept, cfg)
    enc = text_encoder(cfg.text_encoder).encode(record["instructions"])
    record["embedding_dim"] = int(enc.pooled.shape[1])
    with atomic_dir(out) as tmp:
        atomic_write_json(tmp / "prompts.json", record)
        atomic_write_bytes(
            tmp / STORED,
            save(
                {"tokens": enc.tokens.contiguous(), "mask": enc.mask.contiguous(), "pooled": enc.pooled.contiguous()},
                metadata=stored_metadata(cfg.text_encoder, record["instructions"]),
            ),
        )
    return record
