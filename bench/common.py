"""What the training benchmarks share: one concept's data, val and test pairs, conditioning and scorers
(`ConceptBench`), and a training curve through the pipeline's own loop (`train_curve`: `fit` with its
untimed evaluation hook), on the device from E2GAN_DEVICE (auto: CUDA when there is one).
"""

from __future__ import annotations

import functools
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.adapt.lora import param_groups, with_loraplus
from pipeline.adapt.subset import choose_subset
from pipeline.config import PipelineConfig, load_params
from pipeline.core.metrics import inception_features, kid_from_features, lpips_distance
from pipeline.data.dataset import EvalPairs, concept_condition, load_concepts, split_pairs
from pipeline.model.checkpoint import load_generator
from pipeline.model.infer import run_generator
from pipeline.model.train import build_models, fit
from pipeline.orchestrate.dvc import stage_paths

RESULTS = Path("bench/results")


def machine() -> str:
    """What a timing was measured on: the CPU model, its cores and torch's threads (timings compare only
    within one machine)."""
    import os

    return f"{cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what platform knows."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def code_version() -> str:
    """The commit a result was made at, with "-dirty" when the code or params differed from it then."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], capture_output=True, text=True, cwd=Path(__file__).parent.parent
        ).stdout.strip()

    dirty = git("status", "--porcelain", "--", "bench", "pipeline", "stages", "params.yaml", ":!bench/results")
    return git("rev-parse", "--short", "HEAD") + ("-dirty" if dirty else "")


@dataclass
class ConceptBench:
    """One concept as the pipeline left it (`make run`): the base, the searched LoRA spec, the training
    pairs, its `val` pairs (where every choice, e.g. a best step, is read) and `test` pairs (what is reported),
    each all of them or at most `eval_limit` spread over all the split's photos, and the prompts' text
    condition."""

    name: str
    params: PipelineConfig
    base: torch.nn.Module
    meta: dict
    spec: dict
    pairs: object  # pipeline.data.dataset.PairData
    val: EvalPairs
    test: EvalPairs
    tokens: torch.Tensor
    mask: torch.Tensor

    base_dir: Path | None = None
    searched: dict | None = None  # search_ranks' greedy allocation (searched.json; the spec itself when absent)
    pairs_dir: Path | None = None

    @classmethod
    def load(
        cls,
        name: str,
        eval_limit: int = 48,
        params: PipelineConfig | None = None,
        root: Path = Path("."),
        test_limit: int | None = None,
    ) -> ConceptBench:
        """A concept of params.yaml as the pipeline left it."""
        paths = stage_paths("finetune_lora", name, root)  # where the pipeline keeps this concept's inputs
        return cls.from_folders(
            name, paths["base"], paths["pairs"], paths["prompts"], paths["ranks"], eval_limit, params, test_limit
        )

    @classmethod
    def from_folders(
        cls,
        name: str,
        base_dir: Path,
        pairs: Path,
        prompts: Path,
        ranks: Path,
        eval_limit: int = 48,
        params: PipelineConfig | None = None,
        test_limit: int | None = None,
    ) -> ConceptBench:
        """Any concept's pairs and prompts folders on a base and an adapter spec; val (and test unless
        `test_limit` is given) limited to `eval_limit` crops spread over all the split's photos."""
        params = params or load_params()
        for need, stage in ((Path(base_dir) / "generator.safetensors", "train_base"), (Path(ranks), "search_ranks")):
            if not need.is_file():
                raise SystemExit(f"{need} is missing: run 'dvc repro {stage}' (or 'make run') first")
        base, meta = load_generator(base_dir)
        concept = load_concepts({name: pairs}, meta["text_encoder"], {name: prompts})[name]
        seed = params.finetune_lora.train.seed
        val = split_pairs(concept.folder, "val", eval_limit, seed)
        test = split_pairs(concept.folder, "test", eval_limit if test_limit is None else test_limit, seed)
        tokens, mask = concept_condition(concept.prompts, meta["text_encoder"])
        spec = json.loads(Path(ranks).read_text())
        greedy = Path(ranks).with_name("searched.json")
        searched = json.loads(greedy.read_text()) if greedy.is_file() else spec
        return cls(
            name,
            params,
            base,
            meta,
            spec,
            concept.pairs,
            val,
            test,
            tokens,
            mask,
            Path(base_dir),
            searched,
            Path(pairs),
        )

    def _split(self, split: str) -> EvalPairs:
        if split not in ("val", "test"):
            raise ValueError(f"split must be 'val' or 'test', got {split!r}")
        return self.val if split == "val" else self.test

    def outputs(self, G, split: str) -> list:
        return run_generator(G, self._split(split).inputs, self.tokens, self.mask)

    def lpips(self, G, split: str) -> float:
        """Mean LPIPS (alex) of G's outputs against the teacher's on `split` (val to choose, test to report)."""
        return float(np.mean(lpips_distance(self.outputs(G, split), self._split(split).teacher)))

    def scores(self, G) -> dict[str, float]:
        """What a training curve records per evaluation: LPIPS on val (to choose the best step) and on test."""
        return {"lpips_val": self.lpips(G, "val"), "lpips_test": self.lpips(G, "test")}

    @functools.cached_property
    def teacher_features(self) -> np.ndarray:
        return inception_features(self.test.teacher)

    @functools.cached_property
    def val_teacher_features(self) -> np.ndarray:
        return inception_features(self.val.teacher)

    def kid(self, G=None, split: str = "test") -> float:
        """KID of G's outputs on `split` (the inputs when G is None) against the teacher's (test: a reported
        figure; val: for choosing)."""
        teacher = self.teacher_features if split == "test" else self.val_teacher_features
        return kid_from_features(
            inception_features(self.outputs(G, split) if G is not None else self._split(split).inputs), teacher
        )

    def lpips_identity(self) -> float:
        """The identity mapping's test LPIPS against the teacher."""
        return float(np.mean(lpips_distance(self.test.inputs, self.test.teacher)))

    def subset(self, strategy: str) -> list[int]:
        """Training-pair indices: every pair ('all') or finetune_lora.subset_fraction of them by `strategy`."""
        if strategy == "all":
            return list(range(len(self.pairs.inputs)))
        f = self.params.finetune_lora
        return choose_subset(self.pairs.inputs, strategy, f.subset_fraction, f.subset_features, f.train.seed)


