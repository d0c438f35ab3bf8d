"""RGB uint8 images <-> float tensors in [-1, 1]: the generator's range, converted in one place."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def to_signed(x: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float in [-1, 1]."""
    return x.float().div(127.5).sub(1.0)


def images_to_tensor(images: Sequence[np.ndarray] | np.ndarray) -> torch.Tensor:
    """RGB uint8 (N, H, W, 3) (or one (H, W, 3)) -> float (N, 3, H, W) in [-1, 1]."""
    arr = np.stack(images) if not isinstance(images, np.ndarray) else images
    if arr.ndim == 3:
        arr = arr[None]
    return to_signed(torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2))


def tensor_to_images(y: torch.Tensor) -> list[np.ndarray]:
    """float (N, 3, H, W) in [-1, 1] (clipped) -> RGB uint8 (H, W, 3) arrays."""
    return list(((y.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())


def image_to_array(im: np.ndarray) -> np.ndarray:
    """One RGB uint8 (H, W, 3) image -> float32 (1, 3, H, W) in [-1, 1], for onnxruntime."""
    return (im.astype(np.float32) / 127.5 - 1.0).transpose(2, 0, 1)[None]


def array_to_image(y: np.ndarray) -> np.ndarray:
    """float (3, H, W) in [-1, 1] (clipped) -> RGB uint8 (H, W, 3)."""
    return ((np.clip(y, -1, 1) + 1) * 127.5).round().astype(np.uint8).transpose(1, 2, 0)
