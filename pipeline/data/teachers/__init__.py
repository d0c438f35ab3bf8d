"""Teachers: image editors that make (input, edited) pairs, their configs, and a concept (prompt + teacher).
An explicit registry, no discovery."""

from __future__ import annotations

import difflib
from typing import Annotated, Literal, Union

from pydantic import Field, field_validator

from pipeline.core.frozen import FrozenConfig
from pipeline.data.teachers.base import Teacher, TeacherError

__all__ = [
    "ConceptConfig",
    "DiffusersTeacherConfig",
    "FiltersTeacherConfig",
    "PairsTeacherConfig",
    "TEACHERS",
    "Teacher",
    "TeacherError",
    "TeacherConfig",
    "build_teacher",
]


class FiltersTeacherConfig(FrozenConfig):
    """A deterministic OpenCV/PIL photo edit: the embedded default teacher."""

    kind: Literal["filters"] = "filters"
    op: str
    strength: float = Field(1.0, ge=0.0, le=2.0)

    @field_validator("op")
    @classmethod
    def _known_op(cls, v: str) -> str:
        from pipeline.data.teachers.filters import FILTERS

        if v not in FILTERS:
            hint = difflib.get_close_matches(v, FILTERS, n=1)
            dym = f"did you mean '{hint[0]}'? " if hint else ""
            raise ValueError(f"'{v}' is not a filter; {dym}choose one of: {', '.join(sorted(FILTERS))}")
        return v


class DiffusersTeacherConfig(FrozenConfig):
    """A diffusion editor from a hub id or a local folder (InstructPix2Pix or SD img2img)."""

    kind: Literal["diffusers"] = "diffusers"
    pipeline: Literal["instruct_pix2pix", "img2img"] = "instruct_pix2pix"
    model: str = "timbrooks/instruct-pix2pix"
    steps: int = Field(20, ge=1, le=1000)
    guidance_scale: float = Field(7.5, ge=0.0)
    image_guidance_scale: float = Field(1.5, ge=0.0)  # instruct_pix2pix only
    strength: float = Field(0.75, gt=0.0, le=1.0)  # img2img only
    negative_prompt: str = ""
    batch_size: int = Field(4, ge=1)
    device: Literal["auto", "cuda", "mps", "cpu"] = "auto"
    cpu_offload: bool = False
    safety_checker: bool = False


class PairsTeacherConfig(FrozenConfig):
    """Pairs made elsewhere: a folder of input/ + edited/ images matched by name, a folder or file
    metadata.jsonl with the InstructPix2Pix columns (input_image, edited_image, edit_prompt), or a Hugging Face
    dataset id with those columns (needs `datasets` and a reachable hub). The stage reads the source when it
    runs: after changing its contents, `dvc repro -f -s generate_pairs@<concept>`."""

    kind: Literal["pairs"] = "pairs"
    source: str = Field(min_length=1)
    split: str = "train"  # a Hugging Face dataset's split


TeacherConfig = Annotated[
    Union[FiltersTeacherConfig, DiffusersTeacherConfig, PairsTeacherConfig], Field(discriminator="kind")
]
TEACHER_CONFIGS = {"filters": FiltersTeacherConfig, "diffusers": DiffusersTeacherConfig, "pairs": PairsTeacherConfig}


class ConceptConfig(FrozenConfig):
    """One edit concept: the text instruction and the teacher that realises it."""

    prompt: str = Field(min_length=3)
    teacher: TeacherConfig


def _filters(cfg: FiltersTeacherConfig) -> Teacher:
    from pipeline.data.teachers.filters import FiltersTeacher

    return FiltersTeacher(cfg)


def _diffusers(cfg: DiffusersTeacherConfig) -> Teacher:
    from pipeline.data.teachers.diffusers_teacher import DiffusersTeacher

    return DiffusersTeacher(cfg)


def _pairs(cfg: PairsTeacherConfig) -> Teacher:
    raise TeacherError(
        f"a 'pairs' concept (source {cfg.source!r}) has its pairs already: there is no editor to run on other "
        "photos; use a filters or diffusers teacher there"
    )


TEACHERS = {"filters": _filters, "diffusers": _diffusers, "pairs": _pairs}


def build_teacher(cfg: FiltersTeacherConfig | DiffusersTeacherConfig | PairsTeacherConfig) -> Teacher:
    """The teacher for a concept's `teacher:` block."""
    return TEACHERS[cfg.kind](cfg)  # type: ignore[operator]