def warm_discriminator(m, data, cfg, steps: int) -> float:
    """`steps` discriminator-only updates on `data` (the teacher's pairs as real, the starting generator's
    outputs as fake) before the generator's first step: a fine-tune otherwise starts against an untrained
    PatchGAN. Returns the seconds it took (fit does not count them)."""
    import time

    from pipeline.model.train import d_step

    start, was_training = time.perf_counter(), m.G.training
    m.G.eval()
    for step in range(steps):
        x, y, text, mask = data.batch(step, cfg.batch_size, cfg.seed, cfg.flip)
        with torch.no_grad():
            fake = m.G(x, text, mask)
        d_step(m, x, y, fake, cfg)
    m.G.train(was_training)
    return time.perf_counter() - start


def train_curve(
    G,
    data,
    cfg,
    steps: int,
    eval_every: int,
    evaluate,
    loraplus_ratio: float = 1.0,
    d_warmup: int = 0,
    tone_lr: float | None = None,
) -> list[dict]:
    """Train G with the pipeline's `fit` for `steps`, calling `evaluate(model)` (a dict of scores, e.g.
    ConceptBench.scores) every `eval_every` steps through fit's evaluation hook (not timed). With `d_warmup`,
    the discriminator first trains alone for that many steps (`warm_discriminator`, on the CPU; its seconds are
    added to every point's train_seconds); G's output curve, if any, learns at `tone_lr`. Returns
    [{step, train_seconds, **scores}, ...]; G ends on the CPU."""
    cfg = cfg.model_copy(update={"steps": steps, "ckpt_every": steps, "log_every": min(cfg.log_every, steps)})
    curve: list[dict] = []
    models = with_loraplus(build_models(G, cfg, param_groups(G, cfg.lr_g, tone_lr)), cfg, loraplus_ratio)
    warm = warm_discriminator(models, data, cfg, d_warmup) if d_warmup else 0.0

    def hook(model, step: int, seconds: float) -> None:
        curve.append({"step": step, "train_seconds": round(seconds + warm, 2), **evaluate(model)})
        shown = ", ".join(f"{k} {v:.4f}" for k, v in curve[-1].items() if k not in ("step", "train_seconds"))
        print(f"  step {step}: {shown} after {seconds:.0f} s", flush=True)

    with tempfile.TemporaryDirectory(prefix="e2gan-bench-") as work:
        fit(
            models,
            data,
            cfg,
            Path(work),
            desc="bench",
            evaluate=hook,
            eval_every=eval_every,
        )
    return curve
