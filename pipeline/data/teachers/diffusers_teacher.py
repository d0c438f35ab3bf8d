"""Diffusion editors through diffusers: InstructPix2Pix and SD img2img, from a hub id or a local folder."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from pipeline.data.teachers import DiffusersTeacherConfig
from pipeline.data.teachers.base import TeacherError, check_batch

log = logging.getLogger(__name__)

DEFAULT_NEGATIVE = "blurry, distorted, deformed, low quality, artifacts, watermark, text"


def pipeline_class(name: str):
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionInstructPix2PixPipeline

    return {"instruct_pix2pix": StableDiffusionInstructPix2PixPipeline, "img2img": StableDiffusionImg2ImgPipeline}[name]


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def _dtype_kwarg() -> str:
    """diffusers 0.42 renamed from_pretrained's `torch_dtype` to `dtype` (the old name is deprecated)."""
    import diffusers
    from packaging.version import Version

    return "dtype" if Version(diffusers.__version__) >= Version("0.42") else "torch_dtype"


def _looks_like_path(model: str) -> bool:
    return model.startswith((".", "/", "~")) or Path(model).expanduser().exists() or model.count("/") > 1


class DiffusersTeacher:
    """A diffusers editing pipeline, loaded on first use; batched, one CPU generator per sample."""

    name = "diffusers"

    def __init__(self, cfg: DiffusersTeacherConfig):
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.dtype = torch.float16 if self.device == "cuda" else torch.float32
        self._pipe = None

    def settings(self) -> dict[str, Any]:
        return {**self.cfg.model_dump(), "resolved_device": self.device, "dtype": str(self.dtype).split(".")[-1]}

    @property
    def pipe(self):
        if self._pipe is None:
            self._pipe = self._load()
        return self._pipe

    def _load(self):
        # 1. check the model reference
        cfg = self.cfg
        if _looks_like_path(cfg.model) and not Path(cfg.model).expanduser().is_dir():
            raise TeacherError(
                f"teacher.model: folder {cfg.model!r} does not exist; give a local diffusers "
                "folder (save_pretrained) or a hub id such as 'timbrooks/instruct-pix2pix'"
            )
        # 2. load the pipeline class users expect
        kwargs: dict[str, Any] = {_dtype_kwarg(): self.dtype}
        if not cfg.safety_checker:
            kwargs.update(safety_checker=None, requires_safety_checker=False)
        try:
            pipe = pipeline_class(cfg.pipeline).from_pretrained(
                str(Path(cfg.model).expanduser()) if _looks_like_path(cfg.model) else cfg.model, **kwargs
            )
        except (OSError, ValueError, EnvironmentError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise TeacherError(
                f"teacher.model: cannot load {cfg.model!r} as a {cfg.pipeline} pipeline ({first}); "
                "check the id or path, and that a hub is reachable (HF_HUB_OFFLINE unset)"
            ) from None
        pipe.set_progress_bar_config(disable=True)
        # 3. place it
        if cfg.cpu_offload and self.device == "cuda":
            pipe.enable_model_cpu_offload()
        else:
            pipe.to(self.device)
        log.info("loaded %s pipeline %s on %s (%s)", cfg.pipeline, cfg.model, self.device, self.dtype)
        return pipe

    def edit(
        self,
        images: Sequence[np.ndarray],
        prompts: Sequence[str],
        seeds: Sequence[int],
        negative_prompt: str | None = None,
    ) -> list[np.ndarray]:
        check_batch(images, prompts, seeds)
        neg = negative_prompt if negative_prompt is not None else (self.cfg.negative_prompt or DEFAULT_NEGATIVE)
        out: list[np.ndarray] = []
        for i in range(0, len(images), self.cfg.batch_size):
            out.extend(
                self._edit_batch(
                    images[i : i + self.cfg.batch_size],
                    prompts[i : i + self.cfg.batch_size],
                    seeds[i : i + self.cfg.batch_size],
                    neg,
                )
            )
        return out

    @torch.inference_mode()
    def _edit_batch(self, images, prompts, seeds, negative: str) -> list[np.ndarray]:
        cfg = self.cfg
        kwargs: dict[str, Any] = dict(
            prompt=list(prompts),
            image=[Image.fromarray(im) for im in images],
            num_inference_steps=cfg.steps,
            guidance_scale=cfg.guidance_scale,
            negative_prompt=[negative] * len(prompts),
            output_type="np",
            generator=[torch.Generator("cpu").manual_seed(int(s)) for s in seeds],  # per-sample, device-independent
        )
        if cfg.pipeline == "instruct_pix2pix":
            kwargs["image_guidance_scale"] = cfg.image_guidance_scale
        else:
            kwargs["strength"] = cfg.strength
        result = self.pipe(**kwargs).images
        edited = []
        for src, arr in zip(images, result):
            img = np.clip(np.rint(np.asarray(arr, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)
            if img.shape[:2] != src.shape[:2]:  # the VAE works on multiples of 8: resize back to the input
                img = np.asarray(Image.fromarray(img).resize((src.shape[1], src.shape[0]), Image.BICUBIC))
            edited.append(img)
        return edited
