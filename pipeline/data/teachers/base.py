"""What every teacher is: an image editor with recorded settings (a Protocol), and its error."""

from __future__ import annotations

from typing import Any, Protocol, Sequence

import numpy as np

from pipeline.core.errors import E2GANError


class TeacherError(E2GANError):
    """A teacher cannot be built or run (missing model, bad settings)."""


class Teacher(Protocol):
    """Edits a batch of RGB uint8 images, one prompt and one seed per image."""

    name: str

    def settings(self) -> dict[str, Any]:
        """Everything needed to reproduce an edit, recorded with every pair."""
        ...

    def edit(self, images: Sequence[np.ndarray], prompts: Sequence[str], seeds: Sequence[int]) -> list[np.ndarray]: ...


def check_batch(images: Sequence, prompts: Sequence, seeds: Sequence) -> None:
    if not len(images) == len(prompts) == len(seeds):
        raise ValueError(f"one prompt and one seed per image: got {len(images)}, {len(prompts)}, {len(seeds)}")
