"""params.yaml -> frozen, typed pydantic models; the only place the YAML is parsed."""
from __future__ import annotations

import difflib
import functools
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pipeline.errors import ConfigError

SLUG = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
PARAMS_FILE = "params.yaml"


class Section(BaseModel):
    """Base for every params section: immutable, unknown keys rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid")


# ----------------------------------------------------------------------------- data


class DataConfig(Section):
    """Where source photos come from and how they become training crops."""

    sources: str = "offline"  # "offline" = the asset cache (OFFLINE_ASSETS.md), or a folder of photos
    include_grey: bool = False  # greyscale photos are converted to RGB; off by default for colour edits
    min_size: int = Field(256, ge=16)  # photos whose short side is smaller are skipped (and counted)
    image_size: int = Field(128, ge=16, le=2048)  # crop size; 256 in the paper-scale profile
    crops_per_photo: int = Field(4, ge=1, le=256)  # training crops per photo
    heldout_crops_per_photo: int = Field(8, ge=1, le=256)  # many crops: FID on a dozen images is noise
    max_photos: int = Field(0, ge=0)  # 0 = all
    heldout_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    seed: int = 0

    @field_validator("image_size")
    @classmethod
    def _multiple_of_16(cls, v: int) -> int:
        if v % 16:
            raise ValueError(f"must be a multiple of 16 (the generator downsamples 16x); try {round(v / 16) * 16}")
        return v


# ----------------------------------------------------------------------------- teachers


class FiltersTeacher(Section):
    """A deterministic OpenCV/PIL photo edit: the embedded default teacher."""

    kind: Literal["filters"] = "filters"
    op: str
    strength: float = Field(1.0, ge=0.0, le=2.0)

    @field_validator("op")
    @classmethod
    def _known_op(cls, v: str) -> str:
        from pipeline.teachers.filters import FILTERS

        if v not in FILTERS:
            hint = difflib.get_close_matches(v, FILTERS, n=1)
            dym = f"did you mean '{hint[0]}'? " if hint else ""
            raise ValueError(f"'{v}' is not a filter; {dym}choose one of: {', '.join(sorted(FILTERS))}")
        return v


class DiffusersTeacher(Section):
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


Teacher = Annotated[Union[FiltersTeacher, DiffusersTeacher], Field(discriminator="kind")]


class ConceptConfig(Section):
    """One edit concept: the text instruction and the teacher that realises it."""

    prompt: str = Field(min_length=3)
    teacher: Teacher


# ----------------------------------------------------------------------------- stages


class ExpandPromptsConfig(Section):
    """How one concept prompt becomes N edit instructions and their text embeddings."""

    n_prompts: int = Field(8, ge=1, le=256)
    text_encoder: str = "minilm"  # "minilm" (offline), or a CLIP model id / local path
    generator: str | None = None  # optional local transformers text-generation model (path)
    seed: int = 0


class GeneratePairsConfig(Section):
    """Pair generation and filtering of failed edits."""

    min_change: float = Field(0.005, ge=0.0)  # mean |edited - input| (0..1) below this: the edit failed
    max_change: float = Field(0.95, le=1.0)  # above this: the edit destroyed the photo
    min_lpips: float = Field(0.02, ge=0.0)  # LPIPS(input, edited) below this: too weak an edit
    max_lpips: float = Field(1.2, le=2.0)  # above this: the structure is gone
    clip_model: str | None = None  # CLIP id/path for directional similarity (none ships offline)
    min_clip_direction: float = Field(0.0, ge=-1.0, le=1.0)  # with clip_model: edits pointing away are dropped
    shard_size: int = Field(32, ge=1)  # pairs per checkpointed shard
    seed: int = 0


class SelectBaseConfig(Section):
    """Which representative concepts the base GAN is trained on (k-means over text embeddings)."""

    strategy: Literal["kmeans", "random"] = "kmeans"  # random: the ablation
    k: int = Field(4, ge=1)  # base concepts
    n_calibration: int = Field(2, ge=0)  # held-back concepts for layer analysis and rank search
    # filter concepts to choose from; explicit (not "all but the targets") so that adding a target
    # concept never changes the base model
    pool: list[str] = Field(min_length=2)
    seed: int = 0

    @field_validator("pool")
    @classmethod
    def _known_ops(cls, v: list[str]) -> list[str]:
        from pipeline.teachers.filters import FILTERS

        bad = [op for op in v if op not in FILTERS]
        if bad:
            raise ValueError(f"{bad} are not filters; choose from: {', '.join(sorted(FILTERS))}")
        return v


class GenerateBasePairsConfig(Section):
    """Pairs for the base and calibration concepts (thresholds come from generate_pairs)."""

    max_train_per_concept: int = Field(0, ge=0)  # 0 = every training crop


class TrainConfig(Section):
    """The one GAN training loop's settings (shared by the base model, LoRA and the baselines)."""

    steps: int = Field(600, ge=1)
    batch_size: int = Field(8, ge=1)
    lr_g: float = Field(2e-4, gt=0)
    lr_d: float = Field(2e-4, gt=0)
    beta1: float = Field(0.5, ge=0, lt=1)
    gan_loss: Literal["lsgan", "hinge"] = "lsgan"
    lambda_gan: float = Field(1.0, ge=0)
    lambda_l1: float = Field(100.0, ge=0)
    lambda_lpips: float = Field(0.0, ge=0)  # perceptual loss with the offline LPIPS backbone
    ndf: int = Field(32, ge=8)  # PatchGAN width
    ema: float = Field(0.0, ge=0, lt=1)  # 0 = off; e.g. 0.999
    ckpt_every: int = Field(50, ge=1)
    log_every: int = Field(10, ge=1)
    flip: bool = True  # random horizontal flips (same for input and target)
    seed: int = 0


