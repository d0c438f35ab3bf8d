"""DVC stage expand_prompts@C: the concept's prompt -> edit instructions + text embeddings."""

from __future__ import annotations

from pipeline.data.prompts import write_prompts

PATHS = ("out",)


def run(params, paths, concept: str) -> None:
    write_prompts(concept, params.concept(concept), params.expand_prompts, paths.out)
