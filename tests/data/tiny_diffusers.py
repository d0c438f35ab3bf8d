"""A tiny randomly initialised diffusers editing pipeline, saved locally: exercises the real loading path offline."""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch


def write_clip_tokenizer(folder: Path) -> None:
    """A character-level CLIP BPE tokenizer (no merges): enough to tokenise any lowercase prompt."""
    folder.mkdir(parents=True, exist_ok=True)
    chars = string.ascii_lowercase + string.digits + string.punctuation
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in chars:
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")


def build_tiny_pipeline(folder: Path, kind: str = "instruct_pix2pix") -> Path:
    """Save a tiny random InstructPix2Pix (or img2img) pipeline to `folder` with save_pretrained."""
    from diffusers import (
        AutoencoderKL,
        EulerAncestralDiscreteScheduler,
        StableDiffusionImg2ImgPipeline,
        StableDiffusionInstructPix2PixPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16),
        layers_per_block=1,
        sample_size=16,
        norm_num_groups=4,
        in_channels=8 if kind == "instruct_pix2pix" else 4,
        out_channels=4,
        cross_attention_dim=16,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=4,
    )
    vae = AutoencoderKL(
        block_out_channels=[8, 16],
        in_channels=3,
        out_channels=3,
        norm_num_groups=4,
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        latent_channels=4,
        sample_size=32,
    )
    tok_dir = folder.parent / f"{folder.name}-tokenizer"
    write_clip_tokenizer(tok_dir)
    tokenizer = CLIPTokenizer.from_pretrained(str(tok_dir), model_max_length=77)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
            hidden_size=16,
            intermediate_size=32,
            num_attention_heads=2,
            num_hidden_layers=2,
            vocab_size=len(tokenizer),
            max_position_embeddings=77,
            projection_dim=16,
        )
    )
    scheduler = EulerAncestralDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    cls = StableDiffusionInstructPix2PixPipeline if kind == "instruct_pix2pix" else StableDiffusionImg2ImgPipeline
    pipe = cls(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(str(folder))
    return folder


def build_tiny_clip(folder: Path) -> Path:
    """Save a tiny random CLIPModel + processor (our tokenizer) to `folder`."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    torch.manual_seed(0)
    write_clip_tokenizer(folder)
    tok = CLIPTokenizer.from_pretrained(str(folder), model_max_length=77)
    cfg = CLIPConfig(
        text_config=dict(
            hidden_size=16,
            intermediate_size=32,
            num_attention_heads=2,
            num_hidden_layers=2,
            vocab_size=len(tok),
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        ),
        vision_config=dict(
            hidden_size=16,
            intermediate_size=32,
            num_attention_heads=2,
            num_hidden_layers=2,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=16,
    )
    CLIPModel(cfg).save_pretrained(str(folder))
    proc = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tok,
    )
    proc.save_pretrained(str(folder))
    return folder
