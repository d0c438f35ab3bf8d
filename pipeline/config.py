"""params.yaml -> frozen, typed pydantic models; the only place the YAML is parsed.

Each section's model is declared by the component it configures (the generator owns its architecture, the
training loop its settings, each stage its own section); this module only puts them together."""

from __future__ import annotations

import difflib
import functools
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator

from pipeline.adapt.layers import AnalyzeLayersConfig
from pipeline.adapt.lora import FinetuneConfig
from pipeline.adapt.ranks import SearchRanksConfig
from pipeline.core.errors import ConfigError
from pipeline.core.frozen import FrozenConfig
from pipeline.core.slug import RULE, is_slug, suggest_slug
from pipeline.data.pairs import GenerateBasePairsConfig, GeneratePairsConfig
from pipeline.data.prompts import ExpandPromptsConfig
from pipeline.data.sources import DataConfig
from pipeline.data.teachers import TEACHER_CONFIGS, ConceptConfig
from pipeline.deploy.package import ExportOnnxConfig
from pipeline.evaluate.concept import EvaluateConfig
from pipeline.model.select_base import SelectBaseConfig
from pipeline.model.train_base import TrainBaseConfig

PARAMS_FILE = "params.yaml"


class PipelineConfig(FrozenConfig):
    """The whole params.yaml: one section per stage (data and concepts are shared)."""

    data: DataConfig
    expand_prompts: ExpandPromptsConfig
    generate_pairs: GeneratePairsConfig
    select_base: SelectBaseConfig
    generate_base_pairs: GenerateBasePairsConfig
    train_base: TrainBaseConfig
    analyze_layers: AnalyzeLayersConfig
    search_ranks: SearchRanksConfig
    finetune_lora: FinetuneConfig
    evaluate: EvaluateConfig
    export_onnx: ExportOnnxConfig
    concepts: dict[str, ConceptConfig] = Field(min_length=1)

    def concept(self, name: str) -> ConceptConfig:
        """A concept by name, or a ConfigError listing the known ones."""
        if name not in self.concepts:
            raise ConfigError(f"concept {name!r} is not in params.yaml concepts; known: {', '.join(self.concepts)}")
        return self.concepts[name]

    @field_validator("concepts", mode="before")
    @classmethod
    def _slug_names(cls, v: Any) -> Any:
        if isinstance(v, dict):
            for name in v:
                if not is_slug(name):
                    raise ValueError(
                        f"concept name {name!r} is not a lowercase slug ({RULE}); rename it, e.g. "
                        f"'{suggest_slug(name)}'"
                    )
        return v


# ----------------------------------------------------------------------------- loading


def _loc(loc: tuple[Any, ...]) -> str:
    # pydantic puts the union tag in the location ("teacher.filters.op"); drop it for the user
    keep = [p for i, p in enumerate(loc) if not (i and loc[i - 1] == "teacher" and p in ("filters", "diffusers"))]
    return ".".join(str(p) for p in keep)


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model that owns the field at `loc` (for 'did you mean' hints)."""
    model: Any = PipelineConfig
    for part in loc[:-1]:
        if model is None:
            return None
        if model is PipelineConfig and part == "concepts":
            model = "concepts"
            continue
        if model == "concepts":
            model = ConceptConfig
            continue
        if model is ConceptConfig and part == "teacher":
            model = "teacher"
            continue
        if model == "teacher":
            model = TEACHER_CONFIGS.get(str(part))
            continue
        field = model.model_fields.get(str(part))
        model = field.annotation if field is not None else None
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _one_line(err: dict[str, Any], path: str) -> str:
    """Turn one pydantic error into 'params.yaml: <key>: <problem>; <fix>'."""
    loc = _loc(err["loc"]) or "(top level)"
    kind, got = err["type"], err.get("input")
    if kind == "extra_forbidden":
        owner = _model_at(err["loc"])
        allowed = sorted(owner.model_fields) if owner else []
        hint = difflib.get_close_matches(str(err["loc"][-1]), allowed, n=1)
        dym = f"did you mean '{hint[0]}'? " if hint else ""
        return f"{path}: {loc}: unknown key; {dym}allowed keys: {', '.join(allowed)}"
    if kind == "missing":
        what = "section" if len(err["loc"]) == 1 else "key"
        return f"{path}: {loc}: missing {what}; add it (the shipped params.yaml lists every section and key)"
    if kind == "union_tag_invalid":
        tag = got.get("kind") if isinstance(got, dict) else got
        return f"{path}: {loc}: unknown teacher kind {tag!r}; use 'filters' or 'diffusers'"
    if kind == "union_tag_not_found":
        return f"{path}: {loc}: the teacher needs a 'kind' (filters or diffusers)"
    msg = err["msg"].removeprefix("Value error, ")
    shown = f" (got {got!r})" if kind not in ("value_error",) and not isinstance(got, dict) else ""
    return f"{path}: {loc}: {msg}{shown}"


def parse_params(raw: Any, path: str = PARAMS_FILE) -> PipelineConfig:
    """Validate a parsed YAML document; raise ConfigError with one line per problem."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level, got {type(raw).__name__}")
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as e:
        lines = [_one_line(err, path) for err in e.errors()]
        raise ConfigError("\n".join(dict.fromkeys(lines))) from None


def read_params(path: str | Path = PARAMS_FILE) -> PipelineConfig:
    """Read and validate a params file (no caching)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: not found; run from the project root or pass --params")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{p}: {where}invalid YAML ({problem}); fix the indentation or quoting there") from None
    return parse_params(raw, str(p))


@functools.lru_cache(maxsize=8)
def _cached(path: str, resolved: str, mtime_ns: int) -> PipelineConfig:
    return read_params(path)


def load_params(path: str | Path = PARAMS_FILE) -> PipelineConfig:
    """params.yaml loaded once per process (re-read only if the file changes)."""
    p = Path(path).resolve()
    if not p.is_file():
        raise ConfigError(f"{path}: not found; run from the project root or pass --params")
    return _cached(str(path), str(p), p.stat().st_mtime_ns)
