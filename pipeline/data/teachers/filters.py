"""Photo edits with OpenCV and PIL: the embedded stand-in teacher for machines with no GPU or model hub.

Each filter maps an RGB uint8 array (H, W, 3) to another of the same shape, is deterministic for a
seed (all randomness comes from the `rng` it is given) and works at any size: spatial parameters
scale with the image's short side, so a 128-px crop and a 2048-px photo get the same look.
"""

from __future__ import annotations

from typing import Callable

import cv2
import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from pipeline.data.teachers.base import check_batch

FilterFn = Callable[[np.ndarray, np.random.Generator], np.ndarray]

# ----------------------------------------------------------------------------- helpers


def _scale(img: np.ndarray, base: float) -> float:
    """A length of `base` pixels at a 256-px short side, scaled to this image."""
    return max(1.0, base * min(img.shape[:2]) / 256.0)


def _odd(x: float) -> int:
    return max(3, int(round(x)) | 1)


def _gray(img: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)


def _rgb(gray: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB)


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _vignette(h: int, w: int, power: float) -> np.ndarray:
    y, x = np.ogrid[-1 : 1 : h * 1j, -1 : 1 : w * 1j]
    return np.clip(1.0 - power * (x**2 + y**2) / 2.0, 0.0, 1.0)[..., None]


