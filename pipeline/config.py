"""params.yaml -> frozen, typed pydantic models; the only place the YAML is parsed.

Each section's model is declared by the component it configures (the generator owns its architecture, the
training loop its settings, each stage its own section); this module only puts them together."""

from __future__ import annotations

import difflib
import functools
import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import BaseModel, Field, ValidationError, create_model, field_validator

from pipeline.core.errors import ConfigError
from pipeline.core.frozen import FrozenConfig
from pipeline.core.slug import RULE, is_slug, suggest_slug

if TYPE_CHECKING:
    from pipeline.data.teachers import ConceptConfig

PARAMS_FILE = "params.yaml"

# Section -> the model its component declares, named, not imported: a stage imports only the sections it
# reads (dvc.yaml's `params:`), so its code deps are what it runs, not every component of the pipeline.
SECTIONS = {
    "data": "pipeline.data.sources:DataConfig",
    "expand_prompts": "pipeline.data.prompts:ExpandPromptsConfig",
    "generate_pairs": "pipeline.data.pairs:GeneratePairsConfig",
    "select_base": "pipeline.model.select_base:SelectBaseConfig",
    "generate_base_pairs": "pipeline.data.pairs:GenerateBasePairsConfig",
    "train_base": "pipeline.model.train_base:TrainBaseConfig",
    "analyze_layers": "pipeline.adapt.layers:AnalyzeLayersConfig",
    "search_ranks": "pipeline.adapt.ranks:SearchRanksConfig",
    "finetune_lora": "pipeline.adapt.lora:FinetuneConfig",
    "evaluate": "pipeline.evaluate.concept:EvaluateConfig",
    "export_onnx": "pipeline.deploy.package:ExportOnnxConfig",
    "export_mobile": "pipeline.deploy.package:ExportMobileConfig",
    "concepts": "pipeline.data.teachers:ConceptConfig",  # a mapping name -> ConceptConfig
}


def section_model(name: str) -> type[BaseModel]:
    """The pydantic model of one params.yaml section (for `concepts`: of one concept)."""
    module, cls = SECTIONS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def _check_concept_names(v: Any) -> Any:
    if isinstance(v, dict):
        for name in v:
            if not is_slug(name):
                raise ValueError(
                    f"concept name {name!r} is not a lowercase slug ({RULE}); rename it, e.g. '{suggest_slug(name)}'"
                )
    return v


def _missing_concept(name: str, known) -> ConfigError:
    return ConfigError(f"concept {name!r} is not in params.yaml concepts; known: {', '.join(known)}")


class _Pipeline(FrozenConfig):
    def concept(self, name: str) -> ConceptConfig:
        """A concept by name, or a ConfigError listing the known ones."""
        if name not in self.concepts:
            raise _missing_concept(name, self.concepts)
        return self.concepts[name]

    @field_validator("concepts", mode="before", check_fields=False)
    @classmethod
    def _slug_names(cls, v: Any) -> Any:
        return _check_concept_names(v)


@functools.cache
def _pipeline_config() -> type[BaseModel]:
    """The whole params.yaml as one model: one section per stage (data and concepts are shared)."""
    fields: dict[str, Any] = {n: (section_model(n), ...) for n in SECTIONS if n != "concepts"}
    fields["concepts"] = (dict[str, section_model("concepts")], Field(min_length=1))
    model = create_model("PipelineConfig", __base__=_Pipeline, __module__=__name__, **fields)
    model.__doc__ = _pipeline_config.__doc__
    return model


def __getattr__(name: str) -> Any:  # `from pipeline.config import PipelineConfig` builds it on first use
    if name == "PipelineConfig":
        return _pipeline_config()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ----------------------------------------------------------------------------- loading