class TrainBaseConfig(TrainConfig):
    """The base generator: architecture + training."""

    ngf: int = Field(32, ge=8)
    heads: int = Field(4, ge=1)
    norm: Literal["instance", "film", "group", "batch", "none"] = "instance"
    skip: bool = False  # stem features added before the head: pixel-level edits (sharpening) become learnable


class FinetuneConfig(TrainConfig):
    """finetune_lora@C: LoRA (peft) on the crucial layers of the frozen base, on a clustered subset."""

    subset: Literal["kmeans", "random", "all"] = "kmeans"  # which training pairs to keep
    subset_fraction: float = Field(0.5, gt=0.0, le=1.0)  # kept share of the concept's training pairs
    subset_features: str = "lpips"  # "lpips" (offline AlexNet features) or a CLIP id/path
    eval_limit: int = Field(0, ge=0)  # held-out pairs scored at the end (0 = all)


class AnalyzeLayersConfig(Section):
    """analyze_layers: which layer groups of the base are worth adapting (scored on calibration concepts)."""

    probe_steps: int = Field(20, ge=1)  # scorer 'probe': LoRA on one group alone for this many steps
    probe_batch: int = Field(4, ge=1)
    probe_rank: int = Field(4, ge=1)
    full_steps: int = Field(40, ge=1)  # scorer 'delta': a short full fine-tune, then |dW|/|W| per layer
    eval_limit: int = Field(32, ge=1)  # held-out pairs per calibration concept for the probe scores
    select_by: Literal["probe", "delta", "mean_rank"] = "probe"
    top_k: int = Field(5, ge=1)  # this many groups become the crucial layers ...
    min_gain: float = 0.0  # ... of those with a probe LPIPS gain above this
    seed: int = 0


class SearchRanksConfig(Section):
    """search_ranks: per-layer LoRA ranks on the crucial layers (greedy, spectrum of the full fine-tune's dW)."""

    ranks: list[int] = Field(default_factory=lambda: [1, 2, 4, 8, 16], min_length=1)  # allowed ranks
    budget: float = Field(0.016, gt=0.0, le=1.0)  # trainable params, as a share of the base generator's
    energy: float = Field(0.9, gt=0.0, le=1.0)  # stop once this share of dW's spectral energy is kept
    alpha_scale: float = Field(1.0, gt=0.0)  # lora_alpha = alpha_scale * rank per layer
    uniform_low: int = Field(1, ge=1)  # comparison rows: uniform ranks ("1x", "4x" in the paper)
    uniform_high: int = Field(4, ge=1)
    compare_steps: int = Field(30, ge=1)  # short fine-tune per comparison row and calibration concept
    compare_batch: int = Field(4, ge=1)
    eval_limit: int = Field(32, ge=1)
    seed: int = 0

    @field_validator("ranks")
    @classmethod
    def _positive_sorted(cls, v: list[int]) -> list[int]:
        if any(r < 1 for r in v):
            raise ValueError("ranks must be positive integers, e.g. [1, 2, 4, 8]")
        return sorted(set(v))


