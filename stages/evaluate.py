"""DVC stage evaluate@C: held-out quality of the concept's student against the teacher -> metrics (JSON) and
the input | teacher | base | student grid (PNG)."""

from __future__ import annotations

from pipeline.evaluate.concept import evaluate_student, write_evaluation
from pipeline.orchestrate.dvc import code_hash

PATHS = ("base", "adapter", "pairs", "prompts", "out", "grid", "work")


def run(params, paths, concept: str) -> None:
    features = (paths.work / "features", code_hash("evaluate"))  # shared by every concept's evaluation
    result, picture = evaluate_student(
        concept, paths.base, paths.adapter, paths.pairs, paths.prompts, params.evaluate, features
    )
    write_evaluation(result, picture, paths.out, paths.grid)
