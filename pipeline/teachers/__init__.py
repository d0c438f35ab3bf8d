"""Teachers: image editors that make (input, edited) pairs. An explicit registry, no discovery."""
from __future__ import annotations

from typing import Any, Protocol, Sequence

import numpy as np

from pipeline.config import DiffusersTeacher as DiffusersTeacherConfig
from pipeline.config import FiltersTeacher as FiltersTeacherConfig
from pipeline.errors import E2GANError


class TeacherError(E2GANError):
    """A teacher cannot be built or run (missing model, bad settings)."""


class Teacher(Protocol):
    """Edits a batch of RGB uint8 images, one prompt and one seed per image."""

    name: str

    def settings(self) -> dict[str, Any]:
        """Everything needed to reproduce an edit, recorded with every pair."""
        ...

    def edit(self, images: Sequence[np.ndarray], prompts: Sequence[str], seeds: Sequence[int]) -> list[np.ndarray]:
        ...


class FiltersTeacher:
    """The embedded stand-in teacher: a deterministic OpenCV/PIL edit; prompts are recorded, not read."""

    name = "filters"

    def __init__(self, cfg: FiltersTeacherConfig):
        self.cfg = cfg

    def settings(self) -> dict[str, Any]:
        return self.cfg.model_dump()

    def edit(self, images, prompts, seeds):
        from pipeline.teachers.filters import apply_filter

        _check_batch(images, prompts, seeds)
        return [apply_filter(self.cfg.op, img, self.cfg.strength, seed) for img, seed in zip(images, seeds)]


def _check_batch(images: Sequence, prompts: Sequence, seeds: Sequence) -> None:
    if not len(images) == len(prompts) == len(seeds):
        raise ValueError(f"one prompt and one seed per image: got {len(images)}, {len(prompts)}, {len(seeds)}")


def _diffusers(cfg: DiffusersTeacherConfig) -> Teacher:
    from pipeline.teachers.diffusers_teacher import DiffusersTeacher

    return DiffusersTeacher(cfg)


TEACHERS = {"filters": FiltersTeacher, "diffusers": _diffusers}


def build_teacher(cfg: FiltersTeacherConfig | DiffusersTeacherConfig) -> Teacher:
    """The teacher for a concept's `teacher:` block."""
    return TEACHERS[cfg.kind](cfg)  # type: ignore[operator]
