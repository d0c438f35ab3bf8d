"""Text encoders for conditioning: MiniLM offline by default, CLIP when a model id/path is configured.

Both give the same interface: token states for cross-attention (B, T, D), a mask (B, T) and pooled,
L2-normalised sentence vectors (B, D) for clustering. Encodings are cached per prompt.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.core import assets
from pipeline.core.errors import E2GANError

log = logging.getLogger(__name__)


@dataclass
class TextEncoding:
    tokens: torch.Tensor  # (B, T, D) last hidden states
    mask: torch.Tensor  # (B, T) 1 for real tokens
    pooled: torch.Tensor  # (B, D) L2-normalised sentence vectors


class TextEncoder:
    """A frozen transformers text model; `name` is 'minilm' or a CLIP id/path."""

    def __init__(self, name: str = "minilm", max_tokens: int = 32):
        self.name, self.max_tokens = name, max_tokens
        self.is_clip = name != "minilm"
        self._load()
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def _load(self) -> None:
        from transformers import AutoModel, AutoTokenizer, CLIPTextModelWithProjection, CLIPTokenizer

        try:
            if self.is_clip:
                self.tokenizer = CLIPTokenizer.from_pretrained(self.name)
                self.model = CLIPTextModelWithProjection.from_pretrained(self.name)
            else:
                path = str(assets.minilm_dir())
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                self.tokenizer = AutoTokenizer.from_pretrained(path)
                self.model = AutoModel.from_pretrained(path)
        except OSError as e:
            first = str(e).strip().splitlines()[0]
            raise E2GANError(
                f"text encoder {self.name!r} cannot be loaded ({first}); use 'minilm' offline, or a CLIP "
                "model id/path such as 'openai/clip-vit-base-patch32' where a hub is reachable"
            ) from None
        self.model.eval().requires_grad_(False)

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @torch.no_grad()
    def _encode_one(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.tokenizer(
            [prompt], padding=False, truncation=True, max_length=self.max_tokens, return_tensors="pt"
        )
        out = self.model(**batch)
        tokens = out.last_hidden_state[0]
        if self.is_clip:
            pooled = out.text_embeds[0]
        else:  # sentence-transformers all-MiniLM-L6-v2: mean pooling over real tokens
            pooled = tokens.mean(0)
        return tokens, torch.nn.functional.normalize(pooled, dim=-1)

    def items(self, prompts: list[str]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per prompt: its token states (T_i, D) and pooled vector (D,)."""
        for p in prompts:
            if p not in self._cache:
                self._cache[p] = self._encode_one(p)
        return [self._cache[p] for p in prompts]

    def encode(self, prompts: list[str]) -> TextEncoding:
        return stack_encodings(self.items(prompts))


def stack_encodings(items: list[tuple[torch.Tensor, torch.Tensor]]) -> TextEncoding:
    """Per-prompt (tokens (T_i, D), pooled (D,)) -> one TextEncoding, tokens zero-padded to the longest prompt."""
    t = max(x[0].shape[0] for x in items)
    tokens = torch.zeros(len(items), t, items[0][0].shape[1])
    mask = torch.zeros(len(items), t)
    for i, (tok, _) in enumerate(items):
        tokens[i, : tok.shape[0]], mask[i, : tok.shape[0]] = tok, 1.0
    return TextEncoding(tokens, mask, torch.stack([x[1] for x in items]))


STORED = "embeddings.safetensors"  # expand_prompts writes it beside prompts.json


def stored_metadata(encoder: str, prompts: list[str]) -> dict[str, str]:
    """What a stored encoding file says it holds: the encoder and the very prompts, in order."""
    return {"encoder": encoder, "prompts": json.dumps(prompts)}


def stored_items(file: Path, encoder: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """prompt -> (tokens, pooled) from a stored encoding file (write_prompts), when it was made by `encoder`;
    {} when the file is missing, made by another encoder or predates the prompts' record in its metadata."""
    from safetensors import safe_open

    if not file.is_file():
        return {}
    with safe_open(str(file), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("encoder") != encoder or "prompts" not in meta:
            return {}
        prompts = json.loads(meta["prompts"])
        tokens, mask, pooled = f.get_tensor("tokens"), f.get_tensor("mask"), f.get_tensor("pooled")
    if not len(prompts) == len(tokens) == len(mask) == len(pooled):
        return {}
    return {p: (tokens[i, : int(mask[i].sum())].clone(), pooled[i].clone()) for i, p in enumerate(prompts)}


def encode_items(
    prompts: list[str], encoder: str, stored: Path | None = None
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per prompt (tokens, pooled): read from `stored` (an embeddings.safetensors) when it holds every prompt
    from this encoder, so no text model loads; otherwise encoded (the text model loads once per process)."""
    have = stored_items(stored, encoder) if stored is not None else {}
    if all(p in have for p in prompts):
        return [have[p] for p in prompts]
    return text_encoder(encoder).items(prompts)


@functools.lru_cache(maxsize=4)
def text_encoder(name: str = "minilm") -> TextEncoder:
    """A process-wide encoder per name (loading takes a few seconds)."""
    return TextEncoder(name)