class EvaluateConfig(Section):
    """evaluate@C: held-out quality of the student against the teacher."""

    bootstrap: int = Field(20, ge=1)  # resamples of the held-out set for the spread of every metric
    fid: bool = True  # FID per set (a 2048x2048 matrix square root: ~16 s on 2 CPU cores); false: KID only
    fid_bootstrap: int = Field(5, ge=0)  # of those, how many also give FID (seconds each on a CPU; student only)
    clip_model: str | None = None  # CLIP id/path for the directional CLIP score (none ships offline)
    grid: int = Field(6, ge=1)  # photos in the input | teacher | base | student grid
    seed: int = 0


class ExportOnnxConfig(Section):
    """export_onnx@C: the merged concept model as ONNX (fixed 1x3xSxS and dynamic batch), fp16 and int8."""

    size: int = Field(256, ge=16, le=2048)  # the fixed input side; 256 as in the paper
    opset: int = Field(17, ge=13, le=21)
    parity_tol: float = Field(1e-3, gt=0)  # max |onnxruntime - torch| on held-out photos (fp32)
    parity_images: int = Field(16, ge=1)
    quantize: bool = True  # also write fp16 and int8 (static, calibrated) variants
    calibration_images: int = Field(32, ge=1)
    latency_runs: int = Field(10, ge=1)
    max_tokens: int = Field(32, ge=1)  # text tokens in the base ONNX model (prompts are padded and masked)

    @field_validator("size")
    @classmethod
    def _multiple_of_16(cls, v: int) -> int:
        if v % 16:
            raise ValueError(f"must be a multiple of 16 (the generator downsamples 16x); try {round(v / 16) * 16}")
        return v


class Params(Section):
    """The whole params.yaml."""

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
                if not isinstance(name, str) or not SLUG.match(name):
                    fix = re.sub(r"[^a-z0-9_]+", "_", str(name).lower()).strip("_") or "my_concept"
                    if not fix[0].isalpha():
                        fix = "c_" + fix
                    raise ValueError(
                        f"concept name {name!r} is not a lowercase slug (a-z, 0-9, '_', starting with a letter, "
                        f"at most 40 characters); rename it, e.g. '{fix[:40]}'"
                    )
        return v


# ----------------------------------------------------------------------------- loading


def _loc(loc: tuple[Any, ...]) -> str:
    # pydantic puts the union tag in the location ("teacher.filters.op"); drop it for the user
    keep = [p for i, p in enumerate(loc) if not (i and loc[i - 1] == "teacher" and p in ("filters", "diffusers"))]
    return ".".join(str(p) for p in keep)


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model that owns the field at `loc` (for 'did you mean' hints)."""
    model: Any = Params
    for part in loc[:-1]:
        if model is None:
            return None
        if model is Params and part == "concepts":
            model = "concepts"
            continue
        if model == "concepts":
            model = ConceptConfig
            continue
        if model is ConceptConfig and part == "teacher":
            model = "teacher"
            continue
        if model == "teacher":
            model = {"filters": FiltersTeacher, "diffusers": DiffusersTeacher}.get(str(part))
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
        return f"{path}: {loc}: missing {what}; add it (see the Parameters table in README.md)"
    if kind == "union_tag_invalid":
        tag = got.get("kind") if isinstance(got, dict) else got
        return f"{path}: {loc}: unknown teacher kind {tag!r}; use 'filters' or 'diffusers'"
    if kind == "union_tag_not_found":
        return f"{path}: {loc}: the teacher needs a 'kind' (filters or diffusers)"
    msg = err["msg"].removeprefix("Value error, ")
    shown = f" (got {got!r})" if kind not in ("value_error",) and not isinstance(got, dict) else ""
    return f"{path}: {loc}: {msg}{shown}"


def parse_params(raw: Any, path: str = PARAMS_FILE) -> Params:
    """Validate a parsed YAML document; raise ConfigError with one line per problem."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as e:
        lines = [_one_line(err, path) for err in e.errors()]
        raise ConfigError("\n".join(dict.fromkeys(lines))) from None


def read_params(path: str | Path = PARAMS_FILE) -> Params:
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
def _cached(path: str, resolved: str, mtime_ns: int) -> Params:
    return read_params(path)


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    """params.yaml loaded once per process (re-read only if the file changes)."""
    p = Path(path).resolve()
    if not p.is_file():
        raise ConfigError(f"{path}: not found; run from the project root or pass --params")
    return _cached(str(path), str(p), p.stat().st_mtime_ns)