def _quantize(img: np.ndarray, levels: int) -> np.ndarray:
    step = 256 // levels
    return _u8((img // step) * step + step // 2)


def _pil(img: np.ndarray) -> Image.Image:
    return Image.fromarray(img)


# ----------------------------------------------------------------------------- filters


def pencil_sketch(img, rng):
    gray, _ = cv2.pencilSketch(img, sigma_s=_scale(img, 40), sigma_r=0.08, shade_factor=0.04)
    return _rgb(gray)


def color_sketch(img, rng):
    _, color = cv2.pencilSketch(img, sigma_s=_scale(img, 40), sigma_r=0.08, shade_factor=0.05)
    return color


def stylization(img, rng):
    return cv2.stylization(img, sigma_s=_scale(img, 40), sigma_r=0.45)


def watercolor(img, rng):
    soft = cv2.edgePreservingFilter(img, flags=cv2.RECURS_FILTER, sigma_s=_scale(img, 50), sigma_r=0.5)
    soft = cv2.medianBlur(soft, _odd(_scale(img, 5)))
    washed = soft.astype(np.float32) * 0.85 + 255 * 0.15  # pigment on white paper
    paper = cv2.GaussianBlur(rng.normal(0, 1, img.shape[:2]).astype(np.float32), (0, 0), _scale(img, 1.5))
    return _u8(washed * (1.0 + 0.06 * paper[..., None]))


def oil_paint(img, rng):
    size = _odd(_scale(img, 5))
    painted = np.asarray(_pil(cv2.bilateralFilter(img, 9, 60, 60)).filter(ImageFilter.ModeFilter(size)))
    return np.asarray(ImageEnhance.Color(_pil(painted)).enhance(1.35))


def cartoon(img, rng):
    smooth = img
    for _ in range(3):
        smooth = cv2.bilateralFilter(smooth, 9, 75, 75)
    edges = cv2.adaptiveThreshold(
        cv2.medianBlur(_gray(img), 5), 255, cv2.ADAPTIVE_THRESH_MEAN_C, cv2.THRESH_BINARY, _odd(_scale(img, 9)), 5
    )
    return _quantize(smooth, 6) & _rgb(edges)


def sepia(img, rng):
    m = np.array([[0.393, 0.769, 0.189], [0.349, 0.686, 0.168], [0.272, 0.534, 0.131]], np.float32)
    return _u8(img.astype(np.float32) @ m.T)


def old_film(img, rng):
    h, w = img.shape[:2]
    out = sepia(img, rng).astype(np.float32) * _vignette(h, w, 0.9)
    out += rng.normal(0, 14, (h, w, 1))  # grain
    for x in rng.integers(0, w, size=3):  # vertical scratches
        out[:, x : x + 1] = 230
    return _u8(out)


def night(img, rng):
    x = (img.astype(np.float32) / 255.0) ** 1.8 * 0.55
    x = x * np.array([0.55, 0.75, 1.25], np.float32)  # moonlight blue
    return _u8(x * 255 * _vignette(*img.shape[:2], 0.6))


def autumn(img, rng):
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV).astype(np.int32)
    green = (hsv[..., 0] > 25) & (hsv[..., 0] < 95) & (hsv[..., 1] > 40)
    hsv[..., 0] = np.where(green, (hsv[..., 0] - 25) // 5 + 5, hsv[..., 0])  # greens -> orange/red (OpenCV hue 0-180)
    hsv[..., 1] = np.where(green, np.minimum(255, hsv[..., 1] * 13 // 10), hsv[..., 1])
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)


def winter(img, rng):
    h, w = img.shape[:2]
    cold = np.asarray(ImageEnhance.Color(_pil(img)).enhance(0.45)).astype(np.float32)
    cold = cold * np.array([0.9, 0.97, 1.1], np.float32) + 35
    flakes = (rng.random((h, w)) > 0.993).astype(np.float32)
    flakes = cv2.GaussianBlur(flakes, (0, 0), _scale(img, 0.8)) * 255 * 4
    return _u8(cold + flakes[..., None])


def pop_art(img, rng):
    poster = ImageOps.posterize(_pil(img), 2)
    return np.asarray(ImageEnhance.Color(poster).enhance(2.0))


def thermal(img, rng):
    return cv2.cvtColor(cv2.applyColorMap(_gray(img), cv2.COLORMAP_INFERNO), cv2.COLOR_BGR2RGB)


def pixel_art(img, rng):
    h, w = img.shape[:2]
    block = max(2, int(round(_scale(img, 8))))
    small = cv2.resize(img, (max(1, w // block), max(1, h // block)), interpolation=cv2.INTER_AREA)
    small = np.asarray(_pil(small).quantize(colors=16, method=Image.Quantize.MEDIANCUT).convert("RGB"))
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)


def detail_enhance(img, rng):
    return cv2.detailEnhance(img, sigma_s=_scale(img, 10), sigma_r=0.15)


def ink(img, rng):
    gray = cv2.GaussianBlur(_gray(img), (0, 0), _scale(img, 1.0))
    bw = cv2.adaptiveThreshold(gray, 255, cv2.ADAPTIVE_THRESH_GAUSSIAN_C, cv2.THRESH_BINARY, _odd(_scale(img, 15)), 8)
    return _rgb(bw)


def neon(img, rng):
    edges = cv2.Canny(cv2.GaussianBlur(img, (0, 0), _scale(img, 1.0)), 60, 140)
    glow = cv2.GaussianBlur(edges.astype(np.float32), (0, 0), _scale(img, 2.0))
    hue = cv2.applyColorMap(_gray(img), cv2.COLORMAP_HSV)[..., ::-1].astype(np.float32)
    lit = (edges[..., None] / 255.0 + 2.5 * glow[..., None] / 255.0) * hue
    return _u8(img.astype(np.float32) * 0.15 + lit)


def blueprint(img, rng):
    edges = cv2.Canny(cv2.GaussianBlur(_gray(img), (0, 0), _scale(img, 1.0)), 50, 120)
    base = np.empty_like(img)
    base[:] = (18, 52, 120)
    return np.where(edges[..., None] > 0, np.uint8(235), base)


def negative(img, rng):
    return 255 - img


def lomo(img, rng):
    x = img.astype(np.float32) / 255.0
    x = 1.0 / (1.0 + np.exp(-8.0 * (x - 0.5)))  # strong S-curve
    x = x * np.array([1.05, 1.0, 0.85], np.float32)
    return _u8(x * 255 * _vignette(*img.shape[:2], 1.2))


def emboss(img, rng):
    k = np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]], np.float32)
    return _rgb(_u8(cv2.filter2D(_gray(img).astype(np.float32), -1, k) * 0.8 + 64))


FILTERS: dict[str, FilterFn] = {
    f.__name__: f
    for f in (
        pencil_sketch,
        color_sketch,
        stylization,
        watercolor,
        oil_paint,
        cartoon,
        sepia,
        old_film,
        night,
        autumn,
        winter,
        pop_art,
        thermal,
        pixel_art,
        detail_enhance,
        ink,
        neon,
        blueprint,
        negative,
        lomo,
        emboss,
    )
}

# Default prompts for each filter, used when a filter is named in the concept pool without one.
FILTER_PROMPTS: dict[str, str] = {
    "pencil_sketch": "turn the photo into a graphite pencil sketch",
    "color_sketch": "make it a coloured pencil drawing",
    "stylization": "repaint it as a stylised painting",
    "watercolor": "make it a watercolor painting",
    "oil_paint": "make it an oil painting with thick brush strokes",
    "cartoon": "turn it into a cartoon with bold outlines",
    "sepia": "give it a sepia tone",
    "old_film": "make it look like an old film photo with grain and scratches",
    "night": "turn the scene into night",
    "autumn": "make it autumn with orange foliage",
    "winter": "make it winter with falling snow",
    "pop_art": "make it pop art with flat bright colours",
    "thermal": "make it look like a thermal camera image",
    "pixel_art": "turn it into pixel art",
    "detail_enhance": "enhance the details and make it crisp",
    "ink": "make it a black and white ink drawing",
    "neon": "make it glowing neon lines on a dark background",
    "blueprint": "turn it into a blueprint",
    "negative": "invert the colours like a photo negative",
    "lomo": "give it a lomography look with vignette",
    "emboss": "make it an embossed metal relief",
}


def apply_filter(op: str, img: np.ndarray, strength: float = 1.0, seed: int = 0) -> np.ndarray:
    """Apply filter `op` to an RGB uint8 image; `strength` blends input (0) to full edit (1) and beyond."""
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 image of shape (H, W, 3), got {img.dtype} {img.shape}")
    out = FILTERS[op](np.ascontiguousarray(img), np.random.default_rng(seed))
    if strength == 1.0:
        return out
    return _u8(img.astype(np.float32) + strength * (out.astype(np.float32) - img))


class FiltersTeacher:
    """The embedded stand-in teacher: a deterministic OpenCV/PIL edit; prompts are recorded, not read."""

    name = "filters"

    def __init__(self, cfg):
        self.cfg = cfg  # a FiltersTeacherConfig

    def settings(self) -> dict:
        return self.cfg.model_dump()

    def edit(self, images, prompts, seeds):
        check_batch(images, prompts, seeds)
        return [apply_filter(self.cfg.op, img, self.cfg.strength, seed) for img, seed in zip(images, seeds)]