def _loc(loc: tuple[Any, ...]) -> str:
    # pydantic puts the union tag in the location ("teacher.filters.op"); drop it for the user
    keep = [
        p for i, p in enumerate(loc) if not (i and loc[i - 1] == "teacher" and p in ("filters", "diffusers", "pairs"))
    ]
    return ".".join(str(p) for p in keep)


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model that owns the field at `loc` (for 'did you mean' hints)."""
    from pipeline.data.teachers import TEACHER_CONFIGS, ConceptConfig

    PipelineConfig = _pipeline_config()  # noqa: N806
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
        return f"{path}: {loc}: unknown teacher kind {tag!r}; use 'filters', 'diffusers' or 'pairs'"
    if kind == "union_tag_not_found":
        return f"{path}: {loc}: the teacher needs a 'kind' (filters, diffusers or pairs)"
    msg = err["msg"].removeprefix("Value error, ")
    shown = f" (got {got!r})" if kind not in ("value_error",) and not isinstance(got, dict) else ""
    return f"{path}: {loc}: {msg}{shown}"


def parse_params(raw: Any, path: str = PARAMS_FILE) -> Any:
    """Validate a parsed YAML document; raise ConfigError with one line per problem."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level, got {type(raw).__name__}")
    try:
        return _pipeline_config().model_validate(raw)
    except ValidationError as e:
        lines = [_one_line(err, path) for err in e.errors()]
        raise ConfigError("\n".join(dict.fromkeys(lines))) from None


def _read_yaml(path: str | Path) -> Any:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: not found; run from the project root or pass --params")
    try:
        return yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{p}: {where}invalid YAML ({problem}); fix the indentation or quoting there") from None


def read_params(path: str | Path = PARAMS_FILE) -> Any:
    """Read and validate a params file (no caching)."""
    return parse_params(_read_yaml(path), str(path))


class StageParams:
    """The params.yaml sections one stage declares in dvc.yaml (`params:`), validated by their own models.
    Reading any other section is an error: DVC would not rerun the stage when it changes."""

    def __init__(self, stage: str, sections: dict[str, BaseModel], concepts: dict[str, Any]):
        self._stage, self._concepts = stage, concepts
        self.__dict__.update(sections)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        raise ConfigError(
            f"stage {self._stage} reads params section {name!r}, which dvc.yaml does not list under its params; "
            "add it there, or DVC will not rerun the stage when it changes"
        )

    def concept(self, name: str) -> Any:
        if name not in self._concepts:
            raise _missing_concept(name, self._concepts)
        return self._concepts[name]


def load_stage_params(stage: str, declared: list[str], path: str | Path = PARAMS_FILE) -> StageParams:
    """The sections (and, for `concepts.<name>`, the one concept) a stage declares, each validated with the
    model its component owns; errors read as `e2gan params check`'s."""
    raw = _read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level, got {type(raw).__name__}")
    sections: dict[str, BaseModel] = {}
    concepts: dict[str, Any] = {}
    for entry in declared:
        top, _, rest = entry.partition(".")
        try:
            if entry == "concepts":  # every concept (the report)
                sections["concepts"] = {
                    n: section_model("concepts").model_validate(c)
                    for n, c in _check_concept_names(raw.get("concepts") or {}).items()
                }
                concepts.update(sections["concepts"])
            elif top == "concepts":
                _check_concept_names({rest: None})
                if rest not in (raw.get("concepts") or {}):
                    raise _missing_concept(rest, raw.get("concepts") or {})
                concepts[rest] = section_model("concepts").model_validate(raw["concepts"][rest])
            elif top not in sections:
                if top not in raw:
                    raise ConfigError(f"{path}: {top}: missing section; add it (the shipped params.yaml has it)")
                sections[top] = section_model(top).model_validate(raw[top])
        except ValidationError as e:
            prefix = ("concepts", rest) if top == "concepts" else (top,)
            lines = [_one_line({**err, "loc": prefix + tuple(err["loc"])}, str(path)) for err in e.errors()]
            raise ConfigError("\n".join(dict.fromkeys(lines))) from None
        except ValueError as e:
            raise ConfigError(f"{path}: concepts: {e}") from None
    return StageParams(stage, sections, concepts)


@functools.lru_cache(maxsize=8)
def _cached(path: str, resolved: str, mtime_ns: int) -> Any:
    return read_params(path)


def load_params(path: str | Path = PARAMS_FILE) -> Any:
    """params.yaml loaded once per process (re-read only if the file changes)."""
    p = Path(path).resolve()
    if not p.is_file():
        raise ConfigError(f"{path}: not found; run from the project root or pass --params")
    return _cached(str(path), str(p), p.stat().st_mtime_ns)
